//! L2 on Redis. Keys are `{redis_prefix}{id}`; one key holds one item in one of two shapes:
//!
//! - **hash** (always available): fields `payload` (the exact bytes), `hash`, `state`,
//!   `version`, `type` (`json`/`binary`). Binary items are always hashes.
//! - **RedisJSON document** (when the server has the module, for JSON items):
//!   `{"payload": <the JSON>, "raw": "<the exact text>", "hash", "state", "version"}`.
//!   RediSearch can index `$.payload.*`; `raw` is what `get` returns, because RedisJSON
//!   rewrites numbers and whitespace. JSON RedisJSON cannot hold (e.g. `1e400`) stays a hash.
//!
//! **State sets.** `{redis_prefix}\xffstate:{state}` is the set of cached ids in that state.
//! The `0xFF` byte can never occur in a (UTF-8) id, so no item key can collide with a set,
//! whatever the ids look like. Every write goes through `lua/write.lua`, which reads the
//! old state from the key it replaces, so sets and items change together, atomically. When a
//! TTL'd key expires, Redis does not tell us: its id stays in the set until the set is next
//! read through [`RedisTier::state_members`], which drops members whose key is gone.
//!
//! **Writes.** A batch's writes go out as one MULTI/EXEC pipeline after the SQL commit, so a
//! TTL is set atomically with its value. Every write replaces whole items, so it can be sent
//! again: a write that fails on a dead connection (one that died while idle) is sent once
//! more on a fresh one before it counts as failed. Redis must never serve a value older than
//! SQL: the caller records the ids of a failed write as *dirty* here (reads skip Redis for
//! them) and durably in SQL, and `crate::repair` rewrites them from SQL (see there).
//!
//! **Circuit breaker.** Two connection-level failures in a row open it: calls then fail at
//! once (callers fall back to SQL, writers record repairs instead of writing) until a delay
//! has passed — 0.5 s, doubling up to 2 s while Redis stays away. The first call after the
//! delay is the probe: success closes the breaker, failure reopens it. Transitions are logged,
//! and `sync_engine_redis_circuit_open` follows them.
//!
//! **Metrics** (no-ops without a recorder): every MULTI/EXEC pipeline of writes is timed
//! (`sync_engine_redis_pipeline_duration_seconds`), and every failed call is counted by class
//! (`sync_engine_redis_errors_total`: `connection` or `response`) where the breaker hears of
//! it — calls the open breaker turns away never reach Redis and are not counted.
//! Not supported: Redis Cluster (the scripts touch keys they cannot declare up front).
//!
//! **TLS and credentials.** `rediss://` connects over TLS (the system's OpenSSL, through
//! native-tls), verifying the server against [`RedisAccess::ca_file`] or the system's roots,
//! with an optional client certificate. The password comes from the URL or
//! [`RedisAccess::password`] (e.g. a mounted secret), the ACL user from the URL.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};
use tracing::{info, warn};

use crate::item::{ContentType, SyncItem};
use crate::merkle::{self, PartitionDigest};
use crate::search::SearchIndex;

/// One change to apply to Redis.
#[derive(Clone)]
pub(crate) enum CacheWrite<'a> {
    Put {
        item: &'a SyncItem,
        ttl: Option<Duration>,
        /// Counted in the Merkle mirror: a durable item cached without TTL.
        mirrored: bool,
    },
    /// The id must not be in Redis (deleted, or now routed past Redis).
    Remove { id: &'a str },
}

impl CacheWrite<'_> {
    pub(crate) fn id(&self) -> &str {
        match self {
            CacheWrite::Put { item, .. } => item.id(),
            CacheWrite::Remove { id } => id,
        }
    }
}

/// What `verify` learns of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    /// The item's content hash (`None`: not an item, e.g. a stray string key).
    pub hash: Option<String>,
    /// Remaining TTL in ms; negative when the key has none.
    pub pttl: i64,
    /// Its Merkle membership (bucket, leaf, partition) when mirrored.
    pub membership: Option<String>,
}

