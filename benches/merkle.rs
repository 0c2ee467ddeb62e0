//! What the Merkle state roots (schemas/MERKLE.md) cost, and how fast `verify` is
//! (`harness = false`, plain `Instant` timing and medians).
//!
//! 1. **Sidecar throughput, `merkle = true` vs `merkle = false`.** The real `sync-engine run`
//!    process (`env!("CARGO_BIN_EXE_sync-engine")`, an optimized binary under `cargo bench`)
//!    against the Kafka-protocol broker, MariaDB and Redis, with the pipeline of
//!    `benches/sidecar.rs` (`batch_flush_ms = 100`, `batch_flush_count = 1000`,
//!    `batch_flush_bytes = 1 MiB`, `l3_filter = false`, `session.timeout.ms = 6000`) plus the
//!    `merkle` key. N records (1 KiB JSON from `benches/common/payload.rs`, distinct ids, 4
//!    partitions) are produced once to one input topic before any run. Each run has a fresh
//!    consumer group (it reads the whole input from the beginning), fresh output/DLQ topics,
//!    a fresh MariaDB database and a fresh Redis prefix; runs alternate on, off, on, off, ….
//!    A reader of the output topic counts the distinct (partition, offset) pairs the
//!    confirmation events list (checkpoint events are skipped) until all N are confirmed.
//!    Reported per mode: the median **steady rate**, (N − items of the first confirmation) /
//!    (first confirmation → all confirmed), which leaves out process start and the group
//!    join; the end-to-end rate (spawn → all confirmed); the CPU time per item of the
//!    sidecar and of mariadbd in the steady window (from `/proc`, less sensitive to other
//!    load than rates, though mariadbd's includes other sessions' queries); the busy cores
//!    not accounted to the sidecar, the services or the bench ("other load": a run with
//!    much of it is not clean); and the ratio off/on of the median steady rates, plus the
//!    median of the per-pair ratios (each on run against the off run right after it), the
//!    figure to prefer when other processes share the machine. `merkle = false` turns off
//!    only the SQL side (reading and rewriting `sync_merkle_buckets` rows in each batch's
//!    transaction). The Redis write script still maintains its mirror, and each confirmation
//!    still reads the partition's stored digests for its `state_root`, so the difference is
//!    the cost of the digest maintenance in SQL.
//! 2. **`verify`.** M rows (1 KiB JSON, partition `local`) are loaded through the library
//!    engine, so stored digests, Redis copies and the Redis mirror are all real:
//!    MariaDB + Redis, `batch_flush_count = 5000`, `batch_flush_bytes = 8 MiB`, one `flush()`
//!    at the end, payloads built inside the clock. Reported: the load's wall time. Then, in
//!    this order: `engine.verify` with Redis (every page of 5000 rows probed in Redis, then
//!    a SCAN of the prefix for strays), `engine.verify` on an engine without Redis (SQL
//!    pages and re-hashing only), `engine.verify` with Redis again, and
//!    `sync-engine verify --pipeline F` as a process once (wall time from spawn to exit,
//!    including engine start and its row count, plus the time it prints for the verify
//!    itself). Reported: rows/s of each.
//!
//! Services (defaults are this machine's): `SYNC_ENGINE_TEST_KAFKA_BROKERS`
//! (`127.0.0.1:19092`), `SYNC_ENGINE_TEST_MYSQL_URL` (`mysql://root@127.0.0.1:3306/test`;
//! only its server part is used), `SYNC_ENGINE_TEST_REDIS_URL` (`redis://127.0.0.1:6379`). One
//! that cannot be reached skips the bench with a note. Every database, Redis key and topic
//! the bench creates is removed at the end, also when it panics. Under `cargo bench`:
//! N = 100 000, 4 pairs of runs, M = 1 000 000. Under `cargo test` (no `--bench` argument)
//! everything runs once with small sizes as a smoke test. Nothing asserts on timings.

#[path = "common/payload.rs"]
mod payload;
use payload::{payload, ITEM_BYTES};

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::Deserialize;
use sqlx::mysql::MySqlConnection;
use sqlx::Connection;
use sync_engine::{SyncEngine, SyncEngineConfig, SyncItem};
use tokio::sync::watch;

