//! The library's `verify` and `repair` against real MariaDB and Redis: every scenario runs on
//! plain Redis (hashes) and on Redis Stack (RedisJSON documents).
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
//!
//! The `sync-engine verify`, `prove` and `check-proof` commands, run as a process, are tested in
//! verify_cli.rs; the raw reads of the tiers and the `World` model both files use are in
//! common/verify_world.rs.

#[macro_use] // `on_raw!`, for queries `Raw` has no method for
mod common;
#[path = "common/verify_world.rs"]
mod verify_world;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use redis::AsyncCommands;
use sync_engine::item::content_hash;
use sync_engine::merkle::{leaf, PartitionDigest, StateRoot};
use sync_engine::verify::{Divergence, Kind, Tier};
use sync_engine::{CacheTtl, SubmitOptions, SyncEngine};

use common::redis::Redis;
use common::Backend;
use verify_world::{
    binary, json, leaf_rows, membership, ttl_hour, Expected, LeafRow, World, LOCAL,
};

// ---------------------------------------------------------------------------------------------
// The Merkle digests the rows must have
// ---------------------------------------------------------------------------------------------

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

fn bucket_of(id: &str, content_hash: &str) -> u8 {
    leaf(id, content_hash)[0]
}

// ---------------------------------------------------------------------------------------------
// A workload
// ---------------------------------------------------------------------------------------------

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

on_both_redis!(
    clean_history_verifies,
    corruption_is_named_and_repaired,
    foreign_keys,
);