impl Probe {
    fn decode(value: Value) -> Option<Probe> {
        let text = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        match value {
            Value::Array(parts) if parts.len() == 3 => Some(Probe {
                hash: text(&parts[0]),
                pttl: match parts[1] {
                    Value::Int(n) => n,
                    _ => -1,
                },
                membership: text(&parts[2]),
            }),
            _ => None,
        }
    }

    /// The partition its membership names.
    pub fn partition(&self) -> Option<&str> {
        self.membership.as_deref().and_then(|m| m.get(66..))
    }
}

/// Writes per MULTI/EXEC pipeline; a larger batch takes several round trips.
const WRITES_PER_PIPELINE: usize = 2000;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection-level failures in a row that open the breaker.
const TRIP_AFTER: u32 = 2;
const FIRST_OPEN: Duration = Duration::from_millis(500);
const LONGEST_OPEN: Duration = Duration::from_secs(2);

/// The Redis circuit breaker (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaker {
    Closed {
        failures: u32,
    },
    /// Calls fail at once until `until`; the next failure after it waits `delay` × 2.
    Open {
        until: Instant,
        delay: Duration,
    },
}

impl Breaker {
    fn allows(&self, now: Instant) -> bool {
        match self {
            Breaker::Closed { .. } => true,
            Breaker::Open { until, .. } => now >= *until,
        }
    }

    fn succeeded(&mut self) {
        if let Breaker::Open { .. } = self {
            info!("Redis answers again: circuit closed");
            metrics::gauge!("sync_engine_redis_circuit_open").set(0.0);
        }
        *self = Breaker::Closed { failures: 0 };
    }

    fn failed(&mut self, now: Instant, error: &RedisError) {
        *self = match *self {
            Breaker::Closed { failures } if failures + 1 < TRIP_AFTER => Breaker::Closed {
                failures: failures + 1,
            },
            Breaker::Closed { .. } => {
                warn!(error = %error, open_for = ?FIRST_OPEN,
                    "Redis unreachable: circuit open; reads go to SQL, writes are repaired in Redis once it answers");
                metrics::gauge!("sync_engine_redis_circuit_open").set(1.0);
                Breaker::Open {
                    until: now + FIRST_OPEN,
                    delay: FIRST_OPEN,
                }
            }
            Breaker::Open { delay, .. } => {
                let delay = (delay * 2).min(LONGEST_OPEN);
                tracing::debug!(error = %error, open_for = ?delay, "Redis probe failed: circuit stays open");
                Breaker::Open {
                    until: now + delay,
                    delay,
                }
            }
        };
    }
}

pub struct RedisTier {
    client: redis::Client,
    prefix: String,
    /// Key prefix of the state sets: `{prefix}\xffstate:`.
    sets: Vec<u8>,
    /// Key prefix of the Merkle mirror hashes: `{prefix}\xffmerkle:`.
    mirrors: Vec<u8>,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    breaker: Mutex<Breaker>,
    /// Whether the server has RedisJSON, learnt on the first connection.
    json_module: Mutex<Option<bool>>,
    /// Whether it also has RediSearch (search needs both).
    search_module: Mutex<Option<bool>>,
    /// Ids whose Redis copy may be wrong until `crate::repair` rewrites them: reads skip it.
    dirty: Mutex<HashSet<String>>,
    write_script: redis::Script,
    read_script: redis::Script,
    restate_script: redis::Script,
    members_script: redis::Script,
}

fn unavailable(why: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, why))
}

/// The connection failed (refused, reset, timed out): Redis may be away, not wrong.
pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// How to reach Redis beyond what its URL says.
#[derive(Debug, Clone, Default)]
pub struct RedisAccess {
    /// Overrides the URL's password.
    pub password: Option<String>,
    /// `rediss://`: PEM file of the CA(s) to trust besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `rediss://`: client certificate (PEM), with [`RedisAccess::key_file`].
    pub cert_file: Option<PathBuf>,
    /// `rediss://`: the client certificate's key (PEM, PKCS#8).
    pub key_file: Option<PathBuf>,
}

