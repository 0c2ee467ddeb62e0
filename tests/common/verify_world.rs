//! What the verify tests (verify.rs, verify_cli.rs) read and expect of the tiers: Redis and
//! SQL read raw, with the test's own commands and queries rather than the engine's, and
//! `World`, a model of what each id should be after a workload ran through an engine, held
//! against both tiers field by field (`check_tiers`).
//!
//! Declared by a test binary as `#[path = "common/verify_world.rs"] mod verify_world;`, after
//! `#[macro_use] mod common;` (for `on_raw!`).
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redis::AsyncCommands;
use serde_json::Value;
use sync_engine::item::content_hash;
use sync_engine::merkle::leaf;
use sync_engine::{CacheTtl, ContentType, SubmitOptions, SyncEngine, SyncItem};

use crate::common::redis::Redis;
use crate::common::{Backend, Raw};

/// The partition of the library's own writes.
pub const LOCAL: &str = "local";
pub const HOUR_MS: i64 = 3_600_000;

// ---------------------------------------------------------------------------------------------
// Redis, read raw
// ---------------------------------------------------------------------------------------------

/// One item key as Redis holds it, whatever its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// `hash` or `ReJSON-RL`.
    pub shape: String,
    pub payload: Vec<u8>,
    pub hash: String,
    pub state: String,
    /// The `merkle` field: bucket, leaf, partition (only for items mirrored without TTL).
    pub membership: Option<String>,
    /// -1 without TTL.
    pub pttl: i64,
}

/// What these tests read of Redis besides what `Redis` offers every test.
impl Redis {
    /// The ids of every item key under the prefix (meta keys `{prefix}\xff…` left out).
    pub async fn ids(&self) -> BTreeSet<String> {
        let mut raw = self.raw().await;
        let mut ids = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut raw)
                .await
                .unwrap();
            for key in keys {
                let id = key.strip_prefix(self.prefix.as_bytes()).unwrap();
                if id.first() != Some(&0xFF) {
                    ids.insert(String::from_utf8(id.to_vec()).unwrap());
                }
            }
            if next == 0 {
                return ids;
            }
            cursor = next;
        }
    }

    pub async fn cached(&self, id: &str) -> Option<Cached> {
        let mut raw = self.raw().await;
        let key = self.key(id);
        let shape: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        let pttl: i64 = raw.pttl(&key).await.unwrap();
        match shape.as_str() {
            "none" => None,
            "hash" => {
                let mut fields: HashMap<String, Vec<u8>> = raw.hgetall(&key).await.unwrap();
                let mut text = |f: &str| fields.remove(f).map(|v| String::from_utf8(v).unwrap());
                Some(Cached {
                    hash: text("hash").unwrap_or_default(),
                    state: text("state").unwrap_or_default(),
                    membership: text("merkle"),
                    payload: fields.remove("payload").unwrap_or_default(),
                    shape,
                    pttl,
                })
            }
            "ReJSON-RL" => {
                let doc: String = redis::cmd("JSON.GET")
                    .arg(&key)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                let doc: Value = serde_json::from_str(&doc).unwrap();
                let text = |f: &str| doc.get(f).and_then(Value::as_str).map(str::to_string);
                Some(Cached {
                    payload: text("raw").unwrap_or_default().into_bytes(),
                    hash: text("hash").unwrap_or_default(),
                    state: text("state").unwrap_or_default(),
                    membership: text("merkle"),
                    shape,
                    pttl,
                })
            }
            other => panic!("{key} holds a {other}"),
        }
    }

    /// The Merkle mirror of `partition` as stored: bucket -> `count:digest`.
    pub async fn mirror(&self, partition: &str) -> BTreeMap<u8, String> {
        let mut key = self.prefix.as_bytes().to_vec();
        key.extend_from_slice(b"\xffmerkle:");
        key.extend_from_slice(partition.as_bytes());
        let fields: HashMap<String, String> = self.raw().await.hgetall(key).await.unwrap();
        fields
            .into_iter()
            .map(|(bucket, value)| (bucket.parse().unwrap(), value))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// SQL, read raw
// ---------------------------------------------------------------------------------------------

/// `(id, content_hash, source, redis_ttl_ms)` of every row.
pub type LeafRow = (String, String, String, Option<i64>);
/// The same, as the driver returns it (ids and sources are VARBINARY).
type RawLeafRow = (Vec<u8>, String, Vec<u8>, Option<i64>);

pub async fn leaf_rows(raw: &mut Raw) -> Vec<LeafRow> {
    let sql = "SELECT id, content_hash, source, redis_ttl_ms FROM sync_items ORDER BY id";
    let rows: Vec<RawLeafRow> = on_raw!(raw, conn => {
        sqlx::query_as(sql).fetch_all(&mut *conn).await.unwrap()
    });
    rows.into_iter()
        .map(|(id, hash, source, ttl)| {
            let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
            (text(id), hash, text(source), ttl)
        })
        .collect()
}

/// `merkle` field of a mirrored item: 2 hex digits bucket, 64 hex leaf, the partition.
pub fn membership(id: &str, content: &[u8]) -> String {
    let leaf = leaf(id, &content_hash(content));
    format!("{:02x}{}{LOCAL}", leaf[0], hex::encode(leaf))
}

// ---------------------------------------------------------------------------------------------
// What a workload must leave in each tier
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Expected {
    pub content: Vec<u8>,
    pub state: String,
    pub sql: bool,
    pub redis: bool,
    pub ttl: bool,
}

impl Expected {
    /// In SQL and in Redis without TTL: counted in the mirror.
    pub fn mirrored(&self) -> bool {
        self.sql && self.redis && !self.ttl
    }
}

/// The engine, and a model of what each id should be after the ops run through it.
pub struct World<'a> {
    pub engine: &'a SyncEngine,
    pub items: BTreeMap<String, Expected>,
}

