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
//! SQL: the caller records the ids of a failed write as *dirty* (`crate::repair::Dirty`: reads
//! skip Redis for them) and durably in SQL, and `crate::repair` rewrites them from SQL.
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
//!
//! **Files.** This one holds the tier, its connection and its part of the `Cache` role (the
//! writes and reads the engine's hot path makes); `connect` reaching Redis (TLS, the
//! breaker); `codec` the script arguments and replies; `audit` what `verify` and `inspect`
//! read; `search` RediSearch; `lua/` the scripts.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};
use tracing::info;

use crate::item::SyncItem;
use crate::tier::cache::{Cache, CacheWrite};

mod audit;
mod codec;
mod connect;
mod search;

pub(crate) use audit::Probe;
use codec::decode;
pub use connect::RedisAccess;
pub(crate) use connect::{answers_plaintext, is_connection_error};
use connect::{has_command, unavailable, Breaker, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

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
    write_script: redis::Script,
    read_script: redis::Script,
    restate_script: redis::Script,
    members_script: redis::Script,
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

    async fn write_all(&self, writes: &[CacheWrite<'_>]) -> Result<(), RedisError> {
        let mut connection = self.connection().await?;
        let use_json = self.uses_redisjson().unwrap_or(false);
        for pipe in self.write_pipelines(writes, use_json) {
            let started = Instant::now();
            self.observe(pipe.query_async::<()>(&mut connection).await)?;
            metrics::histogram!("sync_engine_redis_pipeline_duration_seconds")
                .record(started.elapsed());
        }
        Ok(())
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
}

#[async_trait]
impl Cache for RedisTier {
    fn available(&self) -> bool {
        self.breaker.lock().expect("lock").allows(Instant::now())
    }

    /// Applies `writes` (at most one per id) in MULTI/EXEC pipelines, sending them once more
    /// on a fresh connection if the first attempt lost its connection. On failure some
    /// chunks may have been applied and others not: the caller repairs every id.
    async fn write(&self, writes: &[CacheWrite<'_>]) -> Result<(), RedisError> {
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

    async fn get(&self, id: &str) -> Result<Option<(SyncItem, Option<Duration>)>, RedisError> {
        let mut connection = self.connection().await?;
        let reply: Value = self.observe(
            self.read_script
                .key(self.key(id))
                .invoke_async(&mut connection)
                .await,
        )?;
        decode(id, reply)
    }

    /// Changes the state of a cached item, keeping its TTL; false when Redis lacks it.
    async fn restate(&self, id: &str, state: &str, version: u64) -> Result<bool, RedisError> {
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

    /// Deletes every item key under `{prefix}{id_prefix}` (SCAN, so it never blocks Redis),
    /// state sets included.
    async fn remove_prefix(&self, id_prefix: &str) -> Result<(), RedisError> {
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

    /// Deletes every cached item in `state` (through the write script, so the mirror
    /// follows) and its set; returns their ids.
    async fn remove_state(&self, state: &str) -> Result<Vec<String>, RedisError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