impl RedisAccess {
    /// A client for `url`; reads the certificate files now, so a missing one is reported at
    /// start, with its path.
    pub fn client(&self, url: &str) -> Result<redis::Client, RedisError> {
        use redis::IntoConnectionInfo;
        let mut info = url.into_connection_info()?;
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        if !tls {
            if self.ca_file.is_some() || self.cert_file.is_some() {
                return Err(RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "redis_ca_file/redis_cert_file need a rediss:// URL",
                )));
            }
            return redis::Client::open(info);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot read a certificate file",
                    format!("{}: {e}", path.display()),
                ))
            })
        };
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "redis_cert_file and redis_key_file go together",
                )))
            }
        };
        let root_cert = self.ca_file.as_ref().map(read).transpose()?;
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
    }
}

/// Whether the server a `rediss://` URL names speaks plain RESP instead of TLS: a TLS
/// handshake with a plaintext Redis does not fail, it times out (Redis waits for the end of
/// an inline command that never comes), which looks like an unreachable server. Asked only
/// after a TLS connection failed, so that the operator gets the real reason.
pub(crate) async fn answers_plaintext(url: &str) -> bool {
    use redis::IntoConnectionInfo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(info) = url.into_connection_info() else {
        return false;
    };
    let redis::ConnectionAddr::TcpTls { host, port, .. } = info.addr() else {
        return false;
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await?;
        // `+PONG`, or `-NOAUTH …`: a RESP reply, in plaintext
        Ok::<bool, std::io::Error>(matches!(answer[0], b'+' | b'-'))
    };
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, probe).await,
        Ok(Ok(true))
    )
}

impl RedisTier {
    /// Does not connect: Redis may be down at start and come up later.
    pub fn new(url: &str, prefix: &str) -> Result<Self, RedisError> {
        Self::with_access(url, prefix, &RedisAccess::default())
    }

    /// [`RedisTier::new`] with a password, a CA or a client certificate from elsewhere.
    pub fn with_access(url: &str, prefix: &str, access: &RedisAccess) -> Result<Self, RedisError> {
        let mut sets = prefix.as_bytes().to_vec();
        sets.extend_from_slice(b"\xffstate:");
        let mut mirrors = prefix.as_bytes().to_vec();
        mirrors.extend_from_slice(b"\xffmerkle:");
        metrics::gauge!("sync_engine_redis_circuit_open").set(0.0);
        Ok(RedisTier {
            client: access.client(url)?,
            prefix: prefix.to_string(),
            sets,
            mirrors,
            connection: tokio::sync::Mutex::new(None),
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            json_module: Mutex::new(None),
            search_module: Mutex::new(None),
            dirty: Mutex::new(HashSet::new()),
            write_script: redis::Script::new(include_str!("lua/write.lua")),
            read_script: redis::Script::new(include_str!("lua/read.lua")),
            restate_script: redis::Script::new(include_str!("lua/restate.lua")),
            members_script: redis::Script::new(include_str!("lua/members.lua")),
        })
    }

    pub fn key(&self, id: &str) -> String {
        format!("{}{}", self.prefix, id)
    }

    /// The key of the set of cached ids in `state`.
    pub fn state_set_key(&self, state: &str) -> Vec<u8> {
        let mut key = self.sets.clone();
        key.extend_from_slice(state.as_bytes());
        key
    }

    /// Whether JSON items are stored as RedisJSON documents (None: not connected yet).
    pub fn uses_redisjson(&self) -> Option<bool> {
        *self.json_module.lock().expect("lock")
    }

    /// Whether the server can run searches (RedisJSON and RediSearch; None: not connected yet).
    pub fn has_redisearch(&self) -> Option<bool> {
        *self.search_module.lock().expect("lock")
    }

