//! The Kafka side of the sidecar tests, on a real Kafka-protocol broker (tansu, started by
//! scripts/test): a pipeline of one test's own (topics, group, SQL database), `sync-engine run`
//! processes on it, and writers and readers of its topics.
//!
//! Declared by each test binary as `#[path = "common/kafka.rs"] mod kafka;` next to `mod common;`,
//! and so by the benches that run the sidecar (`benches/common/sidecar.rs` says how).
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;

use crate::common::Backend;

pub const KAFKA_ENV: &str = "SYNC_ENGINE_TEST_KAFKA_BROKERS";

/// Key of the records `Pipeline::read_all` appends to a topic to find its end (tansu's
/// watermarks cannot be trusted); readers never return them.
const END_MARKER: &[u8] = b"__test_end_marker__";

/// `SYNC_ENGINE_TEST_KAFKA_BROKERS`, or without it a container's (`common::containers`).
pub fn brokers() -> String {
    crate::common::containers::url_or_container(KAFKA_ENV, |s| &s.kafka_brokers)
}

/// Topics, a group and an SQL database of one test's own; any number of sidecar processes
/// run on it (same group, same database, one log file each).
pub struct Pipeline {
    pub name: String,
    pub partitions: i32,
    pub sql: Backend,
    /// The bootstrap servers every client of this pipeline uses (the sidecars included).
    pub brokers: String,
    /// librdkafka properties of the test's own clients besides `bootstrap.servers` (TLS).
    pub client: Vec<(String, String)>,
    dir: tempfile::TempDir,
    started: AtomicUsize,
}

impl Pipeline {
    /// On a fresh SQLite file.
    pub async fn new(test: &str, partitions: i32) -> Pipeline {
        Pipeline::on(test, partitions, Backend::sqlite()).await
    }

    /// Topics `<name>.in`, `.out` and `.dlq`, each with `partitions` partitions.
    pub async fn on(test: &str, partitions: i32, sql: Backend) -> Pipeline {
        Pipeline::on_brokers(test, partitions, sql, brokers()).await
    }

    /// Like `on`, on another broker (e.g. a private one behind a fault proxy).
    pub async fn on_brokers(
        test: &str,
        partitions: i32,
        sql: Backend,
        brokers: String,
    ) -> Pipeline {
        Pipeline::on_brokers_with(test, partitions, sql, brokers, &[]).await
    }

    /// Like `on_brokers`, the test's own clients with these librdkafka properties (e.g. TLS).
    pub async fn on_brokers_with(
        test: &str,
        partitions: i32,
        sql: Backend,
        brokers: String,
        client: &[(&str, &str)],
    ) -> Pipeline {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = Pipeline {
            name: format!("t{}-{test}-{nanos}", std::process::id()),
            partitions,
            sql,
            brokers,
            client: client
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir: tempfile::tempdir().unwrap(),
            started: AtomicUsize::new(0),
        };
        p.create_topics(&["in", "out", "dlq"]).await;
        p
    }