const KAFKA_ENV: &str = "SYNC_ENGINE_TEST_KAFKA_BROKERS";
const MYSQL_ENV: &str = "SYNC_ENGINE_TEST_MYSQL_URL";
const REDIS_ENV: &str = "SYNC_ENGINE_TEST_REDIS_URL";
const KAFKA_DEFAULT: &str = "127.0.0.1:19092";
const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";
const REDIS_DEFAULT: &str = "redis://127.0.0.1:6379";

const SIDECAR: &str = env!("CARGO_BIN_EXE_sync-engine");
const PARTITIONS: i32 = 4;

/// Sizes of one bench run: full under `cargo bench`, tiny as a smoke test.
#[derive(Clone, Copy)]
struct Sizes {
    /// Records per sidecar run.
    n: usize,
    /// (on, off) pairs of sidecar runs.
    pairs: usize,
    /// Rows loaded for `verify`.
    verify_rows: usize,
}

const FULL: Sizes = Sizes {
    n: 100_000,
    pairs: 4,
    verify_rows: 1_000_000,
};

const SMOKE: Sizes = Sizes {
    n: 2000,
    pairs: 1,
    verify_rows: 20_000,
};

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn list(values: &[f64], decimals: usize) -> String {
    let v: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    v.join(", ")
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// CPU time from /proc

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime (ticks) of a process.
fn process_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    field(11).unwrap_or(0) + field(12).unwrap_or(0)
}

/// (busy, total) ticks of the whole machine.
fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    (busy, busy + at(3) + at(4))
}

/// The lowest pid whose `comm` is `comm` and whose command line contains `needle`.
fn find_pid(comm: &str, needle: &str) -> Option<u32> {
    let mut found: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            (name.trim() == comm && String::from_utf8_lossy(&cmdline).contains(needle))
                .then_some(pid)
        })
        .collect();
    found.sort();
    found.first().copied()
}

/// CPU ticks of the sidecar, the services and this process, and of the machine.
struct CpuSample {
    at: Instant,
    /// sidecar, mariadbd, redis-server, tansu, bench
    ticks: [u64; 5],
    machine: (u64, u64),
}

fn cpu_sample(pids: &[Option<u32>; 5]) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        ticks: pids.map(|p| p.map_or(0, process_ticks)),
        machine: machine_ticks(),
    }
}

/// CPU use in a window, in cores.
#[derive(Clone, Copy, Default)]
struct CpuWindow {
    sidecar: f64,
    mariadbd: f64,
    /// Busy cores not accounted to the sidecar, the services or the bench: other sessions.
    other: f64,
}

fn cpu_window(a: &CpuSample, b: &CpuSample, tck: f64, cores: f64) -> CpuWindow {
    let wall = (b.at - a.at).as_secs_f64().max(1e-9);
    let used: Vec<f64> = (0..5)
        .map(|i| b.ticks[i].saturating_sub(a.ticks[i]) as f64 / tck / wall)
        .collect();
    let busy = b.machine.0.saturating_sub(a.machine.0) as f64;
    let total = b.machine.1.saturating_sub(a.machine.1).max(1) as f64;
    CpuWindow {
        sidecar: used[0],
        mariadbd: used[1],
        other: (busy / total * cores - used.iter().sum::<f64>()).max(0.0),
    }
}

// ---------------------------------------------------------------------------------------
// scratch resources: databases, Redis prefixes, topics (all removed at the end)

#[derive(Default)]
struct Scratch {
    databases: Vec<String>,
    prefixes: Vec<String>,
    topics: Vec<String>,
}

struct Env {
    brokers: String,
    /// `mysql://user@host:port` (no database).
    server: String,
    admin_url: String,
    redis_url: String,
    redis: redis::aio::MultiplexedConnection,
    /// Unique to this bench process: part of every name it creates.
    tag: String,
    dir: tempfile::TempDir,
    scratch: Mutex<Scratch>,
    /// mariadbd, redis-server, tansu, bench (CPU accounting).
    services: [Option<u32>; 4],
    tck: f64,
    cores: f64,
}

impl Env {
    fn topic(&self, label: &str) -> String {
        format!("{}.{label}", self.tag)
    }