    /// Connects now (otherwise the first call does), and learns the server's modules.
    pub async fn connect(&self) -> Result<(), RedisError> {
        self.connection().await.map(|_| ())
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        if !self.available() {
            return Err(unavailable("Redis unreachable (circuit open)"));
        }
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let connected = match self.client.get_connection_manager_with_config(config).await {
            Ok(mut connection) => match has_command(&mut connection, "JSON.SET").await {
                Ok(has_json) => {
                    let has_search = has_json && has_command(&mut connection, "FT.SEARCH").await?;
                    info!(
                        redisjson = has_json,
                        redisearch = has_search,
                        "L2 Redis connected"
                    );
                    *self.json_module.lock().expect("lock") = Some(has_json);
                    *self.search_module.lock().expect("lock") = Some(has_search);
                    *slot = Some(connection.clone());
                    Ok(connection)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.observe(connected)
    }

    /// Whether calls may go to Redis now (the breaker is closed, or open long enough that
    /// the next call is its probe).
    pub(crate) fn available(&self) -> bool {
        self.breaker.lock().expect("lock").allows(Instant::now())
    }

    /// Passes a result through, telling the breaker about it: connection-level failures count
    /// towards opening it, anything Redis answered closes it.
    fn observe<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        let mut breaker = self.breaker.lock().expect("lock");
        match &result {
            Err(e) if is_connection_error(e) => {
                metrics::counter!("sync_engine_redis_errors_total", "class" => "connection")
                    .increment(1);
                breaker.failed(Instant::now(), e);
            }
            Err(_) => {
                metrics::counter!("sync_engine_redis_errors_total", "class" => "response")
                    .increment(1);
                breaker.succeeded();
            }
            Ok(_) => breaker.succeeded(),
        }
        result
    }

    pub(crate) fn is_dirty(&self, id: &str) -> bool {
        self.dirty.lock().expect("lock").contains(id)
    }

    /// Makes reads bypass Redis for `ids` until [`RedisTier::clear_dirty`].
    pub(crate) fn mark_dirty<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        self.dirty
            .lock()
            .expect("lock")
            .extend(ids.into_iter().map(str::to_string));
    }

    pub(crate) fn clear_dirty<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut dirty = self.dirty.lock().expect("lock");
        for id in ids {
            dirty.remove(id);
        }
    }

