//! Sidecar processes in a consumer group on a real Kafka-protocol broker (tansu, started by
//! scripts/test): two processes split the partitions and one of them is SIGKILLed while
//! records keep coming, and SIGTERM drains everything a process consumed.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::Backend;
use kafka::{
    confirmations, confirmed, delete, differences, log_ends, put, Feed, Pipeline, Position, Rec,
    Sidecar,
};
use sync_engine::item::content_hash;

/// Where a process sends its confirmations (the pipeline file's `[kafka] output_topic`).
const OUTPUT_ENV: &str = "SYNC_ENGINE__KAFKA__OUTPUT_TOPIC";
const IDS: usize = 300;

/// The n-th record of the continuous feed: `{"n":n}` put to one of `IDS` ids, or a delete.
fn feed_record(n: usize) -> Rec {
    let id = format!("g:{:03}", n % IDS);
    if n % 9 == 4 {
        delete(&id)
    } else {
        put(&id, format!("{{\"n\":{n}}}").as_bytes(), &[])
    }
}

/// Per id, what the last record produced for it leaves in SQL: (payload, version = offset + 1).
fn last_per_id(sent: &[(Rec, Position)]) -> BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
    let mut last = BTreeMap::new();
    for (record, (_, offset)) in sent {
        last.insert(
            record.key.clone().unwrap(),
            record.value.clone().map(|v| (v, offset + 1)),
        );
    }
    last.into_iter()
        .filter_map(|(id, row)| row.map(|row| (id, row)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_split_then_one_is_killed() {
    let p = Pipeline::on("split", 4, Backend::mariadb().await).await;
    // each process confirms to a topic of its own, so what each one did is seen exactly
    p.create_topics(&["out.0", "out.1"]).await;
    let feed = Feed::start(p.producer(), 20, Duration::from_millis(50), feed_record);
    // two engines write one table: neither's L3 filter would know the other's rows
    let extra = "l3_filter = false\nbatch_flush_count = 100";
    let (out0, out1) = (p.topic("out.0"), p.topic("out.1"));
    // one after the other: the first owns every partition and confirms, then the second's
    // join makes it revoke some (checkpointing them first). (Engines starting together on a
    // fresh database are covered by tests/engine.rs::engines_starting_together_migrate_once.)
    let mut killed: Sidecar = p.start_with(extra, &[(OUTPUT_ENV, &out0)]);
    p.reader("out.0")
        .until(Duration::from_secs(90), |o| !o.is_empty());
    let mut survivor: Sidecar = p.start_with(extra, &[(OUTPUT_ENV, &out1)]);
    let mut by_survivor = p.reader("out.1");
    by_survivor.until(Duration::from_secs(90), |o| !o.is_empty());

    killed.sigkill();
    let killed_at_ms = now_ms();
    let at_kill = log_ends(feed.sent().iter().map(|(_, position)| *position));
    assert_eq!(at_kill.len(), 4, "the feed reaches every partition");
    // the survivor takes every partition over: it confirms, on each, records produced after
    // the kill (the broker first waits out the dead member's session)
    by_survivor.until(Duration::from_secs(90), |o| {
        let seen = confirmed(o);
        at_kill
            .iter()
            .all(|(p, end)| seen.range((*p, *end)..(*p + 1, 0)).next().is_some())
    });
    let sent = feed.stop();
    let positions: BTreeSet<(i32, i64)> = sent.iter().map(|(_, position)| *position).collect();
    let from_killed = p.read_all("out.0", Duration::from_secs(30)).await;
    // it was at work when it died, not idle after a rebalance took everything away
    let last_ms = from_killed.iter().filter_map(|o| o.timestamp_ms).max();
    assert!(
        last_ms.is_some_and(|t| killed_at_ms - t < 5_000),
        "the killed process last confirmed at {last_ms:?}, killed at {killed_at_ms}"
    );
    let by_killed = confirmed(&from_killed);
    by_survivor.until(Duration::from_secs(90), |o| {
        let seen = confirmed(o);
        positions
            .iter()
            .all(|pos| seen.contains_key(pos) || by_killed.contains_key(pos))
    });
    p.wait_committed(
        &log_ends(positions.iter().copied()),
        Duration::from_secs(60),
    );
    survivor.sigterm();
    let status = survivor.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}; log:\n{}", survivor.log());

    let by_survivor = confirmed(&p.read_all("out.1", Duration::from_secs(30)).await);
    let stray: Vec<_> = by_killed
        .keys()
        .chain(by_survivor.keys())
        .filter(|pos| !positions.contains(pos))
        .collect();
    assert!(stray.is_empty(), "confirmed but never produced: {stray:?}");
    // the order the feed produced in is each partition's offset order (idempotent producer)
    let mut previous: HashMap<i32, i64> = HashMap::new();
    for (_, (partition, offset)) in &sent {
        assert!(previous.insert(*partition, *offset) < Some(*offset));
    }

    // each id holds the last value produced for it (or is gone): nothing lost, nothing regressed
    let stored = p.sql.raw().await.contents().await;
    let differences = differences(&stored, &last_per_id(&sent));
    assert!(
        differences.is_empty(),
        "{} ids differ after {} records:\n{}",
        differences.len(),
        sent.len(),
        differences.join("\n")
    );
    let partitions =
        |seen: &BTreeMap<(i32, i64), usize>| seen.keys().map(|(p, _)| *p).collect::<BTreeSet<_>>();
    eprintln!(
        "{} records; confirmed by the killed process {} on partitions {:?} (last {} ms before \
         the kill), by the survivor {} on {:?}",
        sent.len(),
        by_killed.len(),
        partitions(&by_killed),
        killed_at_ms - last_ms.unwrap(),
        by_survivor.len(),
        partitions(&by_survivor),
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `n` puts of distinct ids, every 4th binary.
fn wave(w: u8, n: usize) -> Vec<Rec> {
    (0..n)
        .map(|i| {
            let id = format!("d:{w}:{i:05}");
            if i % 4 == 0 {
                put(
                    &id,
                    &[0, w, (i % 256) as u8, 0xFF],
                    &[("content-type", "application/octet-stream")],
                )
            } else {
                put(&id, format!("{{\"w\":{w},\"i\":{i}}}").as_bytes(), &[])
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_everything_consumed() {
    let p = Pipeline::new("drain", 3).await;
    let mut records = wave(1, 3000);
    let mut positions = p.produce(&records).await;
    let mut sidecar = p.start("batch_flush_count = 100");
    let mut out = p.reader("out");
    out.until(Duration::from_secs(90), |o| !o.is_empty());
    let second = wave(2, 5000);
    let second_positions = p.produce(&second).await;
    positions.extend(&second_positions);
    records.extend(second);
    // SIGTERM as soon as the second wave is flowing through the sidecar
    let second_positions: BTreeSet<(i32, i64)> = second_positions.into_iter().collect();
    out.until(Duration::from_secs(60), |o| {
        confirmed(o)
            .keys()
            .any(|pos| second_positions.contains(pos))
    });
    sidecar.sigterm();
    let status = sidecar.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}; log:\n{}", sidecar.log());

    // per partition: everything consumed was confirmed, and committed right after the last
    let committed = p.committed();
    let confirmations = confirmations(&p.read_all("out", Duration::from_secs(30)).await);
    let mut offsets: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    for c in &confirmations {
        let partition = c["partition"].as_i64().unwrap() as i32;
        for item in c["items"].as_array().unwrap() {
            offsets
                .entry(partition)
                .or_default()
                .insert(item["offset"].as_i64().unwrap());
        }
    }
    for partition in 0..p.partitions {
        let offsets = offsets.remove(&partition).unwrap_or_default();
        let next = offsets.last().map(|last| last + 1);
        assert_eq!(
            committed.get(&partition).copied(),
            next,
            "partition {partition}: committed vs last confirmed + 1"
        );
        assert_eq!(
            offsets,
            (0..next.unwrap_or(0)).collect::<BTreeSet<_>>(),
            "partition {partition}: a gap in the confirmed offsets"
        );
    }

    // the rows are exactly the confirmed puts, byte for byte
    let produced: HashMap<(i32, i64), &Rec> = positions.iter().copied().zip(&records).collect();
    let mut expected: BTreeMap<Vec<u8>, (Vec<u8>, String)> = BTreeMap::new();
    for c in &confirmations {
        let partition = c["partition"].as_i64().unwrap() as i32;
        for item in c["items"].as_array().unwrap() {
            let record = produced[&(partition, item["offset"].as_i64().unwrap())];
            let (id, value) = (record.key.clone().unwrap(), record.value.clone().unwrap());
            assert_eq!(item["op"], "put");
            assert_eq!(item["id"].as_str().map(str::as_bytes), Some(id.as_slice()));
            assert_eq!(item["content_hash"], content_hash(&value));
            expected.insert(id, (value.clone(), content_hash(&value)));
        }
    }
    let stored: BTreeMap<Vec<u8>, (Vec<u8>, String)> = p
        .sql
        .raw()
        .await
        .rows()
        .await
        .into_iter()
        .map(|r| {
            let payload = r.content();
            (r.id, (payload, r.content_hash))
        })
        .collect();
    let differences = differences(&stored, &expected);
    assert!(
        differences.is_empty(),
        "{} ids differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
    eprintln!(
        "SIGTERM: {} of {} records confirmed and committed ({committed:?}), {} of them not \
         yet seen confirmed when it was sent",
        expected.len(),
        records.len(),
        expected.len() - confirmed(&out.outs).len()
    );
}