    async fn create_topics(&self, topics: &[String]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("admin client");
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
            .collect();
        self.scratch
            .lock()
            .unwrap()
            .topics
            .extend(topics.iter().cloned());
        for result in admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .expect("create topics")
        {
            result.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
    }

    async fn create_database(&self, label: &str) -> String {
        let db = format!("{}_{label}", self.tag);
        let mut admin = MySqlConnection::connect(&self.admin_url)
            .await
            .expect("connect to MariaDB");
        self.scratch.lock().unwrap().databases.push(db.clone());
        sqlx::query(&format!("CREATE DATABASE `{db}`"))
            .execute(&mut admin)
            .await
            .expect("create database");
        let _ = admin.close().await;
        db
    }

    fn prefix(&self, label: &str) -> String {
        let prefix = format!("{}:{label}:", self.tag);
        self.scratch.lock().unwrap().prefixes.push(prefix.clone());
        prefix
    }

    /// Rows in a database's `sync_items`.
    async fn rows(&self, db: &str) -> i64 {
        let mut conn = MySqlConnection::connect(&format!("{}/{db}", self.server))
            .await
            .expect("connect to the run's database");
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM sync_items")
            .fetch_one(&mut conn)
            .await
            .expect("count rows");
        let _ = conn.close().await;
        n
    }

    async fn drop_database(&self, db: &str) -> bool {
        let Ok(mut admin) = MySqlConnection::connect(&self.admin_url).await else {
            return false;
        };
        let ok = sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
            .execute(&mut admin)
            .await
            .is_ok();
        let _ = admin.close().await;
        if ok {
            self.scratch.lock().unwrap().databases.retain(|d| d != db);
        }
        ok
    }

    /// UNLINKs every key under `prefix`; returns how many there were.
    async fn unlink_prefix(&self, prefix: &str) -> redis::RedisResult<usize> {
        let mut conn = self.redis.clone();
        let pattern = format!("{prefix}*");
        let (mut cursor, mut removed) = (0u64, 0usize);
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                removed += redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<usize>(&mut conn)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        self.scratch
            .lock()
            .unwrap()
            .prefixes
            .retain(|p| p != prefix);
        Ok(removed)
    }

    /// Deletes topics (best effort: the broker may not support it).
    async fn delete_topics(&self, topics: &[String]) {
        if let Ok(admin) = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create::<AdminClient<DefaultClientContext>>()
        {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                admin.delete_topics(&names, &options),
            )
            .await;
        }
        self.scratch
            .lock()
            .unwrap()
            .topics
            .retain(|t| !topics.contains(t));
    }

    /// Removes everything still listed in the scratch.
    async fn cleanup(&self) {
        let (databases, prefixes, topics) = {
            let s = self.scratch.lock().unwrap();
            (s.databases.clone(), s.prefixes.clone(), s.topics.clone())
        };
        for db in databases {
            if !self.drop_database(&db).await {
                eprintln!("could not drop bench database {db}");
            }
        }
        for prefix in prefixes {
            if let Err(e) = self.unlink_prefix(&prefix).await {
                eprintln!("could not remove Redis keys {prefix}*: {e}");
            }
        }
        if !topics.is_empty() {
            self.delete_topics(&topics).await;
        }
    }

    /// A pipeline file for `sync-engine run` / `verify`.
    fn pipeline(&self, label: &str, engine: &str, kafka: &str) -> PathBuf {
        let file = self.dir.path().join(format!("{label}.toml"));
        let text = format!(
            "{engine}redis_url = \"{}\"\nl3_filter = false\n\n[kafka]\nbrokers = \"{}\"\n{kafka}",
            self.redis_url, self.brokers
        );
        std::fs::write(&file, text).expect("write the pipeline file");
        file
    }
}