    /// Applies `writes` (at most one per id) in MULTI/EXEC pipelines, sending them once more
    /// on a fresh connection if the first attempt lost its connection. On failure some
    /// chunks may have been applied and others not: the caller repairs every id.
    pub(crate) async fn write(&self, writes: &[CacheWrite<'_>]) -> Result<(), RedisError> {
        if writes.is_empty() {
            return Ok(());
        }
        match self.write_all(writes).await {
            Err(e) if is_connection_error(&e) && self.available() => {
                tracing::debug!(error = %e, "Redis write lost its connection; sending it again");
                self.write_all(writes).await
            }
            result => result,
        }
    }

    async fn write_all(&self, writes: &[CacheWrite<'_>]) -> Result<(), RedisError> {
        let mut connection = self.connection().await?;
        let use_json = self.uses_redisjson().unwrap_or(false);
        for chunk in writes.chunks(WRITES_PER_PIPELINE) {
            let mut pipe = redis::pipe();
            // inside MULTI, so a Redis that restarted (and forgot scripts) still runs them
            pipe.atomic()
                .cmd("SCRIPT")
                .arg("LOAD")
                .arg(include_str!("lua/write.lua"))
                .ignore();
            let command = pipe
                .cmd("EVALSHA")
                .arg(self.write_script.get_hash())
                .arg(chunk.len());
            for write in chunk {
                command.arg(self.key(write.id()));
            }
            command.arg(&self.sets).arg(&self.mirrors);
            for write in chunk {
                self.add_write(command, write, use_json);
            }
            command.ignore();
            let started = Instant::now();
            self.observe(pipe.query_async::<()>(&mut connection).await)?;
            metrics::histogram!("sync_engine_redis_pipeline_duration_seconds")
                .record(started.elapsed());
        }
        Ok(())
    }

    /// The nine script arguments of one write (see `lua/write.lua`).
    fn add_write(&self, command: &mut redis::Pipeline, write: &CacheWrite<'_>, use_json: bool) {
        command.arg(write.id());
        let (item, ttl, mirrored) = match write {
            CacheWrite::Remove { .. } => {
                command.arg("del").arg("").arg(0).arg("");
                command.arg("").arg("").arg("").arg("");
                return;
            }
            CacheWrite::Put {
                item,
                ttl,
                mirrored,
            } => (item, ttl, *mirrored),
        };
        let ttl_ms = ttl.map_or(0, |t| t.as_millis().max(1) as u64);
        let membership = if mirrored && ttl.is_none() {
            let leaf = merkle::leaf(item.id(), item.content_hash());
            format!("{:02x}{}{}", leaf[0], hex::encode(leaf), item.source())
        } else {
            String::new()
        };
        match item
            .json_text()
            .filter(|text| use_json && redisjson_accepts(text))
        {
            Some(text) => {
                command
                    .arg("json")
                    .arg(&membership)
                    .arg(ttl_ms)
                    .arg(item.state())
                    .arg(json_document(item, text));
                command.arg("").arg("").arg("");
            }
            None => {
                command
                    .arg("hash")
                    .arg(&membership)
                    .arg(ttl_ms)
                    .arg(item.state())
                    .arg(item.content())
                    .arg(item.content_hash())
                    .arg(item.version())
                    .arg(match item.content_type() {
                        ContentType::Json => "json",
                        ContentType::Binary => "binary",
                    });
            }
        }
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

    /// The Redis type of `id`'s key (`none` when there is no key), for `inspect`.
    pub(crate) async fn key_type(&self, id: &str) -> Result<String, RedisError> {
        let mut connection = self.connection().await?;
        self.observe(
            redis::cmd("TYPE")
                .arg(self.key(id))
                .query_async(&mut connection)
                .await,
        )
    }

    /// Deletes every item key under `{prefix}{id_prefix}` (SCAN, so it never blocks Redis),
    /// state sets included.
    pub(crate) async fn remove_prefix(&self, id_prefix: &str) -> Result<(), RedisError> {
        let mut cursor: u64 = 0;
        loop {
            let (next, ids) = self.scan_ids(id_prefix, cursor).await?;
            let writes: Vec<CacheWrite> = ids.iter().map(|id| CacheWrite::Remove { id }).collect();
            self.write(&writes).await?;
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// What Redis holds under each id, for `verify`: one pipeline per call.
    pub(crate) async fn probe(&self, ids: &[&str]) -> Result<Vec<Option<Probe>>, RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection().await?;
        let script = include_str!("lua/probe.lua");
        let sha = redis::Script::new(script).get_hash().to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(script).ignore();
        for id in ids {
            pipe.cmd("EVALSHA").arg(&sha).arg(1).arg(self.key(id));
        }
        let replies: Vec<Value> = self.observe(pipe.query_async(&mut connection).await)?;
        Ok(replies.into_iter().map(Probe::decode).collect())
    }

    /// One SCAN step over the item keys under `{prefix}{id_prefix}` (meta keys
    /// `{prefix}\xff…` left out): the next cursor (0 = done) and the ids found.
    pub(crate) async fn scan_ids(
        &self,
        id_prefix: &str,
        cursor: u64,
    ) -> Result<(u64, Vec<String>), RedisError> {
        let mut connection = self.connection().await?;
        let pattern = format!("{}*", glob_escape(&self.key(id_prefix)));
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
        let ids = keys
            .iter()
            .filter_map(|k| k.strip_prefix(self.prefix.as_bytes()))
            .filter(|id| id.first() != Some(&0xFF))
            .filter_map(|id| std::str::from_utf8(id).ok().map(str::to_string))
            .collect();
        Ok((next, ids))
    }

    fn mirror_key(&self, partition: &str) -> Vec<u8> {
        let mut key = self.mirrors.clone();
        key.extend_from_slice(partition.as_bytes());
        key
    }

    /// The Merkle mirror of `partition`: digests of the items Redis holds without TTL.
    pub(crate) async fn mirror(&self, partition: &str) -> Result<PartitionDigest, RedisError> {
        let mut connection = self.connection().await?;
        let fields: std::collections::HashMap<u8, String> = self.observe(
            redis::cmd("HGETALL")
                .arg(self.mirror_key(partition))
                .query_async(&mut connection)
                .await,
        )?;
        let mut digest = PartitionDigest::default();
        for (bucket, value) in fields {
            let parsed = value.split_once(':').and_then(|(count, hex)| {
                Some(merkle::Bucket {
                    count: count.parse().ok()?,
                    digest: merkle::decode_hash(hex)?,
                })
            });
            let bucket_value = parsed.ok_or_else(|| corrupt(partition, "Merkle mirror field"))?;
            digest.set_bucket(bucket, bucket_value);
        }
        Ok(digest)
    }

    /// Replaces the mirror of `partition` (after a repair made Redis equal SQL).
    pub(crate) async fn set_mirror(
        &self,
        partition: &str,
        digest: &PartitionDigest,
    ) -> Result<(), RedisError> {
        let mut connection = self.connection().await?;
        let key = self.mirror_key(partition);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        for (bucket, b) in digest.non_empty() {
            pipe.cmd("HSET")
                .arg(&key)
                .arg(bucket)
                .arg(format!("{}:{}", b.count, hex::encode(b.digest)))
                .ignore();
        }
        self.observe(pipe.query_async::<()>(&mut connection).await)
    }

    /// Changes the state of a cached item, keeping its TTL; false when Redis lacks it.
    pub(crate) async fn restate(
        &self,
        id: &str,
        state: &str,
        version: u64,
    ) -> Result<bool, RedisError> {
        let mut connection = self.connection().await?;
        let moved: i64 = self.observe(
            self.restate_script
                .key(self.key(id))
                .arg(id)
                .arg(&self.sets)
                .arg(state)
                .arg(version)
                .invoke_async(&mut connection)
                .await,
        )?;
        Ok(moved == 1)
    }

    /// The cached ids in `state` (members whose key expired are dropped from the set).
    pub async fn state_members(&self, state: &str) -> Result<Vec<String>, RedisError> {
        let mut connection = self.connection().await?;
        self.observe(
            self.members_script
                .key(self.state_set_key(state))
                .arg(&self.prefix)
                .invoke_async(&mut connection)
                .await,
        )
    }

    /// Deletes every cached item in `state` (through the write script, so the mirror
    /// follows) and its set; returns their ids.
    pub(crate) async fn remove_state(&self, state: &str) -> Result<Vec<String>, RedisError> {
        let ids = self.state_members(state).await?;
        let writes: Vec<CacheWrite> = ids.iter().map(|id| CacheWrite::Remove { id }).collect();
        self.write(&writes).await?;
        let mut connection = self.connection().await?;
        let _: () = self.observe(
            redis::cmd("DEL")
                .arg(self.state_set_key(state))
                .query_async(&mut connection)
                .await,
        )?;
        Ok(ids)
    }
}

impl RedisTier {
    fn index_name(&self, name: &str) -> String {
        format!("{}idx:{name}", self.prefix)
    }

    /// Creates the RediSearch index over this tier's JSON documents; an existing index of
    /// that name is left as it is.
    pub(crate) async fn create_index(&self, index: &SearchIndex) -> Result<(), RedisError> {
        let mut connection = self.connection().await?;
        let created: Result<(), RedisError> = redis::cmd("FT.CREATE")
            .arg(self.index_name(&index.name))
            .arg("ON")
            .arg("JSON")
            .arg("PREFIX")
            .arg(1)
            .arg(&self.prefix)
            .arg("STOPWORDS")
            .arg(0)
            .arg(index.schema_args())
            .query_async(&mut connection)
            .await;
        match created {
            Err(e) if e.to_string().contains("already exists") => {}
            other => self.observe(other)?,
        }
        // documents already in Redis are indexed in the background: wait for that, so a
        // search right after this call sees them
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info: Vec<Value> = self.observe(
                redis::cmd("FT.INFO")
                    .arg(self.index_name(&index.name))
                    .query_async(&mut connection)
                    .await,
            )?;
            let indexing = info.chunks(2).find_map(|pair| match pair {
                [key, value] if text_of(key).as_deref() == Some("indexing") => {
                    Some(text_of(value).as_deref() != Some("0"))
                }
                _ => None,
            });
            if indexing != Some(true) || Instant::now() > deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn drop_index(&self, name: &str) -> Result<(), RedisError> {
        let mut connection = self.connection().await?;
        let dropped: Result<(), RedisError> = redis::cmd("FT.DROPINDEX")
            .arg(self.index_name(name))
            .query_async(&mut connection)
            .await;
        match dropped {
            // "Unknown Index name" (wording varies between RediSearch versions)
            Err(e) if e.to_string().to_lowercase().contains("unknown") => Ok(()),
            other => self.observe(other),
        }
    }

    /// Every document of `index` matching the RediSearch `query`, read page by page.
    pub(crate) async fn search(
        &self,
        index: &str,
        query: &str,
    ) -> Result<Vec<SyncItem>, RedisError> {
        const PAGE: usize = 1000;
        let mut connection = self.connection().await?;
        let mut found = Vec::new();
        let mut offset = 0;
        loop {
            let reply: Vec<Value> = self.observe(
                redis::cmd("FT.SEARCH")
                    .arg(self.index_name(index))
                    .arg(query)
                    .arg("DIALECT")
                    .arg(2)
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(PAGE)
                    .arg("RETURN")
                    .arg(4)
                    .arg(&["$.raw", "$.hash", "$.state", "$.version"][..])
                    .query_async(&mut connection)
                    .await,
            )?;
            let total = match reply.first() {
                Some(Value::Int(n)) => *n as usize,
                _ => return Err(corrupt(index, "FT.SEARCH reply")),
            };
            for pair in reply[1..].chunks(2) {
                if let [Value::BulkString(key), Value::Array(fields)] = pair {
                    if let Some(item) = self.search_hit(key, fields) {
                        found.push(item);
                    }
                }
            }
            offset += PAGE;
            if offset >= total {
                return Ok(found);
            }
        }
    }

    fn search_hit(&self, key: &[u8], fields: &[Value]) -> Option<SyncItem> {
        let id = std::str::from_utf8(key.strip_prefix(self.prefix.as_bytes())?).ok()?;
        let mut values = std::collections::HashMap::new();
        for pair in fields.chunks(2) {
            if let [Value::BulkString(name), Value::BulkString(value)] = pair {
                values.insert(name.as_slice(), String::from_utf8(value.clone()).ok()?);
            }
        }
        let raw = values.remove(&b"$.raw"[..])?;
        Some(SyncItem::from_stored(
            id.to_string(),
            raw.into_bytes(),
            ContentType::Json,
            values.remove(&b"$.hash"[..])?,
            values.remove(&b"$.state"[..])?,
            values.get(&b"$.version"[..])?.parse().ok()?,
            Some(0),
        ))
    }
}

/// A scalar reply as text (RESP2 and RESP3 spell them differently).
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether the server knows `command` (modules add commands; `COMMAND INFO` answers nil).
async fn has_command(
    connection: &mut ConnectionManager,
    command: &str,
) -> Result<bool, RedisError> {
    let info: Vec<Value> = redis::cmd("COMMAND")
        .arg("INFO")
        .arg(command)
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
    let item = SyncItem::from_stored(
        id.to_string(),
        content,
        content_type,
        hash,
        state,
        version,
        Some(0),
    );
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

    #[test]
    fn state_sets_cannot_collide_with_item_keys() {
        let tier = RedisTier::new("redis://127.0.0.1:1", "p:").unwrap();
        let set = tier.state_set_key("x");
        assert!(
            std::str::from_utf8(&set).is_err(),
            "not a key any UTF-8 id can produce"
        );
        assert!(set.starts_with(b"p:"));
    }
}
