//! The Redis tier (L2): every scenario runs on plain Redis (hash shape) and on Redis Stack
//! (RedisJSON documents), with SQLite as L3.

mod common;

use std::time::{Duration, Instant};

use common::redis::{Redis, PLAIN_ENV, STACK_ENV};
use common::{Backend, XorShift};
use redis::AsyncCommands;
use sync_engine::{CacheTtl, ContentType, SubmitOptions, SyncItem};

/// Polls `check` until it holds or `deadline` passes.
async fn eventually(deadline: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

const JSON_TEXTS: [(&str, &str); 4] = [
    ("j.space", "{ \"b\" :  1 ,\n\t\"a\" : [ 1 , 2 ] }  "),
    ("j.order", r#"{"z":1,"a":2,"m":{"y":null,"b":true}}"#),
    (
        "j.unicode",
        r#"{"name":"Zoë ☃ 𝄞","n":123456789012345678901234567890}"#,
    ),
    ("j.huge", r#"{"out_of_f64_range": 1e400}"#),
];

async fn round_trip_through_redis_alone(redis: Redis) {
    let writer_sql = Backend::sqlite();
    let writer = writer_sql.engine_with(redis.config(&writer_sql)).await;
    for (id, text) in JSON_TEXTS {
        writer
            .submit(SyncItem::new(id.into(), text.as_bytes().to_vec()))
            .await
            .unwrap();
    }
    let binary = b"\x00bin\x00\xff\xfe\x00".to_vec();
    writer
        .submit(SyncItem::new("b.nul".into(), binary.clone()).with_state("blob"))
        .await
        .unwrap();
    writer.shutdown().await;

    // a second engine on the same Redis prefix but an empty SQL database: only Redis can answer
    let reader_sql = Backend::sqlite();
    let reader = reader_sql.engine_with(redis.config(&reader_sql)).await;
    for (id, text) in JSON_TEXTS {
        let got = reader
            .get_verified(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} not in Redis"));
        assert_eq!(got.content(), text.as_bytes(), "{id}");
        assert_eq!(got.content_type(), ContentType::Json);
    }
    let got = reader.get_verified("b.nul").await.unwrap().unwrap();
    assert_eq!(
        (got.content(), got.state(), got.content_type()),
        (&binary[..], "blob", ContentType::Binary)
    );
    assert!(reader.get("absent").await.unwrap().is_none());
    reader.shutdown().await;
}

async fn routing_and_ttl(redis: Redis) {
    let sql = Backend::sqlite();
    let engine = sql.engine_with(redis.config(&sql)).await;
    let mut raw = redis.raw().await;
    let key = |id: &str| format!("{}{id}", redis.prefix);

    engine
        .submit(SyncItem::new("both".into(), b"1".to_vec()))
        .await
        .unwrap();
    engine
        .submit_with(
            SyncItem::new("cache".into(), b"2".to_vec()),
            SubmitOptions::cache(CacheTtl::Hour),
        )
        .await
        .unwrap();
    engine
        .submit_with(
            SyncItem::new("durable".into(), b"3".to_vec()),
            SubmitOptions::durable(),
        )
        .await
        .unwrap();
    engine
        .submit_with(
            SyncItem::new("short".into(), b"4".to_vec()),
            SubmitOptions::cache(CacheTtl::Custom(1)),
        )
        .await
        .unwrap();
    engine.flush().await.unwrap();

    let rows: Vec<Vec<u8>> = sql.raw().await.ids().await;
    assert_eq!(
        rows,
        vec![b"both".to_vec(), b"durable".to_vec()],
        "cache-only items never reach SQL"
    );
    assert!(raw.exists::<_, bool>(key("both")).await.unwrap());
    assert!(
        !raw.exists::<_, bool>(key("durable")).await.unwrap(),
        "durable items never reach Redis"
    );
    let ttl: i64 = raw.pttl(key("cache")).await.unwrap();
    assert!(
        ttl > 3_500_000 && ttl <= 3_600_000,
        "TTL set with the write: {ttl}"
    );
    assert_eq!(
        raw.pttl::<_, i64>(key("both")).await.unwrap(),
        -1,
        "no TTL by default"
    );

    engine.clear_l1();
    assert_eq!(
        engine.get("cache").await.unwrap().unwrap().content(),
        b"2",
        "served by Redis"
    );
    assert!(
        eventually(Duration::from_secs(5), async || engine
            .get("short")
            .await
            .unwrap()
            .is_none())
        .await,
        "a 1 s TTL expires in Redis and in L1"
    );
    assert!(!raw.exists::<_, bool>(key("short")).await.unwrap());

    // re-routing an item to SQL only removes its Redis copy
    engine
        .submit_with(
            SyncItem::new("both".into(), b"5".to_vec()),
            SubmitOptions::durable(),
        )
        .await
        .unwrap();
    engine.delete("cache").await.unwrap();
    engine.flush().await.unwrap();
    assert!(!raw.exists::<_, bool>(key("both")).await.unwrap());
    assert!(!raw.exists::<_, bool>(key("cache")).await.unwrap());
    engine.clear_l1();
    assert_eq!(engine.get("both").await.unwrap().unwrap().content(), b"5");
    engine.shutdown().await;
}

async fn ranges_and_states_reach_redis(redis: Redis) {
    let sql = Backend::sqlite();
    let engine = sql.engine_with(redis.config(&sql)).await;
    let mut raw = redis.raw().await;
    let key = |id: &str| format!("{}{id}", redis.prefix);
    for id in ["p*1", "p*2", "p?3", "q1", "q2"] {
        engine
            .submit(SyncItem::new(id.into(), id.as_bytes().to_vec()).with_state("delta"))
            .await
            .unwrap();
    }
    engine
        .submit_with(
            SyncItem::new("p*cache".into(), b"c".to_vec()),
            SubmitOptions::cache(CacheTtl::Hour),
        )
        .await
        .unwrap();
    engine.flush().await.unwrap();

    assert!(engine.set_state("q1", "merged").await.unwrap());
    engine.clear_l1();
    let reader_sql = Backend::sqlite();
    let reader = reader_sql.engine_with(redis.config(&reader_sql)).await;
    assert_eq!(
        reader.get("q1").await.unwrap().unwrap().state(),
        "merged",
        "Redis copy restated"
    );

    // `*` and `?` in the prefix are literal
    assert_eq!(engine.delete_prefix("p*").await.unwrap(), 2);
    for id in ["p*1", "p*2", "p*cache"] {
        assert!(!raw.exists::<_, bool>(key(id)).await.unwrap(), "{id}");
    }
    assert!(raw.exists::<_, bool>(key("p?3")).await.unwrap());
    assert_eq!(engine.delete_by_state("delta").await.unwrap(), 2);
    assert!(!raw.exists::<_, bool>(key("q2")).await.unwrap());
    assert!(raw.exists::<_, bool>(key("q1")).await.unwrap());
    engine.shutdown().await;
    reader.shutdown().await;
}

async fn prefixes_isolate_engines(redis: Redis) {
    let other = Redis {
        url: redis.url.clone(),
        prefix: format!("{}other:", redis.prefix),
        stack: redis.stack,
    };
    let sql = Backend::sqlite();
    let a = sql.engine_with(redis.config(&sql)).await;
    a.submit_with(
        SyncItem::new("shared-id".into(), b"a".to_vec()),
        SubmitOptions::cache(CacheTtl::Hour),
    )
    .await
    .unwrap();
    a.flush().await.unwrap();
    let sql_b = Backend::sqlite(); // keeps its temporary directory alive
    let b = sql_b.engine_with(other.config(&sql_b)).await;
    assert!(b.get("shared-id").await.unwrap().is_none());
    b.submit_with(
        SyncItem::new("shared-id".into(), b"b".to_vec()),
        SubmitOptions::cache(CacheTtl::Hour),
    )
    .await
    .unwrap();
    b.flush().await.unwrap();
    a.clear_l1();
    assert_eq!(a.get("shared-id").await.unwrap().unwrap().content(), b"a");
    a.shutdown().await;
    b.shutdown().await;
}

async fn sql_hits_are_promoted(redis: Redis) {
    let sql = Backend::sqlite();
    let engine = sql.engine_with(redis.config(&sql)).await;
    let mut raw = redis.raw().await;
    let key = |id: &str| format!("{}{id}", redis.prefix);
    engine
        .submit(SyncItem::new("hot".into(), br#"{"a": 1}"#.to_vec()))
        .await
        .unwrap();
    let ttl = SubmitOptions {
        redis_ttl: Some(CacheTtl::Hour),
        ..Default::default()
    };
    engine
        .submit_with(SyncItem::new("warm".into(), b"w".to_vec()), ttl)
        .await
        .unwrap();
    engine
        .submit_with(
            SyncItem::new("cold".into(), b"c".to_vec()),
            SubmitOptions::durable(),
        )
        .await
        .unwrap();
    engine.flush().await.unwrap();
    // Redis lost its copies (eviction, restart); L1 too
    let _: () = raw.del(&[key("hot"), key("warm")]).await.unwrap();
    engine.clear_l1();
    for id in ["hot", "warm", "cold"] {
        assert!(engine.get(id).await.unwrap().is_some());
    }
    assert!(
        eventually(Duration::from_secs(5), async || {
            raw.exists::<_, bool>(key("hot")).await.unwrap()
                && raw.exists::<_, bool>(key("warm")).await.unwrap()
        })
        .await,
        "an SQL hit re-caches the item in Redis"
    );
    let pttl: i64 = raw.pttl(key("warm")).await.unwrap();
    assert!(pttl > 3_500_000, "with its TTL: {pttl}");
    assert_eq!(raw.pttl::<_, i64>(key("hot")).await.unwrap(), -1);
    engine.flush().await.unwrap();
    assert!(
        !raw.exists::<_, bool>(key("cold")).await.unwrap(),
        "durable items never reach Redis"
    );
    engine.clear_l1();
    let got = engine.get("hot").await.unwrap().unwrap();
    assert_eq!(
        got.content(),
        br#"{"a": 1}"#,
        "served from the promoted copy"
    );
    engine.shutdown().await;
}

async fn state_sets_follow_sql(redis: Redis) {
    let sql = Backend::sqlite();
    let engine = sql.engine_with(redis.config(&sql)).await;
    let states = ["delta", "merged", "odd state:*"];
    for seed in [7_u64, 42, 1234] {
        let mut rng = XorShift(seed);
        let mut log = Vec::new();
        for _ in 0..150 {
            let id = format!("s{seed}:{}", rng.below(12));
            let state = states[rng.below(3) as usize];
            match rng.below(10) {
                0..=4 => {
                    let item = SyncItem::new(id.clone(), id.as_bytes().to_vec()).with_state(state);
                    engine.submit(item).await.unwrap();
                }
                5 | 6 => {
                    engine.set_state(&id, state).await.unwrap();
                }
                7 | 8 => engine.delete(&id).await.unwrap(),
                _ => {
                    engine.delete_by_state(state).await.unwrap();
                }
            }
            log.push((id, state));
        }
        engine.flush().await.unwrap();
        let rows = sql.raw().await.rows().await;
        for state in states {
            let mut in_sql: Vec<String> = rows
                .iter()
                .filter(|r| r.state == state.as_bytes())
                .map(|r| String::from_utf8(r.id.clone()).unwrap())
                .collect();
            let mut in_redis = engine.redis_state_members(state).await.unwrap();
            in_sql.sort();
            in_redis.sort();
            assert_eq!(
                in_redis, in_sql,
                "seed {seed}, state {state:?}, ops {log:?}"
            );
        }
    }
    engine.shutdown().await;
}

async fn expired_keys_leave_their_state_set(redis: Redis) {
    let sql = Backend::sqlite();
    let engine = sql.engine_with(redis.config(&sql)).await;
    let short = SubmitOptions::cache(CacheTtl::Custom(1)).with_state("ephemeral");
    engine
        .submit_with(SyncItem::new("gone".into(), b"x".to_vec()), short)
        .await
        .unwrap();
    let kept = SubmitOptions::cache(CacheTtl::Hour).with_state("ephemeral");
    engine
        .submit_with(SyncItem::new("kept".into(), b"y".to_vec()), kept)
        .await
        .unwrap();
    engine.flush().await.unwrap();
    let mut members = engine.redis_state_members("ephemeral").await.unwrap();
    members.sort();
    assert_eq!(members, ["gone", "kept"]);
    assert!(
        eventually(Duration::from_secs(5), async || {
            engine.redis_state_members("ephemeral").await.unwrap() == ["kept"]
        })
        .await,
        "an expired key leaves the set when the set is read"
    );
    let set_key = {
        let mut k = redis.prefix.as_bytes().to_vec();
        k.extend_from_slice(b"\xffstate:ephemeral");
        k
    };
    let raw: Vec<String> = redis.raw().await.smembers(set_key).await.unwrap();
    assert_eq!(raw, ["kept"], "and is removed from the set itself");
    // delete_by_state reaches cache-only items through the set
    engine.delete_by_state("ephemeral").await.unwrap();
    assert!(engine.get("kept").await.unwrap().is_none());
    assert!(!redis
        .raw()
        .await
        .exists::<_, bool>(format!("{}kept", redis.prefix))
        .await
        .unwrap());
    engine.shutdown().await;
}

/// A crash between the SQL commit and the Redis write leaves Redis without the batch; the
/// replay after the restart is a no-op in SQL but must still reach Redis. A replay of the same
/// version with other content (a broken producer) must not.
async fn replays_rewrite_what_redis_missed(redis: Redis) {
    let sql = Backend::sqlite();
    let engine = sql.engine_with(redis.config(&sql)).await;
    let item = || SyncItem::new("r".into(), br#"{"v":1}"#.to_vec()).with_version(100);
    engine.submit(item()).await.unwrap();
    engine.delete_at("gone", 100).await.unwrap();
    engine.flush().await.unwrap();
    let mut raw = redis.raw().await;
    let key = format!("{}r", redis.prefix);
    // the crash: Redis never got the write
    let _: () = raw.del(&key).await.unwrap();
    let _: () = raw
        .hset(format!("{}gone", redis.prefix), "payload", "stale")
        .await
        .unwrap();

    engine.submit(item()).await.unwrap();
    engine.delete_at("gone", 100).await.unwrap();
    engine.flush().await.unwrap();
    assert!(
        raw.exists::<_, bool>(&key).await.unwrap(),
        "replay rewrote Redis"
    );
    assert!(!raw
        .exists::<_, bool>(format!("{}gone", redis.prefix))
        .await
        .unwrap());
    engine.clear_l1();
    assert_eq!(
        engine.get("r").await.unwrap().unwrap().content(),
        br#"{"v":1}"#
    );

    engine
        .submit(SyncItem::new("r".into(), br#"{"v":2}"#.to_vec()).with_version(100))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    engine.clear_l1();
    assert_eq!(
        engine.get("r").await.unwrap().unwrap().content(),
        br#"{"v":1}"#,
        "same version, other content: Redis keeps SQL's"
    );
    engine.shutdown().await;
}

on_both_redis!(
    round_trip_through_redis_alone,
    routing_and_ttl,
    ranges_and_states_reach_redis,
    prefixes_isolate_engines,
    state_sets_follow_sql,
    expired_keys_leave_their_state_set,
    sql_hits_are_promoted,
    replays_rewrite_what_redis_missed,
);

/// Which shape each server gets: RedisJSON documents only where the module exists.
#[tokio::test]
async fn json_items_are_documents_only_with_the_module() {
    for (env, expected) in [(PLAIN_ENV, "hash"), (STACK_ENV, "ReJSON-RL")] {
        let redis = Redis::from_env(env);
        let sql = Backend::sqlite();
        let engine = sql.engine_with(redis.config(&sql)).await;
        engine
            .submit(SyncItem::new("j".into(), br#"{"name":"Ada"}"#.to_vec()))
            .await
            .unwrap();
        engine
            .submit(SyncItem::new("b".into(), b"\x00\x01".to_vec()))
            .await
            .unwrap();
        engine.flush().await.unwrap();
        let mut raw = redis.raw().await;
        let kind: String = redis::cmd("TYPE")
            .arg(format!("{}j", redis.prefix))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(kind, expected, "{env}");
        let payload: Vec<u8> = raw
            .hget(format!("{}b", redis.prefix), "payload")
            .await
            .unwrap();
        assert_eq!(payload, b"\x00\x01", "binary stays raw bytes");
        engine.shutdown().await;
    }
}