/// A `sync-engine` process; killed when dropped (a panicking bench leaves none behind).
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(env: &Env, label: &str, args: &[&str], pipeline: &Path) -> Process {
        let log = env.dir.path().join(format!("{label}.log"));
        let out = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(SIDECAR)
            .args(args)
            .arg("--pipeline")
            .arg(pipeline)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("spawn sync-engine");
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the exit (`deadline` at most); returns whether it exited successfully.
    fn wait(&mut self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            assert!(
                Instant::now() < end,
                "sync-engine did not exit; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM (the sidecar drains, confirms and commits), then waits for the exit.
    fn stop(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait(Duration::from_secs(60))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. sidecar throughput, merkle on vs off

/// Produces N records to `topic`, delivery awaited.
async fn produce(brokers: &str, topic: &str, n: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut deliveries = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let (id, value) = (format!("item.{i:08}"), payload(i));
        let mut record = FutureRecord::to(topic).key(id.as_str()).payload(&value);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break deliveries.push(delivery),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    // a full local queue: let librdkafka drain it
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => panic!("enqueue failed: {e}"),
            }
        }
    }
    for delivery in deliveries {
        delivery
            .await
            .expect("delivery canceled")
            .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
    }
}

/// The parts of an output-topic event the bench needs.
#[derive(Deserialize)]
struct OutputEvent {
    #[serde(rename = "type")]
    kind: String,
    partition: i32,
    #[serde(default)]
    items: Vec<ConfirmedOffset>,
}

#[derive(Deserialize)]
struct ConfirmedOffset {
    offset: i64,
}

struct ThroughputRun {
    merkle: bool,
    n: usize,
    /// Spawn → first confirmation, and the items it listed.
    to_first: Duration,
    first_items: usize,
    /// Spawn → all N confirmed.
    total: Duration,
    cpu: CpuWindow,
}

impl ThroughputRun {
    fn end_to_end(&self) -> f64 {
        self.n as f64 / self.total.as_secs_f64()
    }

    fn steady_items(&self) -> usize {
        self.n - self.first_items
    }

    fn steady(&self) -> f64 {
        self.steady_items() as f64 / (self.total - self.to_first).as_secs_f64()
    }

    /// CPU µs per item in the steady window.
    fn cpu_us(&self, cores: f64) -> f64 {
        cores * (self.total - self.to_first).as_secs_f64() * 1e6 / self.steady_items() as f64
    }
}

async fn throughput_run(
    env: &Env,
    input: &str,
    run: usize,
    merkle: bool,
    n: usize,
) -> ThroughputRun {
    let label = format!("{}{run}", if merkle { "on" } else { "off" });
    let (output, dlq) = (
        env.topic(&format!("{label}.out")),
        env.topic(&format!("{label}.dlq")),
    );
    env.create_topics(&[output.clone(), dlq.clone()]).await;
    let db = env.create_database(&label).await;
    let prefix = env.prefix(&label);
    let pipeline = env.pipeline(
        &label,
        &format!(
            "sql_url = \"{}/{db}\"\nredis_prefix = \"{prefix}\"\nmerkle = {merkle}\n\
             batch_flush_ms = 100\nbatch_flush_count = 1000\nbatch_flush_bytes = 1048576\n",
            env.server
        ),
        &format!(
            "group_id = \"{output}.group\"\ninput_topic = \"{input}\"\noutput_topic = \"{output}\"\n\
             dlq_topic = \"{dlq}\"\n\n[kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\
             \"heartbeat.interval.ms\" = \"500\"\n\n[kafka.producer]\n\"linger.ms\" = \"5\"\n"
        ),
    );

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", format!("{output}.reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&output, p, Offset::Beginning)
            .expect("partition");
    }
    reader.assign(&tpl).expect("assign");

    let start = Instant::now();
    let mut sidecar = Process::spawn(env, &label, &["run"], &pipeline);
    let [mariadbd, redis, tansu, bench] = env.services;
    let pids = [Some(sidecar.child.id()), mariadbd, redis, tansu, bench];
    let mut confirmed: HashSet<(i32, i64)> = HashSet::with_capacity(n);
    let mut first: Option<(Duration, usize, CpuSample)> = None;
    let deadline = start + Duration::from_secs(300);
    while confirmed.len() < n {
        while let Some(message) = reader.poll(Duration::ZERO) {
            let Ok(message) = message else { continue }; // librdkafka retries
            let event: OutputEvent = serde_json::from_slice(message.payload().unwrap_or_default())
                .expect("an output event");
            if event.kind == "checkpoint" {
                continue;
            }
            if first.is_none() {
                first = Some((start.elapsed(), event.items.len(), cpu_sample(&pids)));
            }
            confirmed.extend(event.items.iter().map(|i| (event.partition, i.offset)));
        }
        if let Ok(Some(status)) = sidecar.child.try_wait() {
            panic!("the sidecar exited ({status}); its log:\n{}", sidecar.log());
        }
        assert!(
            Instant::now() < deadline,
            "{label}: {} of {n} confirmed after 300 s; sidecar log:\n{}",
            confirmed.len(),
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (total, end) = (start.elapsed(), cpu_sample(&pids));
    let (to_first, first_items, begin) = first.expect("a first confirmation");
    if !sidecar.stop() {
        println!(
            "      WARNING {label}: unclean exit; log:\n{}",
            sidecar.log()
        );
    }
    drop(reader);

    let rows = env.rows(&db).await;
    let keys = env.unlink_prefix(&prefix).await.unwrap_or(0);
    env.drop_database(&db).await;
    env.delete_topics(&[output, dlq]).await;
    if rows != n as i64 || keys < n {
        println!("      WARNING {label}: {rows} rows in MariaDB, {keys} Redis keys (expected {n})");
    }
    let run = ThroughputRun {
        merkle,
        n,
        to_first,
        first_items,
        total,
        cpu: cpu_window(&begin, &end, env.tck, env.cores),
    };
    println!(
        "  merkle = {:<5}: {:>6.0} items/s steady, {:>6.0} end-to-end (first confirmation at {:.2} s, \
         all at {:.2} s) | CPU µs/item: sidecar {:.0}, mariadbd {:.0}; other load {:.2} cores",
        merkle,
        run.steady(),
        run.end_to_end(),
        to_first.as_secs_f64(),
        total.as_secs_f64(),
        run.cpu_us(run.cpu.sidecar),
        run.cpu_us(run.cpu.mariadbd),
        run.cpu.other
    );
    run
}

// ---------------------------------------------------------------------------------------
// 2. verify

struct VerifyRun {
    label: &'static str,
    rows: u64,
    secs: f64,
}

impl VerifyRun {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.secs
    }
}

