//! L2 on Redis. Keys are `{redis_prefix}{id}`; one key holds one item in one of two shapes:
//!
//! - **hash** (always available): fields `payload` (the exact bytes), `hash`, `state`,
//!   `version`, `type` (`json`/`binary`). Binary items are always hashes.
//! - **RedisJSON document** (when the server has the module, for JSON items):
//!   `{"payload": <the JSON>, "raw": "<the exact text>", "hash", "state", "version"}`.
//!   RediSearch can index `$.payload.*`; `raw` is what `get` returns, because RedisJSON
//!   rewrites numbers and whitespace. JSON RedisJSON cannot hold (e.g. `1e400`) stays a hash.
//!
//! A batch's writes go out as one MULTI/EXEC pipeline after the SQL commit, so a TTL is set
//! atomically with its value. Redis must never serve a value older than SQL: when a write
//! fails, its ids are remembered as *dirty* — reads skip Redis for them, and the next
//! pipeline deletes them first. While Redis is unreachable, calls fail fast for a second
//! (instead of paying a connect timeout each time) and callers fall back to SQL.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};
use tracing::{info, warn};

use crate::item::{ContentType, SyncItem};

/// One change to apply to Redis.
pub(crate) enum CacheWrite<'a> {
    Put {
        item: &'a SyncItem,
        ttl: Option<Duration>,
    },
    /// The id must not be in Redis (deleted, or now routed past Redis).
    Remove { id: &'a str },
}

/// Commands per MULTI/EXEC pipeline; a larger batch takes several round trips.
const COMMANDS_PER_PIPELINE: usize = 4000;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After a connection failure, calls fail fast for this long.
const COOL_DOWN: Duration = Duration::from_secs(1);

/// Reads one key whatever its shape, with its remaining TTL in ms (-1: none):
/// `{type, payload, hash, state, version, pttl}`, `{'rejson', document, pttl}`, or false.
const READ_SCRIPT: &str = r#"
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'hash' then
  local f = redis.call('HMGET', KEYS[1], 'payload', 'hash', 'state', 'version', 'type')
  return {f[5], f[1], f[2], f[3], f[4], redis.call('PTTL', KEYS[1])}
elseif t == 'ReJSON-RL' then
  local doc = redis.call('JSON.GET', KEYS[1], '$.raw', '$.hash', '$.state', '$.version')
  return {'rejson', doc, redis.call('PTTL', KEYS[1])}
end
return false
"#;

pub struct RedisTier {
    client: redis::Client,
    prefix: String,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    cooling_until: Mutex<Option<Instant>>,
    /// Whether the server has RedisJSON, learnt on the first connection.
    json_module: Mutex<Option<bool>>,
    dirty: Mutex<HashSet<String>>,
    read_script: redis::Script,
}

fn unavailable(why: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, why))
}

impl RedisTier {
    /// Does not connect: Redis may be down at start and come up later.
    pub fn new(url: &str, prefix: &str) -> Result<Self, RedisError> {
        Ok(RedisTier {
            client: redis::Client::open(url)?,
            prefix: prefix.to_string(),
            connection: tokio::sync::Mutex::new(None),
            cooling_until: Mutex::new(None),
            json_module: Mutex::new(None),
            dirty: Mutex::new(HashSet::new()),
            read_script: redis::Script::new(READ_SCRIPT),
        })
    }

    pub fn key(&self, id: &str) -> String {
        format!("{}{}", self.prefix, id)
    }

    /// Whether JSON items are stored as RedisJSON documents (None: not connected yet).
    pub fn uses_redisjson(&self) -> Option<bool> {
        *self.json_module.lock().expect("lock")
    }

    /// Connects now (otherwise the first call does), and learns the server's modules.
    pub async fn connect(&self) -> Result<(), RedisError> {
        self.connection().await.map(|_| ())
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(until) = *self.cooling_until.lock().expect("lock") {
            if Instant::now() < until {
                return Err(unavailable("Redis unreachable (cooling down)"));
            }
        }
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        match self.client.get_connection_manager_with_config(config).await {
            Ok(mut connection) => {
                let has_json = detect_json(&mut connection).await?;
                info!(redisjson = has_json, "L2 Redis connected");
                *self.json_module.lock().expect("lock") = Some(has_json);
                *slot = Some(connection.clone());
                Ok(connection)
            }
            Err(e) => {
                self.cool_down();
                Err(e)
            }
        }
    }

    fn cool_down(&self) {
        *self.cooling_until.lock().expect("lock") = Some(Instant::now() + COOL_DOWN);
    }

