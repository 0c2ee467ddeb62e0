//! `verify`, `repair`, `prove` and `check-proof` against real MariaDB and Redis: every
//! scenario runs on plain Redis (hashes) and on Redis Stack (RedisJSON documents).
//!
//! - A clean history (puts of JSON and binary, re-puts that change content, type and routing,
//!   deletes, `set_state`, `delete_prefix`, `delete_by_state`, TTL'd, SQL-only and cache-only
//!   items) verifies OK: the Redis copies, the Merkle mirror the write script maintains and the
//!   stored digests all agree with the rows, field by field (schemas/MERKLE.md).
//! - Corruption behind the engine's back (a row changed consistently, a payload changed alone,
//!   a Redis key deleted, a stray key, a row deleted) is named id by id with the tier to blame,
//!   and `repair` fixes everything but the payload mismatch, which it leaves to an operator.
//! - Keys under the prefix that SQL lacks: strays whatever their type (hash, string, set,
//!   RedisJSON document) unless they have a TTL; `repair` deletes them and leaves other
//!   prefixes alone.
//! - The CLI: `verify` exits 0 / 2, names the id, `--repair` and `--json`; `prove` and
//!   `check-proof` (file and stdin, tampered proof, another root); and stdout of `verify
//!   --json` and `prove` is the document alone, so it can be piped to a file or a parser.

#[macro_use] // `on_raw!`, for queries `Raw` has no method for
mod common;
#[path = "common/kafka.rs"]
mod kafka;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use redis::AsyncCommands;
use serde_json::Value;
use sync_engine::item::content_hash;
use sync_engine::merkle::{leaf, PartitionDigest, Proof, StateRoot};
use sync_engine::verify::{Divergence, Kind, Tier};
use sync_engine::{CacheTtl, ContentType, SubmitOptions, SyncEngine, SyncItem};

use common::redis::Redis;
use common::{Backend, Raw};

const LOCAL: &str = "local";
const HOUR_MS: i64 = 3_600_000;

// ---------------------------------------------------------------------------------------------
// Redis, read raw
// ---------------------------------------------------------------------------------------------

/// One item key as Redis holds it, whatever its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cached {
    /// `hash` or `ReJSON-RL`.
    shape: String,
    payload: Vec<u8>,
    hash: String,
    state: String,
    /// The `merkle` field: bucket, leaf, partition (only for items mirrored without TTL).
    membership: Option<String>,
    /// -1 without TTL.
    pttl: i64,
}