struct VerifyBench {
    load: Duration,
    runs: Vec<VerifyRun>,
    /// `sync-engine verify`: wall time of the process, and the time it printed for verify.
    process: (f64, Option<f64>),
}

async fn engine(config: SyncEngineConfig) -> SyncEngine {
    let (_tx, rx) = watch::channel(config.clone());
    let mut engine = SyncEngine::new(config, rx);
    engine.start().await.expect("engine starts");
    engine
}

async fn timed_verify(engine: &SyncEngine, label: &'static str, expected: usize) -> VerifyRun {
    let start = Instant::now();
    let report = engine.verify(&|_| {}).await.expect("verify");
    let secs = start.elapsed().as_secs_f64();
    if report.rows != expected as u64 || !report.is_ok() {
        println!(
            "      WARNING verify: {} rows (expected {expected}), ok = {}, {} divergences",
            report.rows,
            report.is_ok(),
            report.divergences.len()
        );
    }
    let run = VerifyRun {
        label,
        rows: report.rows,
        secs,
    };
    println!(
        "  engine.verify {label}: {} rows in {:.2} s = {:.0} rows/s (Redis keys scanned: {})",
        run.rows,
        secs,
        run.rate(),
        report
            .redis_keys_scanned
            .map_or("-".to_string(), |k| k.to_string())
    );
    run
}

