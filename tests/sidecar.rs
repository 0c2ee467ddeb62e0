//! The sidecar as a process, against a real Kafka-protocol broker (tansu, started by
//! scripts/test): records become rows, every offset is confirmed, offsets are committed only
//! after that, bad records go to the DLQ, and crashes or SIGTERM lose nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::Backend;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;

const KAFKA_ENV: &str = "SYNC_ENGINE_TEST_KAFKA_BROKERS";

fn brokers() -> String {
    std::env::var(KAFKA_ENV).unwrap_or_else(|_| {
        panic!("{KAFKA_ENV} is not set: run the suite with scripts/test (it starts a broker)")
    })
}

/// Topics and a group of one test's own.
struct Pipeline {
    name: String,
    partitions: i32,
    dir: tempfile::TempDir,
    sql: Backend,
}

impl Pipeline {
    async fn new(test: &str, partitions: i32) -> Pipeline {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("t{}-{test}-{nanos}", std::process::id());
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        let topics: Vec<String> = ["in", "out", "dlq"]
            .iter()
            .map(|t| format!("{name}.{t}"))
            .collect();
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        for result in admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .unwrap()
        {
            result.unwrap();
        }
        Pipeline {
            name,
            partitions,
            dir: tempfile::tempdir().unwrap(),
            sql: Backend::sqlite(),
        }
    }

    fn topic(&self, kind: &str) -> String {
        format!("{}.{kind}", self.name)
    }

    /// Writes the pipeline file and starts `sync-engine run` on it.
    fn start(&self, extra: &str) -> Child {
        let file = self.dir.path().join("pipeline.toml");
        std::fs::write(
            &file,
            format!(
                r#"sql_url = "{sql}"
batch_flush_ms = 50
{extra}
[kafka]
brokers = "{brokers}"
group_id = "{name}.group"
input_topic = "{name}.in"
output_topic = "{name}.out"
dlq_topic = "{name}.dlq"
[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"#,
                sql = self.sql.url,
                brokers = brokers(),
                name = self.name,
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sidecar.log"))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_sync-engine"))
            .args(["run", "--pipeline"])
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    /// Produces records; returns (partition, offset) of each, in order.
    async fn produce(&self, records: &[Rec]) -> Vec<(i32, i64)> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let topic = self.topic("in");
        let sends = records.iter().map(|r| {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).headers(headers);
            if let Some(key) = &r.key {
                record = record.key(key.as_slice());
            }
            if let Some(value) = &r.value {
                record = record.payload(value.as_slice());
            }
            // enqueued now; the deliveries are awaited below
            producer
                .send_result(record)
                .unwrap_or_else(|(e, _)| panic!("enqueue failed: {e}"))
        });
        let sends: Vec<_> = sends.collect();
        let mut positions = Vec::new();
        for delivery in sends {
            let delivery = delivery
                .await
                .unwrap()
                .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
            positions.push((delivery.partition, delivery.offset));
        }
        positions
    }

