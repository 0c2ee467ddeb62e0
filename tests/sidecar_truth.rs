//! The sidecar never says what is not true, on a real broker (tansu), MariaDB/SQLite and Redis:
//! - an id whose records move to another partition is written, the confirmation says
//!   `applied`, and replays of either partition change nothing and say `unchanged`;
//! - a record whose DLQ delivery fails is never confirmed or committed (a DLQ topic the broker
//!   rejects stops the sidecar; one it cannot reach holds the commit until it can);
//! - confirmations always fit the producer's message limit, however large the batch;
//! - writes routed to Redis only are confirmed once Redis has them, never before.

mod common;
#[path = "common/fault.rs"]
mod fault;
#[path = "common/kafka.rs"]
mod kafka;
#[path = "common/merkle_ref.rs"]
mod merkle_ref;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::Backend;
use kafka::{confirmations, confirmed, events, log_ends, put, Pipeline, Rec};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use redis::AsyncCommands;
use serde_json::Value;

/// Produces `(key, value)` records to one partition of the input topic, in order; returns
/// their offsets.
async fn produce_to(p: &Pipeline, partition: i32, records: &[(String, Vec<u8>)]) -> Vec<i64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &p.brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let topic = p.topic("in");
    let mut offsets = Vec::new();
    for (key, value) in records {
        let record = FutureRecord::to(&topic)
            .partition(partition)
            .key(key.as_bytes())
            .payload(value.as_slice());
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        offsets.push(delivery.offset);
    }
    offsets
}

/// The confirmed items of `partition` among `outs`, by offset (the last one seen wins).
fn items_of(outs: &[kafka::Out], partition: i32) -> BTreeMap<i64, Value> {
    let mut items = BTreeMap::new();
    for c in confirmations(outs) {
        if c["partition"] == partition {
            for item in c["items"].as_array().unwrap() {
                items.insert(item["offset"].as_i64().unwrap(), item.clone());
            }
        }
    }
    items
}

fn source(p: &Pipeline, partition: i32) -> String {
    format!("{}/{partition}", p.topic("in"))
}