async fn verify_bench(env: &Env, rows: usize) -> VerifyBench {
    let db = env.create_database("verify").await;
    let prefix = env.prefix("verify");
    let config = SyncEngineConfig {
        sql_url: Some(format!("{}/{db}", env.server)),
        redis_url: Some(env.redis_url.clone()),
        redis_prefix: Some(prefix.clone()),
        batch_flush_count: 5000,
        batch_flush_bytes: 8 * 1_048_576,
        l3_filter: false,
        ..Default::default()
    };
    let with_redis = engine(config.clone()).await;
    let start = Instant::now();
    for i in 0..rows as u64 {
        let item = SyncItem::new(format!("item.{i:08}"), payload(i));
        with_redis.submit(item).await.expect("submit");
    }
    with_redis.flush().await.expect("flush");
    let load = start.elapsed();
    println!(
        "  loaded {rows} rows (MariaDB + Redis, batch_flush_count = 5000) in {:.1} s = {:.0} rows/s",
        load.as_secs_f64(),
        rows as f64 / load.as_secs_f64()
    );

    let mut runs = vec![timed_verify(&with_redis, "with Redis", rows).await];
    let sql_only = engine(SyncEngineConfig {
        redis_url: None,
        ..config
    })
    .await;
    runs.push(timed_verify(&sql_only, "SQL only  ", rows).await);
    sql_only.shutdown().await;
    runs.push(timed_verify(&with_redis, "with Redis", rows).await);
    with_redis.shutdown().await;

    let pipeline = env.pipeline(
        "verify",
        &format!(
            "sql_url = \"{}/{db}\"\nredis_prefix = \"{prefix}\"\n",
            env.server
        ),
        "",
    );
    let start = Instant::now();
    let mut process = Process::spawn(env, "verify", &["verify"], &pipeline);
    let ok = process.wait(Duration::from_secs(1800));
    let wall = start.elapsed().as_secs_f64();
    let log = process.log();
    // "verified N rows in X s (Y rows/s)"
    let own: Option<f64> = log.lines().find_map(|l| {
        let rest = l.split_once("verified ")?.1.split_once(" rows in ")?.1;
        rest.split(' ').next()?.parse().ok()
    });
    if !ok {
        println!("      WARNING `sync-engine verify` failed; its output:\n{log}");
    }
    println!(
        "  `sync-engine verify`: exit {} after {wall:.2} s = {:.0} rows/s (its own verify time: {})",
        if ok { "0" } else { "non-zero" },
        rows as f64 / wall,
        own.map_or("?".to_string(), |s| format!("{s:.2} s"))
    );

    env.unlink_prefix(&prefix).await.expect("remove Redis keys");
    env.drop_database(&db).await;
    VerifyBench {
        load,
        runs,
        process: (wall, own),
    }
}

// ---------------------------------------------------------------------------------------
// the bench