pub fn ttl_hour() -> SubmitOptions {
    SubmitOptions {
        redis_ttl: Some(CacheTtl::Hour),
        ..Default::default()
    }
}

pub fn json(id: &str, round: u32) -> Vec<u8> {
    format!(r#"{{"id":"{id}","round":{round},"tags":["a","b"],"nested":{{"x":null}}}}"#)
        .into_bytes()
}

pub fn binary(id: &str, round: u8) -> Vec<u8> {
    let mut bytes = vec![0x00, 0xFF, round, 0xFE, 0x00];
    bytes.extend_from_slice(id.as_bytes());
    bytes
}

impl World<'_> {
    pub async fn put(&mut self, id: &str, content: Vec<u8>, options: SubmitOptions) {
        let existing = self.items.get(id).is_some_and(|e| e.sql);
        assert!(
            options.sql || !existing,
            "the workload never caches over an SQL row ({id})"
        );
        self.engine
            .submit_with(SyncItem::new(id.into(), content.clone()), options.clone())
            .await
            .unwrap();
        self.items.insert(
            id.to_string(),
            Expected {
                content,
                state: options.state.unwrap_or_else(|| "default".into()),
                sql: options.sql,
                redis: options.redis,
                ttl: options.redis_ttl.is_some(),
            },
        );
    }

    pub async fn delete(&mut self, id: &str) {
        self.engine.delete(id).await.unwrap();
        self.items.remove(id);
    }

    pub async fn set_state(&mut self, id: &str, state: &str) {
        let found = self.engine.set_state(id, state).await.unwrap();
        assert_eq!(found, self.items.contains_key(id), "set_state({id})");
        if let Some(e) = self.items.get_mut(id) {
            e.state = state.to_string();
        }
    }

    pub async fn delete_prefix(&mut self, prefix: &str) {
        let want = self.remove_where(|id, _| id.starts_with(prefix));
        let deleted = self.engine.delete_prefix(prefix).await.unwrap();
        assert_eq!(deleted, want, "delete_prefix({prefix})");
    }

    pub async fn delete_by_state(&mut self, state: &str) {
        let want = self.remove_where(|_, e| e.state == state);
        let deleted = self.engine.delete_by_state(state).await.unwrap();
        assert_eq!(deleted, want, "delete_by_state({state})");
    }

    /// Drops the matching ids from the model; returns how many of them SQL held.
    pub fn remove_where(&mut self, doomed: impl Fn(&str, &Expected) -> bool) -> u64 {
        let ids: Vec<String> = self
            .items
            .iter()
            .filter(|(id, e)| doomed(id, e))
            .map(|(id, _)| id.clone())
            .collect();
        let mut in_sql = 0;
        for id in ids {
            in_sql += u64::from(self.items.remove(&id).unwrap().sql);
        }
        in_sql
    }

    pub fn get(&self, id: &str) -> &Expected {
        self.items
            .get(id)
            .unwrap_or_else(|| panic!("{id} not in the model"))
    }

    /// Rows, Redis keys, their contents, routing, TTLs and mirror memberships as the model says.
    pub async fn check_tiers(&self, sql: &Backend, redis: &Redis) {
        let mut raw = sql.raw().await;
        let rows = raw.rows().await;
        let want_rows: BTreeMap<&str, &Expected> = self
            .items
            .iter()
            .filter(|(_, e)| e.sql)
            .map(|(id, e)| (id.as_str(), e))
            .collect();
        let got_ids: Vec<String> = rows
            .iter()
            .map(|r| String::from_utf8(r.id.clone()).unwrap())
            .collect();
        let want_ids: Vec<&str> = want_rows.keys().copied().collect();
        assert_eq!(got_ids, want_ids, "SQL rows");
        for row in &rows {
            let id = std::str::from_utf8(&row.id).unwrap();
            let e = want_rows[id];
            assert_eq!(row.content(), e.content, "SQL content of {id}");
            assert_eq!(row.content_hash, content_hash(&e.content), "{id}");
            assert_eq!(row.state, e.state.as_bytes(), "SQL state of {id}");
        }
        let routes: BTreeMap<String, Option<i64>> = leaf_rows(&mut raw)
            .await
            .into_iter()
            .map(|(id, _, source, ttl)| {
                assert_eq!(source, LOCAL, "{id}");
                (id, ttl)
            })
            .collect();
        for (id, e) in &want_rows {
            let route = match (e.redis, e.ttl) {
                (false, _) => None,
                (true, false) => Some(0),
                (true, true) => Some(HOUR_MS),
            };
            assert_eq!(routes[*id], route, "redis_ttl_ms of {id}");
        }

        let want_keys: BTreeSet<String> = self
            .items
            .iter()
            .filter(|(_, e)| e.redis)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(redis.ids().await, want_keys, "Redis keys");
        for id in &want_keys {
            let e = self.get(id);
            let got = redis.cached(id).await.unwrap();
            let document = redis.stack
                && serde_json::from_slice::<Value>(&e.content).is_ok()
                && SyncItem::new(id.clone(), e.content.clone()).content_type() == ContentType::Json;
            let shape = if document { "ReJSON-RL" } else { "hash" };
            assert_eq!(got.shape, shape, "shape of {id}");
            assert_eq!(got.payload, e.content, "Redis content of {id}");
            assert_eq!(got.hash, content_hash(&e.content), "Redis hash of {id}");
            assert_eq!(got.state, e.state, "Redis state of {id}");
            let want_membership = e.mirrored().then(|| membership(id, &e.content));
            assert_eq!(got.membership, want_membership, "mirror membership of {id}");
            if e.ttl {
                assert!(got.pttl > 0 && got.pttl <= HOUR_MS, "{id}: {}", got.pttl);
            } else {
                assert_eq!(got.pttl, -1, "{id} has no TTL");
            }
        }
    }
}