    /// Marks the outcome of a call: connection-level failures start a cool-down.
    fn observe<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result {
            if e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
            {
                self.cool_down();
            }
        }
        result
    }

    pub(crate) fn is_dirty(&self, id: &str) -> bool {
        self.dirty.lock().expect("lock").contains(id)
    }

    /// Makes reads bypass Redis for `id` until a pipeline has deleted its key.
    pub(crate) fn mark_dirty(&self, id: &str) {
        self.dirty.lock().expect("lock").insert(id.to_string());
    }

    /// Applies `writes` (at most one per id) in MULTI/EXEC pipelines. On failure every id
    /// of the call becomes dirty, so Redis can only lag (and is then bypassed), never lie.
    pub(crate) async fn write(&self, writes: &[CacheWrite<'_>]) -> Result<(), RedisError> {
        let dirty: Vec<String> = self.dirty.lock().expect("lock").iter().cloned().collect();
        if writes.is_empty() && dirty.is_empty() {
            return Ok(());
        }
        let result = self.write_all(writes, &dirty).await;
        let mut set = self.dirty.lock().expect("lock");
        match &result {
            Ok(()) => {
                for id in &dirty {
                    set.remove(id);
                }
            }
            Err(e) => {
                warn!(error = %e, items = writes.len(), "Redis write failed; those ids bypass Redis until rewritten");
                for w in writes {
                    set.insert(match w {
                        CacheWrite::Put { item, .. } => item.id().to_string(),
                        CacheWrite::Remove { id } => id.to_string(),
                    });
                }
            }
        }
        result
    }

    async fn write_all(
        &self,
        writes: &[CacheWrite<'_>],
        dirty: &[String],
    ) -> Result<(), RedisError> {
        let mut connection = self.connection().await?;
        let use_json = self.uses_redisjson().unwrap_or(false);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut commands = 0;
        for id in dirty {
            pipe.del(self.key(id)).ignore();
            commands += 1;
        }
        for write in writes {
            if commands >= COMMANDS_PER_PIPELINE {
                self.observe(pipe.query_async::<()>(&mut connection).await)?;
                pipe = redis::pipe();
                pipe.atomic();
                commands = 0;
            }
            commands += self.add_write(&mut pipe, write, use_json);
        }
        if commands > 0 {
            self.observe(pipe.query_async::<()>(&mut connection).await)?;
        }
        Ok(())
    }

    /// Adds one write's commands to `pipe`; returns how many.
    fn add_write(
        &self,
        pipe: &mut redis::Pipeline,
        write: &CacheWrite<'_>,
        use_json: bool,
    ) -> usize {
        let (item, ttl) = match write {
            CacheWrite::Remove { id } => {
                pipe.del(self.key(id)).ignore();
                return 1;
            }
            CacheWrite::Put { item, ttl } => (item, ttl),
        };
        let key = self.key(item.id());
        // the previous value may have the other shape
        pipe.del(&key).ignore();
        match item
            .json_text()
            .filter(|text| use_json && redisjson_accepts(text))
        {
            Some(text) => {
                pipe.cmd("JSON.SET")
                    .arg(&key)
                    .arg("$")
                    .arg(json_document(item, text))
                    .ignore();
            }
            None => {
                let kind = match item.content_type() {
                    ContentType::Json => "json",
                    ContentType::Binary => "binary",
                };
                pipe.hset_multiple(
                    &key,
                    &[
                        ("payload", item.content()),
                        ("hash", item.content_hash().as_bytes()),
                        ("state", item.state().as_bytes()),
                        ("version", item.version().to_string().as_bytes()),
                        ("type", kind.as_bytes()),
                    ],
                )
                .ignore();
            }
        }
        if let Some(ttl) = ttl {
            pipe.pexpire(&key, ttl.as_millis().max(1) as i64).ignore();
            return 3;
        }
        2
    }

    /// The item under `id` with its remaining TTL, or `None`; errors mean "ask the next tier".
    pub(crate) async fn get(
        &self,
        id: &str,
    ) -> Result<Option<(SyncItem, Option<Duration>)>, RedisError> {
        if self.is_dirty(id) {
            return Err(unavailable("id is dirty in Redis"));
        }
        let mut connection = self.connection().await?;
        let reply: Value = self.observe(
            self.read_script
                .key(self.key(id))
                .invoke_async(&mut connection)
                .await,
        )?;
        decode(id, reply)
    }

    /// Deletes every key under `{prefix}{id_prefix}` (SCAN, so it never blocks Redis).
    pub(crate) async fn remove_prefix(&self, id_prefix: &str) -> Result<u64, RedisError> {
        let mut connection = self.connection().await?;
        let pattern = format!("{}*", glob_escape(&self.key(id_prefix)));
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self.observe(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut connection)
                    .await,
            )?;
            if !keys.is_empty() {
                removed += self.observe(
                    redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async::<u64>(&mut connection)
                        .await,
                )?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Changes the state of a cached item, keeping its TTL; false when Redis lacks it.
    pub(crate) async fn restate(
        &self,
        id: &str,
        state: &str,
        version: u64,
    ) -> Result<bool, RedisError> {
        let mut connection = self.connection().await?;
        let key = self.key(id);
        let kind: String = self.observe(
            redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut connection)
                .await,
        )?;
        let mut pipe = redis::pipe();
        match kind.as_str() {
            "hash" => {
                pipe.hset_multiple(&key, &[("state", state), ("version", &version.to_string())])
                    .ignore();
            }
            "ReJSON-RL" => {
                pipe.cmd("JSON.SET")
                    .arg(&key)
                    .arg("$.state")
                    .arg(serde_json::to_string(state).expect("string"))
                    .ignore();
                pipe.cmd("JSON.SET")
                    .arg(&key)
                    .arg("$.version")
                    .arg(version)
                    .ignore();
            }
            _ => return Ok(false),
        }
        self.observe(pipe.atomic().query_async::<()>(&mut connection).await)?;
        Ok(true)
    }
}

async fn detect_json(connection: &mut ConnectionManager) -> Result<bool, RedisError> {
    let info: Vec<Value> = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("JSON.SET")
        .query_async(connection)
        .await?;
    Ok(info.first().is_some_and(|v| !matches!(v, Value::Nil)))
}

/// RedisJSON parses numbers as i64/f64 and rejects what does not fit (e.g. `1e400`).
fn redisjson_accepts(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok()
}

fn json_document(item: &SyncItem, text: &str) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    format!(
        r#"{{"hash":{},"state":{},"version":{},"raw":{},"payload":{}}}"#,
        quote(item.content_hash()),
        quote(item.state()),
        item.version(),
        quote(text),
        text
    )
}