/// What these tests read of Redis besides what `Redis` offers every test.
impl Redis {
    /// The ids of every item key under the prefix (meta keys `{prefix}\xff…` left out).
    async fn ids(&self) -> BTreeSet<String> {
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

    async fn cached(&self, id: &str) -> Option<Cached> {
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
    async fn mirror(&self, partition: &str) -> BTreeMap<u8, String> {
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
type LeafRow = (String, String, String, Option<i64>);
/// The same, as the driver returns it (ids and sources are VARBINARY).
type RawLeafRow = (Vec<u8>, String, Vec<u8>, Option<i64>);

async fn leaf_rows(raw: &mut Raw) -> Vec<LeafRow> {
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

/// The digests of the rows of `partition` that `keep` selects.
fn digest_of(
    rows: &[LeafRow],
    partition: &str,
    keep: impl Fn(&LeafRow) -> bool,
) -> PartitionDigest {
    let mut digest = PartitionDigest::default();
    for row in rows.iter().filter(|r| r.2 == partition && keep(r)) {
        digest.add(&row.0, &row.1);
    }
    digest
}

/// The mirror MERKLE.md says Redis holds: the rows cached without TTL, `count:digest` per
/// non-empty bucket.
fn expected_mirror(rows: &[LeafRow], partition: &str) -> BTreeMap<u8, String> {
    digest_of(rows, partition, |r| r.3 == Some(0))
        .non_empty()
        .map(|(b, bucket)| {
            (
                b,
                format!("{}:{}", bucket.count, hex::encode(bucket.digest)),
            )
        })
        .collect()
}

/// `merkle` field of a mirrored item: 2 hex digits bucket, 64 hex leaf, the partition.
fn membership(id: &str, content: &[u8]) -> String {
    let leaf = leaf(id, &content_hash(content));
    format!("{:02x}{}{LOCAL}", leaf[0], hex::encode(leaf))
}

fn bucket_of(id: &str, content_hash: &str) -> u8 {
    leaf(id, content_hash)[0]
}

// ---------------------------------------------------------------------------------------------
// A workload and what it must leave in each tier
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Expected {
    content: Vec<u8>,
    state: String,
    sql: bool,
    redis: bool,
    ttl: bool,
}

impl Expected {
    /// In SQL and in Redis without TTL: counted in the mirror.
    fn mirrored(&self) -> bool {
        self.sql && self.redis && !self.ttl
    }
}

/// The engine, and a model of what each id should be after the ops run through it.
struct World<'a> {
    engine: &'a SyncEngine,
    items: BTreeMap<String, Expected>,
}

fn ttl_hour() -> SubmitOptions {
    SubmitOptions {
        redis_ttl: Some(CacheTtl::Hour),
        ..Default::default()
    }
}

fn json(id: &str, round: u32) -> Vec<u8> {
    format!(r#"{{"id":"{id}","round":{round},"tags":["a","b"],"nested":{{"x":null}}}}"#)
        .into_bytes()
}

fn binary(id: &str, round: u8) -> Vec<u8> {
    let mut bytes = vec![0x00, 0xFF, round, 0xFE, 0x00];
    bytes.extend_from_slice(id.as_bytes());
    bytes
}

impl World<'_> {
    async fn put(&mut self, id: &str, content: Vec<u8>, options: SubmitOptions) {
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

    async fn delete(&mut self, id: &str) {
        self.engine.delete(id).await.unwrap();
        self.items.remove(id);
    }

    async fn set_state(&mut self, id: &str, state: &str) {
        let found = self.engine.set_state(id, state).await.unwrap();
        assert_eq!(found, self.items.contains_key(id), "set_state({id})");
        if let Some(e) = self.items.get_mut(id) {
            e.state = state.to_string();
        }
    }

    async fn delete_prefix(&mut self, prefix: &str) {
        let want = self.remove_where(|id, _| id.starts_with(prefix));
        let deleted = self.engine.delete_prefix(prefix).await.unwrap();
        assert_eq!(deleted, want, "delete_prefix({prefix})");
    }

    async fn delete_by_state(&mut self, state: &str) {
        let want = self.remove_where(|_, e| e.state == state);
        let deleted = self.engine.delete_by_state(state).await.unwrap();
        assert_eq!(deleted, want, "delete_by_state({state})");
    }

    /// Drops the matching ids from the model; returns how many of them SQL held.
    fn remove_where(&mut self, doomed: impl Fn(&str, &Expected) -> bool) -> u64 {
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

    fn get(&self, id: &str) -> &Expected {
        self.items
            .get(id)
            .unwrap_or_else(|| panic!("{id} not in the model"))
    }

    /// Rows, Redis keys, their contents, routing, TTLs and mirror memberships as the model says.
    async fn check_tiers(&self, sql: &Backend, redis: &Redis) {
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

/// Every kind of write, range op and routing change, in several batches.
async fn populate(engine: &SyncEngine) -> World<'_> {
    let mut w = World {
        engine,
        items: BTreeMap::new(),
    };
    let default = SubmitOptions::default;
    for n in 0..20 {
        let id = format!("j:{n}");
        w.put(&id, json(&id, 0), default()).await;
    }
    for n in 0..10u8 {
        let id = format!("b:{n}");
        w.put(&id, binary(&id, 0), default()).await;
    }
    // JSON RedisJSON cannot hold (a hash even on Redis Stack), and JSON with odd whitespace
    w.put("j:huge", br#"{"big": 1e400}"#.to_vec(), default())
        .await;
    w.put("j:space", b" { \"a\" :\t[ 1 , 2 ] } ".to_vec(), default())
        .await;
    for n in 0..8u8 {
        let id = format!("t:{n}");
        let content = if n < 6 { json(&id, 0) } else { binary(&id, 0) };
        w.put(&id, content, ttl_hour()).await;
    }
    for n in 0..6u8 {
        let id = format!("d:{n}");
        let content = if n % 2 == 0 {
            json(&id, 0)
        } else {
            binary(&id, 0)
        };
        w.put(&id, content, SubmitOptions::durable()).await;
    }
    for n in 0..6u8 {
        let id = format!("c:{n}");
        let content = if n % 2 == 0 {
            json(&id, 0)
        } else {
            binary(&id, 0)
        };
        w.put(&id, content, SubmitOptions::cache(CacheTtl::Hour))
            .await;
    }
    for n in 0..4 {
        let id = format!("p:{n}");
        w.put(&id, json(&id, 0), default()).await;
    }
    w.put("p:4", binary("p:4", 0), ttl_hour()).await;
    w.put("p:5", json("p:5", 0), SubmitOptions::durable()).await;
    w.put("p:6", json("p:6", 0), SubmitOptions::cache(CacheTtl::Hour))
        .await;
    w.put("p", json("p", 0), default()).await;
    // a re-put in the same batch as the first put
    w.put("j:19", json("j:19", 1), default()).await;
    engine.flush().await.unwrap();

    // re-puts: new content, identical content, another type, another route
    for n in 0..4 {
        let id = format!("j:{n}");
        w.put(&id, json(&id, 1), default()).await;
    }
    w.put("j:4", json("j:4", 0), default()).await;
    w.put("b:0", binary("b:0", 1), default()).await;
    w.put("j:5", binary("j:5", 1), default()).await;
    w.put("b:5", json("b:5", 1), default()).await;
    w.put("j:6", json("j:6", 1), ttl_hour()).await;
    w.put("t:0", json("t:0", 1), default()).await;
    w.put("j:7", json("j:7", 1), SubmitOptions::durable()).await;
    w.put("d:0", json("d:0", 1), default()).await;
    w.put("d:1", binary("d:1", 1), ttl_hour()).await;
    w.put("c:0", json("c:0", 1), default()).await;
    engine.flush().await.unwrap();

    for id in ["j:8", "b:6", "t:1", "d:2", "c:1", "never"] {
        w.delete(id).await;
    }
    for id in ["j:9", "b:7", "t:2", "d:3", "c:2", "never"] {
        w.set_state(id, "archived").await;
    }
    for id in ["j:10", "b:8", "t:3", "d:4", "c:3"] {
        w.set_state(id, "doomed").await;
    }
    w.put("j:11", json("j:11", 1), default().with_state("doomed"))
        .await;
    w.delete_prefix("p:").await;
    w.delete_by_state("doomed").await;
    // after the range ops, a put in a state that was just emptied
    w.put("j:12", json("j:12", 1), default().with_state("doomed"))
        .await;
    w.set_state("j:12", "default").await;
    engine.flush().await.unwrap();
    w
}

/// `verify` finds nothing, and every root, bucket list and the mirror agree with the rows.
async fn assert_clean(engine: &SyncEngine, sql: &Backend, redis: &Redis, world: &World<'_>) {
    world.check_tiers(sql, redis).await;
    let progress = AtomicU64::new(0);
    let report = engine
        .verify(&|rows| progress.store(rows, Ordering::SeqCst))
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:#?}");
    assert_eq!(report.divergences, Vec::<Divergence>::new());
    let sql_rows = world.items.values().filter(|e| e.sql).count() as u64;
    assert_eq!(report.rows, sql_rows);
    assert_eq!(progress.load(Ordering::SeqCst), sql_rows, "progress");
    let names: Vec<&str> = report
        .partitions
        .iter()
        .map(|p| p.partition.as_str())
        .collect();
    assert_eq!(names, [LOCAL]);
    let rows = leaf_rows(&mut sql.raw().await).await;
    for p in &report.partitions {
        assert!(p.is_ok(), "{p:#?}");
        assert_eq!(p.stored, p.computed, "{}", p.partition);
        assert_eq!(p.stored_buckets_diverging, Vec::<u8>::new());
        assert_eq!(p.mirror_buckets_diverging, Some(vec![]));
        let recomputed = StateRoot::of(&p.partition, &digest_of(&rows, &p.partition, |_| true));
        assert_eq!(p.computed, recomputed, "the root of the raw rows");
        assert_eq!(engine.merkle_root(&p.partition).await.unwrap(), p.stored);
        assert_eq!(
            redis.mirror(&p.partition).await,
            expected_mirror(&rows, &p.partition),
            "the Redis mirror, field by field"
        );
    }
    assert_eq!(
        report.partition(LOCAL).unwrap().computed.item_count,
        sql_rows
    );
    let keys = world.items.values().filter(|e| e.redis).count() as u64;
    // SCAN may return a key twice (the server's table can resize under other tests' writes)
    let scanned = report.redis_keys_scanned.expect("Redis was scanned");
    assert!(scanned >= keys, "{scanned} keys scanned, {keys} present");
}

// ---------------------------------------------------------------------------------------------
// 1. A clean history verifies
// ---------------------------------------------------------------------------------------------

async fn clean_history_verifies(redis: Redis) {
    let sql = Backend::mariadb().await;
    let engine = sql.engine_with(redis.config(&sql)).await;
    let world = populate(&engine).await;
    // the workload reaches every route
    let count = |f: fn(&Expected) -> bool| world.items.values().filter(|e| f(e)).count();
    assert!(count(|e| e.mirrored()) > 20);
    assert!(count(|e| e.sql && e.redis && e.ttl) >= 4);
    assert!(count(|e| e.sql && !e.redis) >= 3);
    assert!(count(|e| !e.sql) >= 2);
    assert_clean(&engine, &sql, &redis, &world).await;

    // a restarted engine on the same tiers agrees, and keeps the mirror in step
    engine.shutdown().await;
    let engine = sql.engine_with(redis.config(&sql)).await;
    let mut world = World {
        engine: &engine,
        items: world.items,
    };
    world
        .put("j:0", json("j:0", 2), SubmitOptions::default())
        .await;
    world.delete("j:1").await;
    engine.flush().await.unwrap();
    assert_clean(&engine, &sql, &redis, &world).await;
    engine.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Corruption is named, repaired where Redis is at fault
// ---------------------------------------------------------------------------------------------

/// Row changed consistently (payload and content_hash) behind the engine's back.
const CHANGED: &str = "j:13";
/// Payload changed, content_hash left: the row no longer hashes to its hash.
const PAYLOAD: &str = "b:4";
/// Redis key deleted by hand.
const UNCACHED: &str = "j:14";
/// Redis key SQL never had, without TTL.
const STRAY: &str = "stray";
/// Row deleted by hand.
const ROW_GONE: &str = "j:15";

fn divergence(id: &str, tier: Tier, kind: Kind) -> Divergence {
    Divergence {
        id: id.to_string(),
        partition: (id != STRAY).then(|| LOCAL.to_string()),
        tier,
        kind,
    }
}

async fn corruption_is_named_and_repaired(redis: Redis) {
    let sql = Backend::mariadb().await;
    let engine = sql.engine_with(redis.config(&sql)).await;
    let mut world = populate(&engine).await;
    assert_clean(&engine, &sql, &redis, &world).await;
    let committed_root = engine.merkle_root(LOCAL).await.unwrap();
    for id in [CHANGED, PAYLOAD, UNCACHED, ROW_GONE] {
        assert!(
            world.get(id).mirrored(),
            "{id} is in SQL and in Redis without TTL"
        );
    }
    assert!(!world.items.contains_key(STRAY));
    let original_payload = world.get(PAYLOAD).content.clone();
    let original_uncached = redis.cached(UNCACHED).await.unwrap();
    let old_changed_hash = content_hash(&world.get(CHANGED).content);
    let gone_hash = content_hash(&world.get(ROW_GONE).content);

    let mut raw = sql.raw().await;
    let mut r = redis.raw().await;
    let new_text = r#"{"tampered":true,"by":"hand"}"#;
    let new_hash = content_hash(new_text.as_bytes());
    raw.execute(&format!(
        "UPDATE sync_items SET payload = '{new_text}', content_hash = '{new_hash}' WHERE id = '{CHANGED}'"
    ))
    .await;
    raw.execute(&format!(
        "UPDATE sync_items SET payload_blob = X'{}' WHERE id = '{PAYLOAD}'",
        hex::encode(b"\x00not what was committed")
    ))
    .await;
    let _: () = r.del(redis.key(UNCACHED)).await.unwrap();
    let _: () = r.hset(redis.key(STRAY), "hash", "x").await.unwrap();
    raw.execute(&format!("DELETE FROM sync_items WHERE id = '{ROW_GONE}'"))
        .await;

    let report = engine.verify(&|_| {}).await.unwrap();
    assert!(!report.is_ok());
    let mut want = vec![
        divergence(CHANGED, Tier::Sql, Kind::RowChanged),
        divergence(PAYLOAD, Tier::Sql, Kind::PayloadMismatch),
        divergence(UNCACHED, Tier::Redis, Kind::MissingInRedis),
        divergence(STRAY, Tier::Redis, Kind::Stray),
        divergence(ROW_GONE, Tier::Sql, Kind::RowMissing),
    ];
    want.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(report.divergences, want, "{report:#?}");
    // the buckets that moved: where CHANGED's old and new leaves and ROW_GONE's leaf fall
    let moved: Vec<u8> = BTreeSet::from([
        bucket_of(CHANGED, &old_changed_hash),
        bucket_of(CHANGED, &new_hash),
        bucket_of(ROW_GONE, &gone_hash),
    ])
    .into_iter()
    .collect();
    let rows = leaf_rows(&mut raw).await;
    let local = report.partition(LOCAL).unwrap();
    assert_eq!(
        local.stored, committed_root,
        "the digests committed with the rows"
    );
    assert_eq!(
        local.computed,
        StateRoot::of(LOCAL, &digest_of(&rows, LOCAL, |_| true)),
        "the root of the rows as they are now"
    );
    assert_ne!(local.computed.root, local.stored.root);
    assert_eq!(local.stored_buckets_diverging, moved);
    // the mirror still holds CHANGED's old leaf and ROW_GONE's (a DEL by hand leaves
    // UNCACHED's leaf in it, as SQL expects)
    assert_eq!(local.mirror_buckets_diverging.as_ref(), Some(&moved));
    assert_eq!(
        report.rows,
        world.items.values().filter(|e| e.sql).count() as u64 - 1
    );

    let summary = engine.repair(&report).await.unwrap();
    // the payload mismatch is left for an operator: Redis keeps the committed copy
    assert_eq!(
        redis.cached(PAYLOAD).await.map(|c| (c.payload, c.hash)),
        Some((original_payload.clone(), content_hash(&original_payload))),
        "repair must not copy a row that fails its own hash into Redis ({summary:?})"
    );
    assert_eq!(
        (summary.redis_rewritten, summary.redis_deleted),
        (2, 2),
        "{CHANGED} and {UNCACHED} rewritten, {STRAY} and {ROW_GONE} deleted: {summary:?}"
    );
    assert_eq!(summary.mirrors_reset, 1, "{summary:?}");
    assert_eq!(summary.digests_reanchored, [LOCAL], "{summary:?}");

    // Redis now holds SQL's content of CHANGED (a document again on Redis Stack)
    let changed = redis.cached(CHANGED).await.expect("CHANGED cached");
    assert_eq!(
        (changed.payload.as_slice(), changed.hash.as_str()),
        (new_text.as_bytes(), new_hash.as_str())
    );
    assert_eq!(
        changed.shape,
        if redis.stack { "ReJSON-RL" } else { "hash" }
    );
    assert_eq!(
        changed.membership,
        Some(membership(CHANGED, new_text.as_bytes()))
    );
    assert_eq!(changed.pttl, -1);
    assert_eq!(redis.cached(UNCACHED).await, Some(original_uncached));
    assert_eq!(redis.cached(STRAY).await, None);
    assert_eq!(redis.cached(ROW_GONE).await, None);

    let report = engine.verify(&|_| {}).await.unwrap();
    assert_eq!(
        report.divergences,
        [divergence(PAYLOAD, Tier::Sql, Kind::PayloadMismatch)],
        "{report:#?}"
    );
    let local = report.partition(LOCAL).unwrap();
    assert!(local.is_ok(), "{local:#?}");
    assert_eq!(local.stored, local.computed, "re-anchored to the rows");
    assert_eq!(local.mirror_buckets_diverging, Some(vec![]));
    assert_eq!(engine.merkle_root(LOCAL).await.unwrap(), local.computed);

    // the operator restores the payload: all clear
    raw.execute(&format!(
        "UPDATE sync_items SET payload_blob = X'{}' WHERE id = '{PAYLOAD}'",
        hex::encode(&original_payload)
    ))
    .await;
    world.items.get_mut(CHANGED).unwrap().content = new_text.as_bytes().to_vec();
    world.items.remove(ROW_GONE);
    assert_clean(&engine, &sql, &redis, &world).await;

    // and the engine's own writes keep the repaired mirror in step
    world.delete(UNCACHED).await;
    world
        .put(CHANGED, json(CHANGED, 9), SubmitOptions::default())
        .await;
    world
        .put(ROW_GONE, json(ROW_GONE, 9), SubmitOptions::default())
        .await;
    engine.flush().await.unwrap();
    assert_clean(&engine, &sql, &redis, &world).await;
    engine.shutdown().await;
}

/// Keys SQL has no row for: without TTL they are strays whatever their type; with a TTL they
/// are cache entries; other prefixes are not ours. `repair` deletes the strays.
async fn foreign_keys(redis: Redis) {
    let sql = Backend::mariadb().await;
    let engine = sql.engine_with(redis.config(&sql)).await;
    let mut world = World {
        engine: &engine,
        items: BTreeMap::new(),
    };
    for n in 0..5 {
        let id = format!("k:{n}");
        world.put(&id, json(&id, 0), SubmitOptions::default()).await;
    }
    engine.flush().await.unwrap();
    let mut r = redis.raw().await;
    let _: () = r.set(redis.key("s:string"), "x").await.unwrap();
    let _: () = r.hset(redis.key("s:hash"), "payload", "x").await.unwrap();
    let _: () = r.sadd(redis.key("s:set"), "x").await.unwrap();
    let _: () = r.set_ex(redis.key("s:expiring"), "x", 3600).await.unwrap();
    let other = format!("{}x", redis.prefix.trim_end_matches(':'));
    let _: () = r.set(format!("{other}:elsewhere"), "x").await.unwrap();
    let mut strays = vec!["s:hash", "s:set", "s:string"];
    if redis.stack {
        let _: () = redis::cmd("JSON.SET")
            .arg(redis.key("s:doc"))
            .arg("$")
            .arg(r#"{"hash":"not an item"}"#)
            .query_async(&mut r)
            .await
            .unwrap();
        strays.insert(0, "s:doc");
    }

    let report = engine.verify(&|_| {}).await.unwrap();
    let want: Vec<Divergence> = strays
        .iter()
        .map(|id| Divergence {
            id: id.to_string(),
            partition: None,
            tier: Tier::Redis,
            kind: Kind::Stray,
        })
        .collect();
    assert_eq!(report.divergences, want, "{report:#?}");
    assert!(report.partition(LOCAL).unwrap().is_ok());

    let summary = engine.repair(&report).await.unwrap();
    assert_eq!(summary.redis_deleted, strays.len() as u64, "{summary:?}");
    for id in &strays {
        assert!(!r.exists::<_, bool>(redis.key(id)).await.unwrap(), "{id}");
    }
    assert!(r.exists::<_, bool>(redis.key("s:expiring")).await.unwrap());
    let _: () = r.del(redis.key("s:expiring")).await.unwrap();
    let elsewhere: Option<String> = r.get(format!("{other}:elsewhere")).await.unwrap();
    assert_eq!(
        elsewhere.as_deref(),
        Some("x"),
        "another prefix is left alone"
    );
    let _: () = r.del(format!("{other}:elsewhere")).await.unwrap();
    // later batches reach Redis and stay there (nothing the repair touched is left "dirty")
    world.delete("k:0").await;
    world
        .put("k:5", json("k:5", 0), SubmitOptions::default())
        .await;
    engine.flush().await.unwrap();
    world
        .put("k:6", json("k:6", 0), SubmitOptions::default())
        .await;
    engine.flush().await.unwrap();
    assert_clean(&engine, &sql, &redis, &world).await;
    engine.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. The CLI
// ---------------------------------------------------------------------------------------------

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `sync-engine args…` (with `stdin` piped in when given) at log level `warn`, outside
/// any `SYNC_ENGINE__*` override of the environment.
fn sync_engine(args: &[&str], stdin: Option<&str>) -> Ran {
    sync_engine_logging(args, stdin, Some("warn"))
}

/// Like `sync_engine`, with `RUST_LOG` set to `log` (`None`: unset, the binary's default).
fn sync_engine_logging(args: &[&str], stdin: Option<&str>, log: Option<&str>) -> Ran {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sync-engine"));
    command.args(args);
    match log {
        Some(level) => command.env("RUST_LOG", level),
        None => command.env_remove("RUST_LOG"),
    };
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SYNC_ENGINE__") {
            command.env_remove(name);
        }
    }
    let output = match stdin {
        None => command.stdin(Stdio::null()).output().unwrap(),
        Some(input) => {
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
    };
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn verify_cli(pipeline: &Path, extra: &[&str]) -> Ran {
    let mut args = vec!["verify", "--pipeline", pipeline.to_str().unwrap()];
    args.extend_from_slice(extra);
    sync_engine(&args, None)
}

/// Every JSON document `verify --json` printed (two with `--repair` when it repaired).
/// Log lines are skipped: whether stdout carries nothing but the documents is
/// `cli_stdout_is_only_the_document`'s business, so that this test checks the rest.
fn json_reports(ran: &Ran) -> Vec<Value> {
    serde_json::Deserializer::from_str(&json_lines(&ran.stdout))
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {ran}"))
}

/// The lines of `stdout` that can belong to pretty-printed JSON (not log lines).
fn json_lines(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| l.is_empty() || l.starts_with(['{', '}', ' ']))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A pipeline file on `sql` and `redis` (its Kafka section names topics nobody creates:
/// only partitions `<topic>/<n>` make verify read checkpoints, library writes are `local`).
fn write_pipeline(dir: &Path, sql: &Backend, redis: &Redis) -> std::path::PathBuf {
    let pipeline = dir.join("pipeline.toml");
    let name = redis.prefix.trim_end_matches(':').replace(':', "-");
    std::fs::write(
        &pipeline,
        format!(
            r#"sql_url = "{sql}"
redis_url = "{redis_url}"
redis_prefix = "{prefix}"
[kafka]
brokers = "{brokers}"
group_id = "{name}.group"
input_topic = "{name}.in"
output_topic = "{name}.out"
dlq_topic = "{name}.dlq"
"#,
            sql = sql.url,
            redis_url = redis.url,
            prefix = redis.prefix,
            brokers = kafka::brokers(),
        ),
    )
    .unwrap();
    pipeline
}

/// Items on every route, written and flushed by an engine that is shut down again.
async fn cli_items(sql: &Backend, redis: &Redis) -> BTreeMap<String, Expected> {
    let engine = sql.engine_with(redis.config(sql)).await;
    let mut world = World {
        engine: &engine,
        items: BTreeMap::new(),
    };
    for n in 0..12u8 {
        let id = format!("cli:{n}");
        let content = if n % 3 == 0 {
            binary(&id, n)
        } else {
            json(&id, 0)
        };
        let options = match n % 4 {
            1 => ttl_hour(),
            2 => SubmitOptions::durable(),
            _ => SubmitOptions::default(),
        };
        world.put(&id, content, options).await;
    }
    world
        .put(
            "cli:cache",
            json("cli:cache", 0),
            SubmitOptions::cache(CacheTtl::Hour),
        )
        .await;
    world.delete("cli:4").await;
    engine.flush().await.unwrap();
    let items = world.items;
    engine.shutdown().await;
    items
}

async fn cli(redis: Redis) {
    let sql = Backend::mariadb().await;
    let items = cli_items(&sql, &redis).await;
    let victim = "cli:3";
    assert!(items[victim].mirrored());
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), &sql, &redis);
    let mut r = redis.raw().await;

    // clean: exit 0, one OK line for `local`
    let ran = verify_cli(&pipeline, &[]);
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(
        ran.stdout
            .lines()
            .any(|l| l.starts_with(LOCAL) && l.contains(" OK ")),
        "{ran}"
    );
    assert!(
        ran.stdout.lines().last().unwrap().starts_with("OK:"),
        "{ran}"
    );

    // a Redis key lost: exit 2, the id named with its tier and kind
    let _: () = r.del(redis.key(victim)).await.unwrap();
    let ran = verify_cli(&pipeline, &[]);
    assert_eq!(ran.code, Some(2), "{ran}");
    let line = ran
        .stdout
        .lines()
        .find(|l| l.contains(victim))
        .unwrap_or_else(|| panic!("{victim} named: {ran}"));
    assert!(
        line.contains("redis") && line.contains("missing_in_redis"),
        "{line}"
    );
    assert!(
        ran.stdout.lines().last().unwrap().starts_with("DIVERGENT:"),
        "{ran}"
    );
    assert!(
        !r.exists::<_, bool>(redis.key(victim)).await.unwrap(),
        "verify alone repairs nothing"
    );

    // --repair: names it, repairs, verifies again, exit 0
    let ran = verify_cli(&pipeline, &["--repair"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.contains(victim), "{ran}");
    assert!(ran.stderr.contains("repair:"), "{ran}");
    assert!(
        ran.stdout.lines().last().unwrap().starts_with("OK:"),
        "{ran}"
    );
    let back = redis.cached(victim).await.expect("rewritten from SQL");
    assert_eq!(back.payload, items[victim].content);
    assert_eq!(back.membership, Some(membership(victim, &back.payload)));

    // --json: one document with "ok"
    let ran = verify_cli(&pipeline, &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    let docs = json_reports(&ran);
    assert_eq!(docs.len(), 1, "{ran}");
    assert_eq!(docs[0]["ok"], Value::Bool(true), "{ran}");
    let report = &docs[0]["report"];
    assert_eq!(report["divergences"], serde_json::json!([]), "{ran}");
    let sql_rows = items.values().filter(|e| e.sql).count() as u64;
    assert_eq!(report["rows"].as_u64(), Some(sql_rows), "{ran}");
    let partitions = report["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 1, "{ran}");
    let local: StateRoot = serde_json::from_value(partitions[0]["computed"].clone()).unwrap();
    let stored: StateRoot = serde_json::from_value(partitions[0]["stored"].clone()).unwrap();
    assert_eq!(
        (local.partition.as_str(), local.item_count),
        (LOCAL, sql_rows)
    );
    assert_eq!(stored, local);
    assert_eq!(
        partitions[0]["mirror_buckets_diverging"],
        serde_json::json!([])
    );
    let root = local.root;

    // --json --repair on a stray: the failing report, then the clean one
    let _: () = r.hset(redis.key("cli:stray"), "hash", "x").await.unwrap();
    let ran = verify_cli(&pipeline, &["--json"]);
    assert_eq!(ran.code, Some(2), "{ran}");
    let docs = json_reports(&ran);
    assert_eq!(docs[0]["ok"], Value::Bool(false), "{ran}");
    assert_eq!(
        docs[0]["report"]["divergences"],
        serde_json::json!([{"id": "cli:stray", "partition": null, "tier": "redis", "kind": "stray"}]),
        "{ran}"
    );
    let ran = verify_cli(&pipeline, &["--json", "--repair"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    let docs = json_reports(&ran);
    assert_eq!(docs.len(), 2, "{ran}");
    assert_eq!(
        (&docs[0]["ok"], &docs[1]["ok"]),
        (&Value::Bool(false), &Value::Bool(true)),
        "{ran}"
    );
    assert!(!r.exists::<_, bool>(redis.key("cli:stray")).await.unwrap());

    // prove: a JSON proof that checks, for the root verify computed
    let id = "cli:7";
    let ran = sync_engine(
        &["prove", "--pipeline", pipeline.to_str().unwrap(), id],
        None,
    );
    assert_eq!(ran.code, Some(0), "{ran}");
    let proof_text = json_lines(&ran.stdout);
    let proof: Proof = serde_json::from_str(&proof_text).unwrap_or_else(|e| panic!("{e}: {ran}"));
    assert_eq!(proof.check(), Ok(()));
    assert_eq!(
        (
            proof.id.as_str(),
            proof.partition.as_str(),
            proof.root.as_str()
        ),
        (id, LOCAL, root.as_str())
    );
    assert_eq!(proof.algorithm, "sync-engine-merkle-v1");
    assert_eq!(proof.content_hash, content_hash(&items[id].content));
    assert_eq!(proof.path.len(), 8);
    let ran = sync_engine(
        &[
            "prove",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "cli:absent",
        ],
        None,
    );
    assert_eq!(ran.code, Some(1), "no proof of an absent id: {ran}");

    // check-proof: from a file, from stdin, against its own root: 0
    let file = dir.path().join("proof.json");
    std::fs::write(&file, &proof_text).unwrap();
    let file = file.to_str().unwrap();
    let ran = sync_engine(&["check-proof", file], None);
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.starts_with("OK:"), "{ran}");
    let text = std::fs::read_to_string(file).unwrap();
    let ran = sync_engine(&["check-proof"], Some(&text));
    assert_eq!(ran.code, Some(0), "from stdin: {ran}");
    let ran = sync_engine(&["check-proof", file, "--root", &root], None);
    assert_eq!(ran.code, Some(0), "{ran}");

    // a tampered content_hash: 1
    let mut tampered = proof.clone();
    tampered.content_hash = content_hash(b"something else");
    let tampered_file = dir.path().join("tampered.json");
    std::fs::write(&tampered_file, serde_json::to_string(&tampered).unwrap()).unwrap();
    let ran = sync_engine(&["check-proof", tampered_file.to_str().unwrap()], None);
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(ran.stdout.starts_with("INVALID"), "{ran}");
    let ran = sync_engine(
        &["check-proof"],
        Some(&serde_json::to_string(&tampered).unwrap()),
    );
    assert_eq!(ran.code, Some(1), "from stdin: {ran}");

    // another root (an empty partition's, then this one's after one more write): 1
    let empty = "c3526b2d8416b82ec1efbfaa8577fd962febbeba50d46f6f5f34114088addb83";
    let ran = sync_engine(&["check-proof", file, "--root", empty], None);
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(ran.stdout.starts_with("INVALID"), "{ran}");
    let engine = sql.engine_with(redis.config(&sql)).await;
    engine
        .submit(SyncItem::new("cli:more".into(), b"more".to_vec()))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    let newer = engine.merkle_root(LOCAL).await.unwrap().root;
    engine.shutdown().await;
    assert_ne!(newer, root);
    let ran = sync_engine(&["check-proof", file, "--root", &newer], None);
    assert_eq!(ran.code, Some(1), "a proof of the older state: {ran}");
    let ran = verify_cli(&pipeline, &[]);
    assert_eq!(ran.code, Some(0), "{ran}");
}

/// `verify --json` and `prove` print a document for other programs: stdout holds that
/// document and nothing else at the default log level (main.rs: logs go to stderr), so
/// `prove … > proof.json && check-proof proof.json` works.
async fn cli_stdout_is_only_the_document(redis: Redis) {
    let sql = Backend::mariadb().await;
    let items = cli_items(&sql, &redis).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), &sql, &redis);
    let pipeline = pipeline.to_str().unwrap();

    let ran = sync_engine_logging(&["verify", "--pipeline", pipeline, "--json"], None, None);
    assert_eq!(ran.code, Some(0), "{ran}");
    let doc: Value = serde_json::from_str(&ran.stdout).unwrap_or_else(|e| {
        panic!("stdout of verify --json is not one JSON document ({e}): {ran}")
    });
    assert_eq!(doc["ok"], Value::Bool(true), "{ran}");

    let ran = sync_engine_logging(&["prove", "--pipeline", pipeline, "cli:7"], None, None);
    assert_eq!(ran.code, Some(0), "{ran}");
    let proof: Proof = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("stdout of prove is not one proof ({e}): {ran}"));
    assert_eq!(proof.content_hash, content_hash(&items["cli:7"].content));
    let file = dir.path().join("proof.json");
    std::fs::write(&file, &ran.stdout).unwrap();
    let ran = sync_engine_logging(&["check-proof", file.to_str().unwrap()], None, None);
    assert_eq!(
        ran.code,
        Some(0),
        "prove > proof.json; check-proof proof.json: {ran}"
    );
}

on_both_redis!(
    clean_history_verifies,
    corruption_is_named_and_repaired,
    foreign_keys,
    cli,
    cli_stdout_is_only_the_document,
);