    /// Reads a whole topic from the start (no group) until `done` says enough, or panics.
    fn read_until(
        &self,
        kind: &str,
        deadline: Duration,
        done: impl Fn(&[Out]) -> bool,
    ) -> Vec<Out> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", format!("{}.reader.{kind}", self.name))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition_offset(&self.topic(kind), p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let end = Instant::now() + deadline;
        while !done(&out) {
            assert!(
                Instant::now() < end,
                "{kind}: gave up after {} records; sidecar log:\n{}",
                out.len(),
                self.log()
            );
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let m = message.unwrap();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Out {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        out
    }

    /// The group's committed offset per partition.
    fn committed(&self) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", format!("{}.group", self.name))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic("in"), p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

fn put(id: &str, value: &[u8], headers: &[(&str, &str)]) -> Rec {
    Rec {
        key: Some(id.as_bytes().to_vec()),
        value: Some(value.to_vec()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn delete(id: &str) -> Rec {
    Rec {
        key: Some(id.as_bytes().to_vec()),
        value: None,
        headers: Vec::new(),
    }
}

#[derive(Debug)]
struct Out {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: BTreeMap<String, String>,
}

/// Every (partition, offset) the confirmations cover, with how often each was confirmed.
fn confirmed(outs: &[Out]) -> BTreeMap<(i32, i64), usize> {
    let mut seen = BTreeMap::new();
    for out in outs {
        let c: Value = serde_json::from_slice(out.value.as_ref().unwrap()).unwrap();
        assert_eq!(c["type"], "confirmation");
        let partition = c["partition"].as_i64().unwrap() as i32;
        assert_eq!(
            out.key.as_deref(),
            Some(format!("{}:{partition}", c["source_topic"].as_str().unwrap()).as_bytes())
        );
        for item in c["items"].as_array().unwrap() {
            *seen
                .entry((partition, item["offset"].as_i64().unwrap()))
                .or_insert(0) += 1;
        }
    }
    seen
}

fn wait_exit(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < end, "the sidecar did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_become_rows_confirmations_and_commits() {
    let p = Pipeline::new("bulk", 3).await;
    let n = 10_000;
    let records: Vec<Rec> = (0..n)
        .map(|i| {
            let id = format!("item:{i:05}");
            match i % 5 {
                0 => put(
                    &id,
                    format!("{{ \"n\" : {i}, \"s\": \"é\" }}").as_bytes(),
                    &[("sync-state", "delta")],
                ),
                1 => put(
                    &id,
                    &[0, 1, 2, (i % 256) as u8],
                    &[("content-type", "application/octet-stream")],
                ),
                2 => put(
                    &id,
                    b"{\"x\":1}",
                    &[("sync-route", "sql"), ("content-type", "application/json")],
                ),
                3 => put(
                    &id,
                    b"cached",
                    &[("sync-route", "redis,sql"), ("sync-ttl", "hour")],
                ),
                _ => put(&id, format!("[{i}]").as_bytes(), &[]),
            }
        })
        .collect();
    let positions = p.produce(&records).await;
    let mut child = p.start("");
    let outs = p.read_until("out", Duration::from_secs(120), |o| confirmed(o).len() >= n);
    let seen = confirmed(&outs);
    let expected: BTreeSet<(i32, i64)> = positions.iter().copied().collect();
    assert_eq!(
        seen.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "a confirmation for every offset"
    );

    // the group's committed offsets reach the end of every partition
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset) in &positions {
        let e = ends.entry(*partition).or_insert(0);
        *e = (*e).max(offset + 1);
    }
    let end = Instant::now() + Duration::from_secs(30);
    while p.committed() != ends {
        assert!(
            Instant::now() < end,
            "committed {:?} != {:?}",
            p.committed(),
            ends
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sigterm(&child);
    assert!(
        wait_exit(&mut child, Duration::from_secs(30)).success(),
        "{}",
        p.log()
    );

    // every row, byte for byte
    let rows = p.sql.raw().await.rows().await;
    assert_eq!(rows.len(), n);
    for (row, record) in rows.iter().zip(&records) {
        assert_eq!(Some(&row.id), record.key.as_ref());
        let value = record.value.as_ref().unwrap();
        match &row.payload {
            Some(text) => assert_eq!(text.as_bytes(), value.as_slice()),
            None => assert_eq!(row.payload_blob.as_ref(), Some(value)),
        }
        assert_eq!(row.content_hash, sync_engine::item::content_hash(value));
    }
    assert_eq!(rows.iter().filter(|r| r.state == b"delta").count(), n / 5);
    assert!(
        rows.iter()
            .filter(|r| r.id.ends_with(b"1"))
            .all(|r| r.payload_blob.is_some()),
        "octet-stream stays binary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_and_bad_records() {
    let p = Pipeline::new("order", 2).await;
    let long_key = "k".repeat(256);
    let mut records = Vec::new();
    for round in 0..3 {
        for i in 0..20 {
            let id = format!("key:{i}");
            records.push(put(&id, format!("v{round}").as_bytes(), &[]));
            if (i + round) % 3 == 0 {
                records.push(delete(&id));
            }
        }
    }
    let bad: Vec<(Rec, &str)> = vec![
        (
            Rec {
                key: None,
                value: Some(b"1".to_vec()),
                headers: vec![],
            },
            "missing_key",
        ),
        (put("", b"1", &[]), "empty_key"),
        (
            Rec {
                key: Some(b"\xff\xfe".to_vec()),
                value: Some(b"1".to_vec()),
                headers: vec![],
            },
            "key_not_utf8",
        ),
        (put(&long_key, b"1", &[]), "key_too_long"),
        (
            put(
                "bad:json",
                b"{nope",
                &[("content-type", "application/json")],
            ),
            "invalid_json",
        ),
        (
            put("bad:route", b"1", &[("sync-route", "disk")]),
            "unknown_route",
        ),
        (
            put("bad:ttl", b"1", &[("sync-ttl", "soon")]),
            "malformed_ttl",
        ),
        (
            put("bad:state", b"1", &[("sync-state", "")]),
            "invalid_state",
        ),
        (
            put(
                "bad:sqlttl",
                b"1",
                &[("sync-route", "sql"), ("sync-ttl", "60")],
            ),
            "ttl_without_redis",
        ),
        (put("bad:big", &vec![b'x'; 2048], &[]), "payload_too_large"),
    ];
    records.extend(bad.iter().map(|(r, _)| r.clone()));
    records.push(put("after:bad", b"still processed", &[]));
    let positions = p.produce(&records).await;
    let mut child = p.start("max_payload_bytes = 1024");
    let outs = p.read_until("out", Duration::from_secs(90), |o| {
        confirmed(o).len() >= records.len()
    });
    assert_eq!(confirmed(&outs).len(), positions.len());
    let dlq = p.read_until("dlq", Duration::from_secs(30), |o| o.len() >= bad.len());
    let codes: BTreeSet<&str> = dlq
        .iter()
        .map(|o| o.headers["sync-error-code"].as_str())
        .collect();
    let expected: BTreeSet<&str> = bad.iter().map(|(_, c)| *c).collect();
    assert_eq!(codes, expected);
    for out in &dlq {
        assert_eq!(out.headers["sync-source-topic"], p.topic("in"));
        assert!(!out.headers["sync-error-message"].is_empty());
        let original = bad
            .iter()
            .find(|(_, c)| *c == out.headers["sync-error-code"])
            .unwrap();
        assert_eq!(out.key, original.0.key, "original key kept");
        assert_eq!(out.value, original.0.value, "original value kept");
        assert!(out.headers.contains_key("sync-source-offset"));
    }
    sigterm(&child);
    assert!(
        wait_exit(&mut child, Duration::from_secs(30)).success(),
        "{}",
        p.log()
    );

    let rows: BTreeMap<Vec<u8>, Vec<u8>> = p
        .sql
        .raw()
        .await
        .rows()
        .await
        .into_iter()
        .map(|r| {
            (
                r.id,
                r.payload_blob
                    .unwrap_or_else(|| r.payload.unwrap().into_bytes()),
            )
        })
        .collect();
    for i in 0..20 {
        let id = format!("key:{i}").into_bytes();
        // last op of round 2: deleted when (i + 2) % 3 == 0, else v2
        let expect = ((i + 2) % 3 != 0).then(|| b"v2".to_vec());
        assert_eq!(rows.get(&id).cloned(), expect, "key:{i}");
    }
    assert_eq!(
        rows.get(b"after:bad".as_slice()).map(Vec::as_slice),
        Some(&b"still processed"[..])
    );
    assert!(!rows.keys().any(|k| k.starts_with(b"bad:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_loses_nothing() {
    let p = Pipeline::new("crash", 2).await;
    let n = 6_000;
    let records: Vec<Rec> = (0..n)
        .map(|i| {
            put(
                &format!("c:{:04}", i % 1500),
                format!("{{\"i\":{i}}}").as_bytes(),
                &[],
            )
        })
        .collect();
    let positions = p.produce(&records).await;
    let mut child = p.start("batch_flush_count = 200");
    p.read_until("out", Duration::from_secs(90), |o| !o.is_empty());
    child.kill().unwrap(); // SIGKILL, mid-stream
    child.wait().unwrap();

    let mut child = p.start("batch_flush_count = 200");
    let outs = p.read_until("out", Duration::from_secs(120), |o| confirmed(o).len() >= n);
    sigterm(&child);
    assert!(
        wait_exit(&mut child, Duration::from_secs(30)).success(),
        "{}",
        p.log()
    );
    let seen = confirmed(&outs);
    assert_eq!(
        seen.keys().copied().collect::<BTreeSet<_>>(),
        positions.iter().copied().collect::<BTreeSet<_>>()
    );

    // each id holds its last value: nothing lost, nothing regressed
    let rows = p.sql.raw().await.rows().await;
    assert_eq!(rows.len(), 1500);
    for row in rows {
        let i: usize = std::str::from_utf8(&row.id[2..]).unwrap().parse().unwrap();
        let last = (0..n).rev().find(|j| j % 1500 == i).unwrap();
        assert_eq!(
            row.payload.as_deref(),
            Some(format!("{{\"i\":{last}}}").as_str())
        );
    }
}