/// Waits until `done` holds for the sidecar's log, or panics with it.
fn wait_for_log(p: &Pipeline, deadline: Duration, done: impl Fn(&str) -> bool) {
    let end = Instant::now() + deadline;
    while !done(&p.log()) {
        assert!(Instant::now() < end, "log:\n{}", p.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_moving_to_another_partition_is_written_and_replays_change_nothing() {
    let p = Pipeline::on("moving", 2, Backend::mariadb().await).await;
    p.create_topics(&["out2"]).await;
    let value = |partition: i32, n: usize| format!("{{\"p\":{partition},\"n\":{n}}}").into_bytes();
    // partition 0 writes the id 40 times, at offsets far above what partition 1 will use
    let first: Vec<(String, Vec<u8>)> =
        (0..40).map(|n| ("mv:1".to_string(), value(0, n))).collect();
    let first = produce_to(&p, 0, &first).await;
    let mut sidecar = p.start("batch_flush_count = 10");
    let mut out = p.reader("out");
    out.until(Duration::from_secs(90), |o| {
        items_of(o, 0).len() == first.len()
    });

    // then the id's records arrive on partition 1 (the partition count grew, or the
    // producer's partitioner changed): offsets 0..3, far below partition 0's
    let moved: Vec<(String, Vec<u8>)> = (0..3).map(|n| ("mv:1".to_string(), value(1, n))).collect();
    let moved = produce_to(&p, 1, &moved).await;
    assert!(moved.iter().all(|o| *o < first[0] + 40));
    out.until(Duration::from_secs(90), |o| {
        items_of(o, 1).len() == moved.len()
    });
    sidecar.stop();

    let items = items_of(&out.outs, 1);
    for offset in &moved {
        assert_eq!(items[offset]["outcome"], "applied", "{}", items[offset]);
    }
    let mut raw = p.sql.raw().await;
    let row = raw.row("mv:1").await.expect("the id is stored");
    assert_eq!(
        row.content(),
        value(1, 2),
        "the newest record processed wins"
    );
    let in_p0 = raw.leaves(&source(&p, 0)).await;
    let in_p1 = raw.leaves(&source(&p, 1)).await;
    assert!(in_p0.is_empty(), "the leaf moved out of partition 0's set");
    assert_eq!(in_p1.len(), 1, "and into partition 1's");

    // a new group replays both partitions from the start: every record was already
    // committed by its own partition, so nothing changes and every confirmation says so
    let group = format!("{}.replay", p.group());
    let replay_out = p.topic("out2");
    let mut replayer = p.start_with(
        "",
        &[
            ("SYNC_ENGINE__KAFKA__GROUP_ID", group.as_str()),
            ("SYNC_ENGINE__KAFKA__OUTPUT_TOPIC", replay_out.as_str()),
        ],
    );
    p.read_until("out2", Duration::from_secs(90), |o| {
        items_of(o, 0).len() == first.len() && items_of(o, 1).len() == moved.len()
    });
    replayer.stop();
    let outs = p.read_all("out2", Duration::from_secs(30)).await;
    for partition in [0, 1] {
        for (offset, item) in items_of(&outs, partition) {
            assert_eq!(item["outcome"], "unchanged", "{partition}@{offset}: {item}");
        }
    }
    let row = p.sql.raw().await.row("mv:1").await.unwrap();
    assert_eq!(
        row.content(),
        value(1, 2),
        "a replay never moves state back"
    );

    // the roots, recomputed independently, are what the checkpoints of both runs say
    let checkpoints = events(&outs, "checkpoint");
    for partition in [0, 1] {
        let leaves = p.sql.raw().await.leaves(&source(&p, partition)).await;
        let last = checkpoints
            .iter()
            .rev()
            .find(|c| c["partition"] == partition)
            .expect("a checkpoint per partition at shutdown");
        assert_eq!(last["state_root"], merkle_ref::root(&leaves), "{last}");
    }
}

/// Records good, bad (an empty key), good on one partition.
fn good_bad_good(tag: &str) -> Vec<Rec> {
    vec![
        put(&format!("{tag}:a"), b"{\"a\":1}", &[]),
        put("", b"{\"bad\":true}", &[]),
        put(&format!("{tag}:b"), b"{\"b\":2}", &[]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_topic_the_broker_rejects_stops_the_sidecar_before_the_commit() {
    let p = Pipeline::new("dlqbad", 1).await;
    let positions = p.produce(&good_bad_good("dq")).await;
    let bad = positions[1];
    let mut broken = p.start_with("", &[("SYNC_ENGINE__KAFKA__DLQ_TOPIC", "no such topic!")]);
    let status = broken.wait_exit(Duration::from_secs(120));
    assert!(
        !status.success(),
        "a DLQ that can never be written is fatal:\n{}",
        p.log()
    );
    let committed = p.committed();
    assert!(
        committed.get(&bad.0).is_none_or(|c| *c <= bad.1),
        "nothing committed past the bad record: {committed:?}\n{}",
        p.log()
    );
    let outs = p.read_all("out", Duration::from_secs(30)).await;
    assert!(
        !confirmed(&outs).contains_key(&bad),
        "the bad record is not confirmed"
    );

    // the DLQ fixed (the pipeline's own topic), a restart delivers it and goes on
    let mut fixed = p.start("");
    p.wait_committed(&log_ends(positions.clone()), Duration::from_secs(90));
    fixed.stop();
    let dlq = p.read_all("dlq", Duration::from_secs(30)).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].headers["sync-error-code"], "empty_key");
    assert_eq!(dlq[0].headers["sync-source-offset"], bad.1.to_string());
    let outs = p.read_all("out", Duration::from_secs(30)).await;
    let seen = confirmed(&outs);
    assert!(positions.iter().all(|p| seen.contains_key(p)));
    assert_eq!(p.sql.raw().await.rows().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_the_sidecar_cannot_reach_holds_the_commit_until_it_can() {
    let broker = fault::Broker::start();
    let p = Pipeline::on_brokers("dlqcut", 1, Backend::sqlite(), broker.brokers()).await;
    // the producer holds records 5 s before sending: the DLQ record is still unsent when
    // the path to the broker is cut right after the sidecar took the bad record
    let extra = "[kafka.producer]\n\"linger.ms\" = \"5000\"";
    let mut sidecar = p.start_with(extra, &[("RUST_LOG", "info,sync_engine::sidecar=debug")]);
    let positions = p.produce(&good_bad_good("dc")).await;
    wait_for_log(&p, Duration::from_secs(90), |log| {
        log.contains("record sent to the DLQ")
    });
    broker
        .proxy
        .cut_for(fault::Mode::Reset, Duration::from_secs(15));
    assert!(
        sidecar.try_status().is_none(),
        "the sidecar survives an unreachable DLQ:\n{}",
        p.log()
    );
    p.wait_committed(&log_ends(positions.clone()), Duration::from_secs(120));
    sidecar.stop();
    let dlq = p.read_all("dlq", Duration::from_secs(30)).await;
    assert!(
        !dlq.is_empty(),
        "the DLQ record arrived once the broker was back"
    );
    assert!(dlq
        .iter()
        .all(|r| r.headers["sync-error-code"] == "empty_key"));
    let outs = p.read_all("out", Duration::from_secs(30)).await;
    let seen = confirmed(&outs);
    assert!(positions.iter().all(|p| seen.contains_key(p)), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmations_fit_the_message_limit_however_large_the_batch() {
    let p = Pipeline::new("split", 2).await;
    let records: Vec<Rec> = (0..3000)
        .map(|i| {
            put(
                &format!("split:{i:05}"),
                format!("{{\"i\":{i}}}").as_bytes(),
                &[],
            )
        })
        .collect();
    let positions = p.produce(&records).await;
    // batches of up to 3000 records (one flush when the sidecar starts behind) and a 4000-byte
    // limit: one confirmation of a batch is ~600 KB, far over it
    let limit = 4000;
    let extra =
        format!("batch_flush_count = 3000\n[kafka.producer]\n\"message.max.bytes\" = \"{limit}\"");
    let mut sidecar = p.start_with(&extra, &[("SYNC_ENGINE__BATCH_FLUSH_MS", "1000")]);
    p.wait_committed(&log_ends(positions.clone()), Duration::from_secs(120));
    sidecar.stop();
    let outs = p.read_all("out", Duration::from_secs(30)).await;
    assert!(outs
        .iter()
        .all(|o| o.value.as_ref().unwrap().len() <= limit));
    let seen = confirmed(&outs);
    assert_eq!(
        seen.keys().copied().collect::<BTreeSet<_>>(),
        positions.iter().copied().collect::<BTreeSet<_>>()
    );
    assert!(seen.values().all(|n| *n == 1), "no fault, no repeat");
    // per partition, consecutive events cover consecutive, non-overlapping offset ranges
    for partition in 0..2 {
        let mut ranges: Vec<(i64, i64)> = confirmations(&outs)
            .iter()
            .filter(|c| c["partition"] == partition)
            .map(|c| {
                (
                    c["first_offset"].as_i64().unwrap(),
                    c["last_offset"].as_i64().unwrap(),
                )
            })
            .collect();
        assert!(
            ranges.len() > 10,
            "split into many events: {}",
            ranges.len()
        );
        ranges.sort();
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].1 + 1, pair[1].0, "{pair:?}");
        }
    }
    assert_eq!(p.sql.raw().await.rows().await.len(), records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_routed_to_redis_only_are_confirmed_once_redis_has_them() {
    let proxy = fault::Proxy::start("127.0.0.1:6379");
    proxy.set(fault::Mode::Refuse);
    let p = Pipeline::new("cacheonly", 2).await;
    let prefix = format!("{}:", p.name);
    let extra = format!(
        "redis_url = \"redis://{}\"\nredis_prefix = \"{prefix}\"",
        proxy.addr()
    );
    let mut sidecar = p.start(&extra);
    let records: Vec<Rec> = (0..100)
        .map(|i| {
            put(
                &format!("session:{i:03}"),
                format!("{{\"s\":{i}}}").as_bytes(),
                &[("sync-route", "redis"), ("sync-ttl", "hour")],
            )
        })
        .collect();
    let positions = p.produce(&records).await;
    // Redis refuses every connection: nothing may be confirmed as written
    std::thread::sleep(Duration::from_secs(5));
    let early = p.read_all("out", Duration::from_secs(30)).await;
    assert!(
        confirmed(&early).is_empty(),
        "confirmed before Redis had them: {:?}",
        confirmed(&early)
    );
    assert!(sidecar.try_status().is_none(), "{}", p.log());

    proxy.restore();
    p.wait_committed(&log_ends(positions.clone()), Duration::from_secs(90));
    sidecar.stop();
    let outs = p.read_all("out", Duration::from_secs(30)).await;
    let seen = confirmed(&outs);
    assert!(positions.iter().all(|p| seen.contains_key(p)));
    for c in confirmations(&outs) {
        for item in c["items"].as_array().unwrap() {
            assert_eq!(item["outcome"], "applied");
            assert_eq!(item["tiers"], serde_json::json!(["redis"]));
        }
    }
    let mut redis = redis::Client::open(common::redis::url(common::redis::PLAIN_ENV))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (i, record) in records.iter().enumerate() {
        let key = format!("{prefix}session:{i:03}");
        let payload: Option<Vec<u8>> = redis.hget(&key, "payload").await.unwrap();
        assert_eq!(payload.as_deref(), record.value.as_deref(), "{key}");
        let ttl: i64 = redis.pttl(&key).await.unwrap();
        assert!(ttl > 0 && ttl <= 3_600_000, "{key}: pttl {ttl}");
    }
    assert!(
        p.sql.raw().await.rows().await.is_empty(),
        "cache-only: no SQL row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_started_while_sql_is_unreachable_waits_for_it() {
    let p = Pipeline::on("sqlstart", 1, Backend::mariadb().await).await;
    let (server, db) = p.sql.url.rsplit_once('/').unwrap();
    let upstream = server.rsplit_once('@').unwrap().1;
    let proxy = fault::Proxy::start(upstream);
    proxy.set(fault::Mode::Refuse);
    let url = format!("mysql://root@{}/{db}", proxy.addr());
    let mut sidecar = p.start_with("", &[("SYNC_ENGINE__SQL_URL", url.as_str())]);
    wait_for_log(&p, Duration::from_secs(30), |log| {
        log.contains("the engine cannot start yet")
    });
    assert!(sidecar.try_status().is_none(), "{}", p.log());
    proxy.restore();
    let positions = p.produce(&good_bad_good("ss")).await;
    p.wait_committed(&log_ends(positions), Duration::from_secs(90));
    sidecar.stop();
    assert_eq!(p.sql.raw().await.rows().await.len(), 2);
}