/// Escapes Redis glob metacharacters so an id prefix matches literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn corrupt(id: &str, what: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Parse,
        "unreadable Redis entry",
        format!("{id}: {what}"),
    ))
}

fn decode(id: &str, reply: Value) -> Result<Option<(SyncItem, Option<Duration>)>, RedisError> {
    let fields = match reply {
        Value::Nil | Value::Boolean(false) => return Ok(None),
        Value::Array(fields) => fields,
        _ => return Err(corrupt(id, "unexpected reply")),
    };
    let bytes = |v: &Value| match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    };
    let shape = fields
        .first()
        .and_then(bytes)
        .ok_or_else(|| corrupt(id, "no shape"))?;
    let ttl = match fields.last() {
        Some(Value::Int(ms)) if *ms > 0 => Some(Duration::from_millis(*ms as u64)),
        _ => None,
    };
    let (content, content_type, hash, state, version) = if shape == b"rejson" {
        let text = fields
            .get(1)
            .and_then(bytes)
            .ok_or_else(|| corrupt(id, "no document"))?;
        let doc: serde_json::Value =
            serde_json::from_slice(&text).map_err(|_| corrupt(id, "bad document"))?;
        let field = |path: &str| doc.get(path).and_then(|v| v.get(0)).cloned();
        let text_of = |path: &str| field(path).and_then(|v| v.as_str().map(str::to_string));
        (
            text_of("$.raw")
                .ok_or_else(|| corrupt(id, "no raw"))?
                .into_bytes(),
            ContentType::Json,
            text_of("$.hash").ok_or_else(|| corrupt(id, "no hash"))?,
            text_of("$.state").ok_or_else(|| corrupt(id, "no state"))?,
            field("$.version")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| corrupt(id, "no version"))?,
        )
    } else {
        let get = |i: usize| {
            fields
                .get(i)
                .and_then(bytes)
                .ok_or_else(|| corrupt(id, "missing field"))
        };
        let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| corrupt(id, "field not UTF-8"));
        let content_type = if shape == b"json" {
            ContentType::Json
        } else {
            ContentType::Binary
        };
        (
            get(1)?,
            content_type,
            text(get(2)?)?,
            text(get(3)?)?,
            text(get(4)?)?
                .parse()
                .map_err(|_| corrupt(id, "bad version"))?,
        )
    };
    let item = SyncItem::from_stored(id.to_string(), content, content_type, hash, state, version);
    Ok(Some((item, ttl)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn documents_embed_the_exact_text() {
        let text = r#"{ "n" : 1.0 }"#;
        let item = SyncItem::new("x".into(), text.as_bytes().to_vec()).with_version(7);
        let doc: serde_json::Value = serde_json::from_str(&json_document(&item, text)).unwrap();
        assert_eq!(doc["raw"], text);
        assert_eq!(doc["payload"]["n"], 1.0);
        assert_eq!(doc["version"], 7);
        assert!(!redisjson_accepts("{\"n\": 1e400}"));
    }
}