async fn bench(env: &Env, sizes: Sizes) {
    let load_before = loadavg();
    let started = Instant::now();
    let n = sizes.n;
    println!(
        "merkle bench: {} pairs of sidecar runs on N = {n} records of {ITEM_BYTES} B, {PARTITIONS} \
         partitions; verify on {} rows; binary {SIDECAR}",
        sizes.pairs, sizes.verify_rows
    );

    // 1. throughput, interleaved on/off on one pre-produced input topic
    let input = env.topic("in");
    env.create_topics(std::slice::from_ref(&input)).await;
    let t = Instant::now();
    produce(&env.brokers, &input, n).await;
    println!(
        "  produced {n} records in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut runs = Vec::new();
    for pair in 0..sizes.pairs {
        for merkle in [true, false] {
            runs.push(throughput_run(env, &input, pair, merkle, n).await);
        }
    }
    env.delete_topics(&[input]).await;

    // 2. verify
    let verify = verify_bench(env, sizes.verify_rows).await;

    // summary
    let of = |merkle: bool| -> Vec<&ThroughputRun> {
        runs.iter().filter(|r| r.merkle == merkle).collect()
    };
    let steady = |merkle: bool| -> Vec<f64> { of(merkle).iter().map(|r| r.steady()).collect() };
    let pair_ratios: Vec<f64> = runs
        .chunks(2)
        .map(|pair| pair[1].steady() / pair[0].steady())
        .collect();
    let ratio = median(&steady(false)) / median(&steady(true));
    println!();
    println!("======================== merkle bench summary ========================");
    println!(
        "1. sidecar (`sync-engine run`, MariaDB + Redis, batch_flush_count 1000), N = {n} × {ITEM_BYTES} B, \
         {PARTITIONS} partitions, {} interleaved on/off pairs",
        sizes.pairs
    );
    println!(
        "   {:<15} {:>14} {:>14} {:>13} {:>14}   steady runs",
        "", "steady items/s", "end-to-end/s", "sidecar µs/it", "mariadbd µs/it"
    );
    for merkle in [true, false] {
        let runs = of(merkle);
        let m = |f: &dyn Fn(&ThroughputRun) -> f64| {
            median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
        };
        println!(
            "   merkle = {:<6} {:>14.0} {:>14.0} {:>13.0} {:>14.0}   {}",
            merkle,
            median(&steady(merkle)),
            m(&ThroughputRun::end_to_end),
            m(&|r| r.cpu_us(r.cpu.sidecar)),
            m(&|r| r.cpu_us(r.cpu.mariadbd)),
            list(&steady(merkle), 0)
        );
    }
    println!(
        "   off/on = {ratio:.3} (medians); per pair: {} → median {:.3}",
        list(&pair_ratios, 3),
        median(&pair_ratios)
    );
    println!(
        "   Merkle maintenance costs {:.1} % of steady throughput (1 − on/off, per-pair median; \
         {:.1} % from the medians)",
        (1.0 - 1.0 / median(&pair_ratios)) * 100.0,
        (1.0 - 1.0 / ratio) * 100.0
    );
    let other: Vec<f64> = runs.iter().map(|r| r.cpu.other).collect();
    println!(
        "   other load during the steady windows: {} cores (of {})",
        list(&other, 2),
        env.cores
    );
    println!(
        "2. verify on {} rows (partition `local`, 1 KiB JSON, Redis holds every row)",
        sizes.verify_rows
    );
    println!(
        "   load through the engine (batch_flush_count 5000): {:.1} s = {:.0} rows/s",
        verify.load.as_secs_f64(),
        sizes.verify_rows as f64 / verify.load.as_secs_f64()
    );
    for r in &verify.runs {
        println!(
            "   engine.verify {}: {:>7.2} s = {:>8.0} rows/s",
            r.label,
            r.secs,
            r.rate()
        );
    }
    let (wall, own) = verify.process;
    println!(
        "   `sync-engine verify` process: {wall:>7.2} s = {:>8.0} rows/s wall{}",
        sizes.verify_rows as f64 / wall,
        own.map_or(String::new(), |s| format!(
            " ({s:.2} s = {:.0} rows/s in verify itself)",
            sizes.verify_rows as f64 / s
        ))
    );
    println!(
        "machine: {} cores; load average before {load_before}, after {}; bench wall time {:.0} s",
        env.cores,
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    println!("=======================================================================");
}

/// Whether a TCP address answers.
fn reachable(address: &str) -> bool {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// `host:port` of a `scheme://[user@]host:port[/…]` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// The port of `host:port` or `scheme://host:port[/…]`.
fn port(address: &str) -> String {
    host_port(address)
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--list") {
        return;
    }
    let benchmarking = has("--bench") && !has("--test");
    let sizes = if benchmarking { FULL } else { SMOKE };
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let (brokers, mysql_url, redis_url) = (
        var(KAFKA_ENV, KAFKA_DEFAULT),
        var(MYSQL_ENV, MYSQL_DEFAULT),
        var(REDIS_ENV, REDIS_DEFAULT),
    );
    let kafka = brokers.split(',').next().unwrap_or_default().to_string();
    for (name, address) in [
        ("Kafka", kafka.clone()),
        ("MariaDB", host_port(&mysql_url)),
        ("Redis", host_port(&redis_url)),
    ] {
        if !reachable(&address) {
            println!("note: {name} at {address} cannot be reached: merkle bench skipped");
            return;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (server, _) = mysql_url
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("://"))
        .unwrap_or_else(|| panic!("{MYSQL_ENV} must look like mysql://user@host:port/db"));
    let redis = runtime
        .block_on(async {
            redis::Client::open(redis_url.as_str())?
                .get_multiplexed_async_connection()
                .await
        })
        .expect("connect to Redis");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let env = Env {
        services: [
            find_pid("mariadbd", ""),
            find_pid("redis-server", &format!(":{}", port(&redis_url))),
            find_pid("tansu", &port(&kafka)),
            Some(std::process::id()),
        ],
        brokers,
        server: server.to_string(),
        admin_url: mysql_url.clone(),
        redis_url,
        redis,
        tag: format!("mkbench{}x{nanos}", std::process::id()),
        dir: tempfile::tempdir().expect("tempdir"),
        scratch: Mutex::default(),
        tck: clock_ticks(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
    };
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(bench(&env, sizes))));
    runtime.block_on(env.cleanup());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    if !benchmarking {
        println!("(smoke run with small sizes: run `cargo bench --bench merkle` for numbers)");
    }
}