    /// More topics `<name>.<kind>` (tansu does not auto-create them).
    pub async fn create_topics(&self, kinds: &[&str]) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().unwrap();
        let topics: Vec<String> = kinds.iter().map(|k| self.topic(k)).collect();
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, self.partitions, TopicReplication::Fixed(1)))
            .collect();
        for result in admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .unwrap()
        {
            result.unwrap();
        }
    }

    /// A client configuration for this pipeline's broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.client {
            config.set(k, v);
        }
        config
    }

    pub fn topic(&self, kind: &str) -> String {
        format!("{}.{kind}", self.name)
    }

    pub fn group(&self) -> String {
        format!("{}.group", self.name)
    }

    /// Starts `sync-engine run` on a pipeline file of its own, with `extra` engine settings.
    pub fn start(&self, extra: &str) -> Sidecar {
        self.start_with(extra, &[])
    }

    /// Like `start`, with `SYNC_ENGINE__*` overrides in the process's environment.
    pub fn start_with(&self, extra: &str, env: &[(&str, &str)]) -> Sidecar {
        let engine = format!("batch_flush_ms = 50\n{extra}");
        self.spawn(env!("CARGO_BIN_EXE_sync-engine"), &engine, "", env)
    }

    /// `binary run` (another build of sync-engine, say) on a pipeline file of its own: the
    /// pipeline's SQL database, then `engine` settings (no defaults), the pipeline's `[kafka]`
    /// table, and last `tail`, which continues its `[kafka.consumer]` table (more properties,
    /// then further tables such as `[kafka.producer]`). The benches' way to start a sidecar.
    pub fn spawn(&self, binary: &str, engine: &str, tail: &str, env: &[(&str, &str)]) -> Sidecar {
        let n = self.started.fetch_add(1, Ordering::SeqCst);
        let file = self.dir.path().join(format!("pipeline-{n}.toml"));
        std::fs::write(
            &file,
            format!(
                r#"sql_url = "{sql}"
{engine}
[kafka]
brokers = "{brokers}"
group_id = "{group}"
input_topic = "{name}.in"
output_topic = "{name}.out"
dlq_topic = "{name}.dlq"
[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
{tail}"#,
                sql = self.sql.url,
                brokers = self.brokers,
                group = self.group(),
                name = self.name,
            ),
        )
        .unwrap();
        let log = self.dir.path().join(format!("sidecar-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .args(["run", "--pipeline"])
            .arg(&file)
            .env("RUST_LOG", "info")
            // an HTTP endpoint on a port of its own (tests run sidecars side by side)
            .env("SYNC_ENGINE__HTTP__LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Sidecar {
            child,
            log,
            n,
            pipeline: file,
        }
    }

    /// The logs of every process started so far.
    pub fn log(&self) -> String {
        logs(self.dir.path())
    }

    pub fn producer(&self) -> Producer {
        Producer::with(self.client_config(), &self.topic("in"))
    }

    /// Produces records to the input topic; returns (partition, offset) of each, in order.
    pub async fn produce(&self, records: &[Rec]) -> Vec<(i32, i64)> {
        self.producer().send(records).await
    }

    /// A reader of a whole topic `<name>.<kind>`, from the start.
    pub fn reader(&self, kind: &str) -> Reader {
        self.reader_with(kind, &[])
    }

    /// Like `reader`, its consumer with these librdkafka properties too.
    pub fn reader_with(&self, kind: &str, properties: &[(&str, &str)]) -> Reader {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut config = self.client_config();
        for (k, v) in properties {
            config.set(*k, *v);
        }
        let consumer: BaseConsumer = config
            .set(
                "group.id",
                format!(
                    "{}.reader.{kind}.{}",
                    self.name,
                    NEXT.fetch_add(1, Ordering::SeqCst)
                ),
            )
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition_offset(&self.topic(kind), p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        Reader {
            consumer,
            kind: kind.to_string(),
            dir: self.dir.path().to_path_buf(),
            outs: Vec::new(),
            reached: BTreeMap::new(),
        }
    }

    /// Reads a whole topic from the start until `done` says enough, or panics.
    pub fn read_until(
        &self,
        kind: &str,
        deadline: Duration,
        done: impl Fn(&[Out]) -> bool,
    ) -> Vec<Out> {
        let mut reader = self.reader(kind);
        reader.until(deadline, done);
        reader.outs
    }

    /// Everything in a topic that nobody writes to any more: appends an end marker to every
    /// partition and reads up to them.
    pub async fn read_all(&self, kind: &str, deadline: Duration) -> Vec<Out> {
        let producer = Producer::with(self.client_config(), &self.topic(kind));
        let mut ends = BTreeMap::new();
        for p in 0..self.partitions {
            let record = FutureRecord::<[u8], [u8]>::to(&producer.topic)
                .partition(p)
                .key(END_MARKER)
                .payload(b"");
            let delivery = producer
                .producer
                .send(record, Duration::from_secs(30))
                .await
                .unwrap_or_else(|(e, _)| panic!("end marker: {e}"));
            ends.insert(delivery.partition, delivery.offset);
        }
        let mut reader = self.reader(kind);
        let end = Instant::now() + deadline;
        while ends.iter().any(|(p, o)| reader.reached.get(p) < Some(o)) {
            assert!(
                Instant::now() < end,
                "{kind}: end markers {ends:?} not reached (at {:?})",
                reader.reached
            );
            reader.poll(Duration::from_millis(100));
        }
        reader.outs
    }

    /// The group's committed offset per partition.
    pub fn committed(&self) -> BTreeMap<i32, i64> {
        self.try_committed(Duration::from_secs(10))
            .expect("the broker answers the committed offsets")
    }

    /// The group's committed offset per partition, or None when the broker does not answer
    /// within `wait` (right after a broker outage, say).
    pub fn try_committed(&self, wait: Duration) -> Option<BTreeMap<i32, i64>> {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", self.group())
            .create()
            .ok()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic("in"), p);
        }
        let committed = consumer.committed_offsets(tpl, wait).ok()?;
        Some(
            committed
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect(),
        )
    }

    /// Waits until the group's committed offsets are exactly `ends`, or panics.
    pub fn wait_committed(&self, ends: &BTreeMap<i32, i64>, deadline: Duration) {
        let end = Instant::now() + deadline;
        loop {
            let committed = self.committed();
            if &committed == ends {
                return;
            }
            assert!(
                Instant::now() < end,
                "committed {committed:?} != {ends:?}; sidecar logs:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Per partition, the offset after the last of `positions`: where a caught-up group commits.
pub fn log_ends(positions: impl IntoIterator<Item = (i32, i64)>) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for (partition, offset) in positions {
        let e = ends.entry(partition).or_insert(0);
        *e = (*e).max(offset + 1);
    }
    ends
}

fn logs(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|f| f.extension().is_some_and(|e| e == "log"));
    files.sort();
    files
        .iter()
        .map(|f| {
            format!(
                "===== {} =====\n{}",
                f.file_name().unwrap().to_string_lossy(),
                std::fs::read_to_string(f).unwrap_or_default()
            )
        })
        .collect()
}

/// One `sync-engine run` process; killed when dropped, so a failing test leaves none behind.
pub struct Sidecar {
    child: Child,
    log: PathBuf,
    pub n: usize,
    /// The pipeline file it runs (for `sync-engine verify` on the same pipeline).
    pub pipeline: PathBuf,
}

impl Sidecar {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The file `log` reads (for a thread that watches it).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`TERM`, `HUP`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: no drain, no goodbye to the group.
    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then a clean exit within 30 s (a failure shows the log).
    pub fn stop(&mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "{status}; log:\n{}", self.log());
    }

    /// Its exit status if it has exited (`None`: still running).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "sidecar {} did not exit; its log:\n{}",
                self.n,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A producer to one topic.
#[derive(Clone)]
pub struct Producer {
    producer: FutureProducer,
    topic: String,
}

impl Producer {
    pub fn new(topic: &str) -> Producer {
        Producer::on(&brokers(), topic)
    }

    pub fn on(brokers: &str, topic: &str) -> Producer {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        Producer::with(config, topic)
    }

    /// A producer with `config` (`bootstrap.servers` and whatever else the broker needs).
    pub fn with(mut config: ClientConfig, topic: &str) -> Producer {
        let producer = config
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        Producer {
            producer,
            topic: topic.to_string(),
        }
    }

    /// Sends records (all enqueued, then every delivery awaited); returns (partition, offset)
    /// of each, in order.
    pub async fn send(&self, records: &[Rec]) -> Vec<(i32, i64)> {
        let sends: Vec<_> = records
            .iter()
            .map(|r| {
                self.enqueue(r)
                    .unwrap_or_else(|e| panic!("enqueue failed: {e}"))
            })
            .collect();
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

    /// Hands one record to librdkafka; its delivery report comes later (a bench stamps the
    /// moment in between).
    pub fn enqueue(&self, r: &Rec) -> KafkaResult<DeliveryFuture> {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = &r.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &r.value {
            record = record.payload(value.as_slice());
        }
        self.producer.send_result(record).map_err(|(e, _)| e)
    }
}

/// Where a record landed: (partition, offset).
pub type Position = (i32, i64);

/// Records produced continuously on a thread of their own, `chunk` at a time with `pause`
/// in between, until stopped.
pub struct Feed {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<(Rec, Position)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Feed {
    /// `record(n)` makes the n-th record (n = 0, 1, …).
    pub fn start(
        producer: Producer,
        chunk: usize,
        pause: Duration,
        record: impl Fn(usize) -> Rec + Send + 'static,
    ) -> Feed {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (flag, log) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut n = 0;
            while !flag.load(Ordering::SeqCst) {
                let records: Vec<Rec> = (n..n + chunk).map(&record).collect();
                n += chunk;
                let positions = runtime.block_on(producer.send(&records));
                log.lock()
                    .unwrap()
                    .extend(records.into_iter().zip(positions));
                std::thread::sleep(pause); // a rate, not a wait for a condition
            }
        });
        Feed {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// What has been delivered so far, in production order.
    pub fn sent(&self) -> Vec<(Rec, Position)> {
        self.sent.lock().unwrap().clone()
    }

    /// Stops producing; returns everything delivered, in production order.
    pub fn stop(mut self) -> Vec<(Rec, Position)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the feed thread panicked");
        }
        self.sent()
    }
}

impl Drop for Feed {
    /// A failing test stops its feed too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A reader of a whole topic (no group membership), accumulating what it has read.
pub struct Reader {
    consumer: BaseConsumer,
    kind: String,
    dir: PathBuf,
    pub outs: Vec<Out>,
    /// Per partition, the highest offset read (end markers included).
    reached: BTreeMap<i32, i64>,
}

impl Reader {
    /// Reads what arrives within `wait`, and then whatever else is already there.
    pub fn poll(&mut self, wait: Duration) {
        let mut wait = wait;
        for _ in 0..1000 {
            let Some(message) = self.consumer.poll(wait) else {
                return;
            };
            let m = message.unwrap();
            wait = Duration::ZERO;
            let reached = self.reached.entry(m.partition()).or_insert(-1);
            *reached = (*reached).max(m.offset());
            if m.key() == Some(END_MARKER) {
                continue;
            }
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.outs.push(Out {
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }

    /// Reads on until `done` says enough, or panics with the sidecars' logs.
    pub fn until(&mut self, deadline: Duration, done: impl Fn(&[Out]) -> bool) -> &[Out] {
        let end = Instant::now() + deadline;
        while !done(&self.outs) {
            assert!(
                Instant::now() < end,
                "{}: gave up after {} records; sidecar logs:\n{}",
                self.kind,
                self.outs.len(),
                logs(&self.dir)
            );
            self.poll(Duration::from_millis(100));
        }
        &self.outs
    }
}

/// A record to produce.
#[derive(Debug, Clone)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

pub fn put(id: &str, value: &[u8], headers: &[(&str, &str)]) -> Rec {
    Rec {
        key: Some(id.as_bytes().to_vec()),
        value: Some(value.to_vec()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

pub fn delete(id: &str) -> Rec {
    Rec {
        key: Some(id.as_bytes().to_vec()),
        value: None,
        headers: Vec::new(),
    }
}

/// A record read back.
#[derive(Debug)]
pub struct Out {
    pub partition: i32,
    pub offset: i64,
    /// When its producer made it (CreateTime), in ms since the epoch.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// The output events of one `type` among `outs` (`confirmation`, `checkpoint`), each
/// checked for its key.
pub fn events(outs: &[Out], kind: &str) -> Vec<Value> {
    outs.iter()
        .map(|out| {
            let c: Value = serde_json::from_slice(out.value.as_ref().unwrap()).unwrap();
            assert!(
                c["type"] == "confirmation" || c["type"] == "checkpoint",
                "{c}"
            );
            (out, c)
        })
        .filter(|(_, c)| c["type"] == kind)
        .map(|(out, c)| {
            assert_eq!(
                out.key.as_deref(),
                Some(
                    format!("{}:{}", c["source_topic"].as_str().unwrap(), c["partition"])
                        .as_bytes()
                )
            );
            c
        })
        .collect()
}

/// The confirmations among `outs`.
pub fn confirmations(outs: &[Out]) -> Vec<Value> {
    events(outs, "confirmation")
}

/// Every (partition, offset) the confirmations cover, with how often each was confirmed.
pub fn confirmed(outs: &[Out]) -> BTreeMap<(i32, i64), usize> {
    let mut seen = BTreeMap::new();
    for c in confirmations(outs) {
        let partition = c["partition"].as_i64().unwrap() as i32;
        for item in c["items"].as_array().unwrap() {
            *seen
                .entry((partition, item["offset"].as_i64().unwrap()))
                .or_insert(0) += 1;
        }
    }
    seen
}

/// The ids on which two maps disagree, with both sides (for readable failures).
pub fn differences<V: PartialEq + std::fmt::Debug>(
    actual: &BTreeMap<Vec<u8>, V>,
    expected: &BTreeMap<Vec<u8>, V>,
) -> Vec<String> {
    let ids: BTreeSet<&Vec<u8>> = actual.keys().chain(expected.keys()).collect();
    ids.into_iter()
        .filter(|id| actual.get(*id) != expected.get(*id))
        .map(|id| {
            format!(
                "{}: stored {}, expected {}",
                String::from_utf8_lossy(id),
                shown(actual.get(id)),
                shown(expected.get(id))
            )
        })
        .collect()
}

pub fn shown<V: std::fmt::Debug>(v: Option<&V>) -> String {
    let text = format!("{v:?}");
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text
    }
}
