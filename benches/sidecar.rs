//! Benchmark of the sidecar as a real process (`sync-engine run`), writing MariaDB + Redis
//! from a Kafka-protocol broker (`harness = false`, plain `Instant` timing and medians).
//!
//! The process is `env!("CARGO_BIN_EXE_sync-engine")`: under `cargo bench` cargo builds it
//! with the `bench` profile (which inherits `release`), so it is an optimized binary. Items
//! are 1 KiB JSON customer records (the generator of `benches/engine.rs`), distinct ids,
//! no headers (route redis+sql, state `default`). The pipeline mirrors
//! `pipelines/default.toml` (`batch_flush_ms = 100`, `batch_flush_count = 1000`,
//! `batch_flush_bytes = 1 MiB`, `l3_filter = false`, producer `linger.ms = 5`), with
//! `session.timeout.ms = 6000` (tansu makes a joining member wait about half of it).
//! Every run has fresh topics (`in`/`out`/`dlq`, 4 partitions), a fresh group, a fresh
//! MariaDB database and a fresh Redis prefix; all of them are removed afterwards (also when
//! the bench panics).
//!
//! 1. **Throughput.** N records are produced to the input topic first (delivery awaited).
//!    Then the clock starts, the sidecar is spawned, and a reader of the output topic counts
//!    the distinct (partition, offset) pairs the confirmations list, until all N are
//!    confirmed. Reported: N / (spawn → all confirmed); the time to the first confirmation
//!    (process start + engine start + consumer-group join + first checkpoint), split at the
//!    `consuming` log line (engine started, consumer subscribed); and the steady rate
//!    (N − items of the first confirmation) / (first confirmation → all confirmed).
//!    Median of `runs`. The rows in MariaDB and the keys in Redis are counted afterwards.
//!    Per run the bench also reads the N input records back with a plain consumer: the
//!    broker's read ceiling.
//! 2. **Latency.** A fresh sidecar; 100 warm-up records are produced and confirmed (so the
//!    group has joined); then records are produced at a steady rate (half the median
//!    throughput) for `latency_secs`. Each send is stamped with `Instant::now()` when it is
//!    handed to the producer, and keyed by the (partition, offset) of its delivery report;
//!    the reader stamps the arrival of each confirmation. Latency = confirmation arrival −
//!    send; p50/p90/p99/max over every record of the steady phase. The confirmation
//!    reader uses `fetch.wait.max.ms = 20`. Runs with `batch_flush_ms = 100`, `20`, and `20`
//!    with the sidecar's consumer at `fetch.wait.max.ms = 10` (librdkafka's default is 500).
//! 3. **Raw ceiling.** The same rows written by the bench itself: per 1000 rows, one
//!    MariaDB transaction of two 500-row `INSERT`s of the `sync_items` columns (table from
//!    `schemas/sql/mysql/*.sql`, in a database of its own), then one Redis pipeline of 1000
//!    `HSET key payload … hash … state … version … type json`. Items (and their SHA-256) are
//!    built before the clock starts. Median of `runs`, interleaved with the sidecar runs;
//!    the SQL and Redis shares are reported too. Also the engine alone, in this process (no
//!    Kafka), with the sidecar's settings: N submits and `flush()` every 1000 (the sidecar's
//!    checkpoint pattern), N submits and one `flush()` (writes overlap submits), and the
//!    first pattern without Redis (the SQL share of the engine's write path).
//! 4. **Where the time goes.** During each steady window, CPU time (utime + stime from
//!    `/proc`) of the sidecar (and its busiest threads), tansu, mariadbd, redis-server and
//!    the bench process, and the machine's busy and iowait share from `/proc/stat`. Two more
//!    throughput runs vary the checkpoint size: `batch_flush_count = 250` and `5000` (with
//!    `batch_flush_bytes = 8 MiB`); a least-squares fit of the time per checkpoint cycle
//!    (`batch_flush_count` / steady rate) splits it into a fixed and a per-item part.
//!
//! Services (defaults are this machine's): `SYNC_ENGINE_TEST_KAFKA_BROKERS`
//! (`127.0.0.1:19092`), `SYNC_ENGINE_TEST_MYSQL_URL` (`mysql://root@127.0.0.1:3306/test`),
//! `SYNC_ENGINE_TEST_REDIS_URL` (`redis://127.0.0.1:6379`). One that cannot be reached skips
//! the bench with a note. Under `cargo test --benches` (no `--bench` argument) everything runs
//! once with small sizes as a smoke test.

#[path = "common/payload.rs"]
mod payload;
use payload::{payload, ITEM_BYTES};

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
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

/// Payload size of every item.
const PARTITIONS: i32 = 4;
/// Records produced and confirmed before the latency measurement starts.
const WARMUP_RECORDS: usize = 100;
/// The raw ceiling's statement, transaction and pipeline sizes.
const RAW_ROWS_PER_STATEMENT: usize = 500;
const RAW_ROWS_PER_BATCH: usize = 1000;
const MYSQL_DDL: [&str; 2] = [
    include_str!("../schemas/sql/mysql/0001_sync_items.sql"),
    include_str!("../schemas/sql/mysql/0002_redis_route.sql"),
];

/// Sizes of one bench run: full under `cargo bench`, tiny as a smoke test.
#[derive(Clone, Copy)]
struct Sizes {
    n: usize,
    runs: usize,
    latency_secs: u64,
    variants: bool,
}

const FULL: Sizes = Sizes {
    n: 50_000,
    runs: 3,
    latency_secs: 15,
    variants: true,
};

const SMOKE: Sizes = Sizes {
    n: 2000,
    runs: 1,
    latency_secs: 3,
    variants: false,
};

/// The sidecar's checkpoint triggers, and its consumer's `fetch.wait.max.ms` (librdkafka's
/// default, 500 ms, when `None`).
#[derive(Clone, Copy, Debug)]
struct Tuning {
    ms: u64,
    count: usize,
    bytes: usize,
    fetch_wait_ms: Option<u64>,
}

const DEFAULT_TUNING: Tuning = Tuning {
    ms: 100,
    count: 1000,
    bytes: 1_048_576,
    fetch_wait_ms: None,
};

// ---------------------------------------------------------------------------------------
// payloads

// ---------------------------------------------------------------------------------------
// statistics

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn list(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime (ticks) of a process or thread, from its `stat` file.
fn stat_ticks(stat_path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // after the command name: state is field 3, utime field 14, stime field 15
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// (busy, iowait, total) ticks of the whole machine.
fn machine_ticks() -> (u64, u64, u64) {
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
    (busy, at(4), busy + at(3) + at(4))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The first process whose `comm` is `comm` and whose command line contains `needle`.
fn find_pid(comm: &str, needle: &str) -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found.sort();
    found.first().copied()
}

/// The processes whose CPU time is reported (the sidecar is added per run).
#[derive(Clone)]
struct Watched {
    procs: Vec<(&'static str, u32)>,
}

impl Watched {
    fn find(brokers: &str, redis_url: &str) -> Watched {
        let kafka_port = brokers.rsplit(':').next().unwrap_or("19092").to_string();
        let redis_port = redis_url
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .unwrap_or("6379")
            .split('/')
            .next()
            .unwrap_or("6379")
            .to_string();
        let mut procs = Vec::new();
        for (label, comm, needle) in [
            ("tansu", "tansu", kafka_port),
            ("mariadbd", "mariadbd", String::new()),
            ("redis", "redis-server", format!(":{redis_port}")),
        ] {
            match find_pid(comm, &needle) {
                Some(pid) => procs.push((label, pid)),
                None => eprintln!("note: no {comm} process found; its CPU is not reported"),
            }
        }
        procs.push(("bench", std::process::id()));
        Watched { procs }
    }
}

struct CpuSnapshot {
    at: Instant,
    procs: Vec<(&'static str, u64)>,
    /// The sidecar's threads: (tid, name, ticks).
    threads: Vec<(u32, String, u64)>,
    machine: (u64, u64, u64),
}

fn snapshot(watched: &Watched, sidecar: u32) -> CpuSnapshot {
    let mut procs: Vec<(&'static str, u64)> = vec![(
        "sidecar",
        stat_ticks(&PathBuf::from(format!("/proc/{sidecar}/stat"))).unwrap_or(0),
    )];
    for (label, pid) in &watched.procs {
        let ticks = stat_ticks(&PathBuf::from(format!("/proc/{pid}/stat"))).unwrap_or(0);
        procs.push((label, ticks));
    }
    let mut threads = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{sidecar}/task")) {
        for entry in dir.flatten() {
            let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if let Some(ticks) = stat_ticks(&entry.path().join("stat")) {
                threads.push((tid, name.trim().to_string(), ticks));
            }
        }
    }
    CpuSnapshot {
        at: Instant::now(),
        procs,
        threads,
        machine: machine_ticks(),
    }
}

/// CPU use over a window, in % of one core (machine: % of all cores).
#[derive(Clone, Debug, Default)]
struct CpuSplit {
    wall: f64,
    procs: Vec<(&'static str, f64)>,
    /// The sidecar's busiest threads.
    threads: Vec<(String, f64)>,
    machine_busy: f64,
    machine_iowait: f64,
    /// Busy CPU not accounted to any watched process, in % of one core.
    other: f64,
}

fn cpu_split(a: &CpuSnapshot, b: &CpuSnapshot, tck: f64) -> CpuSplit {
    let wall = (b.at - a.at).as_secs_f64().max(1e-9);
    let pct = |ticks: u64| ticks as f64 / tck / wall * 100.0;
    let procs: Vec<(&'static str, f64)> = b
        .procs
        .iter()
        .zip(&a.procs)
        .map(|((label, after), (_, before))| (*label, pct(after.saturating_sub(*before))))
        .collect();
    let before: HashMap<u32, u64> = a.threads.iter().map(|(t, _, k)| (*t, *k)).collect();
    let mut threads: Vec<(String, f64)> = b
        .threads
        .iter()
        .map(|(tid, name, ticks)| {
            let d = ticks.saturating_sub(before.get(tid).copied().unwrap_or(0));
            (format!("{name}/{tid}"), pct(d))
        })
        .collect();
    threads.sort_by(|x, y| y.1.total_cmp(&x.1));
    threads.truncate(4);
    let (busy, iowait, total) = (
        b.machine.0.saturating_sub(a.machine.0),
        b.machine.1.saturating_sub(a.machine.1),
        b.machine.2.saturating_sub(a.machine.2).max(1),
    );
    let machine_busy = busy as f64 / total as f64 * 100.0;
    let machine_iowait = iowait as f64 / total as f64 * 100.0;
    let accounted: f64 = procs.iter().map(|(_, p)| p).sum();
    let other = (pct(busy) - accounted).max(0.0);
    CpuSplit {
        wall,
        procs,
        threads,
        machine_busy,
        machine_iowait,
        other,
    }
}

impl CpuSplit {
    fn line(&self) -> String {
        let procs: Vec<String> = self
            .procs
            .iter()
            .map(|(l, p)| format!("{l} {p:.0}%"))
            .collect();
        format!(
            "{:.1} s window: {}, other {:.0}% (of one core) | machine {:.0}% of {} cores busy, iowait {:.0}%",
            self.wall,
            procs.join(", "),
            self.other,
            self.machine_busy,
            cores(),
            self.machine_iowait
        )
    }

    fn threads_line(&self) -> String {
        self.threads
            .iter()
            .map(|(n, p)| format!("{n} {p:.0}%"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A note when processes other than the watched ones used more than a quarter of a core
    /// (other sessions' builds or tests): the window's numbers are not clean.
    fn disturbed(&self) -> String {
        if self.other > 25.0 {
            format!(" [DISTURBED: other processes {:.0}% of a core]", self.other)
        } else {
            String::new()
        }
    }

    fn get(&self, label: &str) -> f64 {
        self.procs
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0.0, |(_, p)| *p)
    }
}

// ---------------------------------------------------------------------------------------
// scratch resources: databases, Redis prefixes, topics

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
    watched: Watched,
    tck: f64,
}

impl Env {
    fn topic(&self, label: &str, kind: &str) -> String {
        format!("{}.{label}.{kind}", self.tag)
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
        let db = format!("{}_{label}", self.tag.replace(['.', '-'], "_"));
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

    /// Drops a database; returns whether it was dropped.
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
        let Ok(admin) = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create::<AdminClient<DefaultClientContext>>()
        else {
            return;
        };
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            admin.delete_topics(&names, &options),
        )
        .await;
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
}

// ---------------------------------------------------------------------------------------
// one pipeline: topics, database, prefix, sidecar process

struct Pipe {
    label: String,
    db: String,
    prefix: String,
}

impl Pipe {
    async fn new(env: &Env, label: &str) -> Pipe {
        let topics: Vec<String> = ["in", "out", "dlq"]
            .iter()
            .map(|k| env.topic(label, k))
            .collect();
        env.create_topics(&topics).await;
        Pipe {
            label: label.to_string(),
            db: env.create_database(label).await,
            prefix: env.prefix(label),
        }
    }

    fn topic(&self, env: &Env, kind: &str) -> String {
        env.topic(&self.label, kind)
    }

    fn start(&self, env: &Env, flush: Tuning) -> Sidecar {
        let file = env.dir.path().join(format!("{}.toml", self.label));
        std::fs::write(
            &file,
            format!(
                r#"sql_url = "{server}/{db}"
redis_url = "{redis}"
redis_prefix = "{prefix}"
batch_flush_ms = {ms}
batch_flush_count = {count}
batch_flush_bytes = {bytes}
l3_filter = false

[kafka]
brokers = "{brokers}"
group_id = "{input}.group"
input_topic = "{input}"
output_topic = "{output}"
dlq_topic = "{dlq}"

[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
{fetch_wait}
[kafka.producer]
"linger.ms" = "5"
"#,
                server = env.server,
                db = self.db,
                redis = env.redis_url,
                prefix = self.prefix,
                ms = flush.ms,
                count = flush.count,
                bytes = flush.bytes,
                brokers = env.brokers,
                input = self.topic(env, "in"),
                output = self.topic(env, "out"),
                dlq = self.topic(env, "dlq"),
                fetch_wait = flush.fetch_wait_ms.map_or(String::new(), |ms| format!(
                    "\"fetch.wait.max.ms\" = \"{ms}\"\n"
                )),
            ),
        )
        .expect("write the pipeline file");
        let log = env.dir.path().join(format!("{}.log", self.label));
        let out = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(SIDECAR)
            .args(["run", "--pipeline"])
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("spawn the sidecar");
        Sidecar { child, log }
    }

    /// Rows in the pipeline's `sync_items`.
    async fn rows(&self, env: &Env) -> i64 {
        let mut conn = MySqlConnection::connect(&format!("{}/{}", env.server, self.db))
            .await
            .expect("connect to the pipeline's database");
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM sync_items")
            .fetch_one(&mut conn)
            .await
            .expect("count rows");
        let _ = conn.close().await;
        n
    }

    /// Checks rows and keys, removes the database, keys and topics; returns (rows, keys).
    async fn finish(self, env: &Env) -> (i64, usize) {
        let rows = self.rows(env).await;
        let keys = env.unlink_prefix(&self.prefix).await.unwrap_or(0);
        env.drop_database(&self.db).await;
        let topics: Vec<String> = ["in", "out", "dlq"]
            .iter()
            .map(|k| self.topic(env, k))
            .collect();
        env.delete_topics(&topics).await;
        (rows, keys)
    }
}

/// One `sync-engine run` process; killed when dropped (a panicking bench leaves none behind).
struct Sidecar {
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the sidecar exited ({status}); its log:\n{}", self.log());
        }
    }

    /// SIGTERM (drain, confirm, commit), then waits for the exit.
    fn stop(mut self) -> (ExitStatus, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status, self.log());
            }
            assert!(
                Instant::now() < end,
                "the sidecar did not exit after SIGTERM; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
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

// ---------------------------------------------------------------------------------------
// Kafka: producing, reading confirmations

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces `(id, payload)` records to `topic`; returns the (partition, offset) of each.
async fn produce_all(producer: &FutureProducer, topic: &str, records: &[(String, Vec<u8>)]) {
    let mut deliveries = Vec::with_capacity(records.len());
    for (id, value) in records {
        let mut record = FutureRecord::to(topic)
            .key(id.as_str())
            .payload(value.as_slice());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((e, back)) => {
                    // a full local queue: let librdkafka drain it
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "enqueue failed: {e}"
                    );
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
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

/// The parts of a confirmation event the bench needs.
#[derive(Deserialize)]
struct ConfirmationEvent {
    partition: i32,
    items: Vec<ConfirmedOffset>,
}

#[derive(Deserialize)]
struct ConfirmedOffset {
    offset: i64,
}

#[derive(Default)]
struct Confirmed {
    /// Arrival of the first confirmation and how many items it listed.
    first: Option<(Instant, usize)>,
    /// First arrival of a confirmation for each (partition, offset).
    arrivals: HashMap<(i32, i64), Instant>,
    events: usize,
    repeated: usize,
}

/// A reader of the whole output topic on a thread of its own.
struct ConfirmationReader {
    shared: Arc<Mutex<Confirmed>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConfirmationReader {
    fn start(env: &Env, topic: &str) -> ConfirmationReader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &env.brokers)
            .set("group.id", format!("{topic}.reader"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "20")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let shared = Arc::new(Mutex::new(Confirmed::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (state, flag) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let Some(message) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let now = Instant::now();
                let Ok(message) = message else {
                    continue; // librdkafka retries
                };
                let event: ConfirmationEvent =
                    serde_json::from_slice(message.payload().unwrap_or_default())
                        .expect("a confirmation event");
                let mut s = state.lock().unwrap();
                s.events += 1;
                s.first.get_or_insert((now, event.items.len()));
                for item in &event.items {
                    let mut new = false;
                    s.arrivals
                        .entry((event.partition, item.offset))
                        .or_insert_with(|| {
                            new = true;
                            now
                        });
                    if !new {
                        s.repeated += 1;
                    }
                }
            }
        });
        ConfirmationReader {
            shared,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.shared.lock().unwrap().arrivals.len()
    }

    fn first(&self) -> Option<(Instant, usize)> {
        self.shared.lock().unwrap().first
    }
}

impl Drop for ConfirmationReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long a plain consumer takes to read `n` records of `topic` from the start.
fn read_ceiling(env: &Env, topic: &str, n: usize) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", format!("{topic}.ceiling"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let (start, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(60));
    let mut read = 0;
    while read < n {
        assert!(Instant::now() < deadline, "read {read} of {n} in 60 s");
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            read += 1;
        }
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------------
// 1. throughput

struct ThroughputRun {
    n: usize,
    flush: Tuning,
    produce: Duration,
    /// Spawn → the `consuming` log line (engine started, consumer subscribed).
    to_consuming: Option<Duration>,
    /// Spawn → the first confirmation.
    to_first: Duration,
    first_items: usize,
    /// Spawn → all N confirmed.
    total: Duration,
    events: usize,
    repeated: usize,
    read_ceiling: Duration,
    cpu: CpuSplit,
    rows: i64,
    keys: usize,
    exit: String,
}

impl ThroughputRun {
    fn rate(&self) -> f64 {
        self.n as f64 / self.total.as_secs_f64()
    }

    fn steady(&self) -> f64 {
        (self.n - self.first_items) as f64 / (self.total - self.to_first).as_secs_f64()
    }

    fn print(&self, name: &str) {
        println!(
            "  {name}: {:.0} items/s end-to-end, {:.0} items/s steady | first confirmation at {:.2} s \
             (consuming at {}), all {} at {:.2} s, {} confirmation events ({} items repeated) | \
             produce {:.2} s, plain read {:.2} s",
            self.rate(),
            self.steady(),
            self.to_first.as_secs_f64(),
            self.to_consuming
                .map_or("?".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            self.n,
            self.total.as_secs_f64(),
            self.events,
            self.repeated,
            self.produce.as_secs_f64(),
            self.read_ceiling.as_secs_f64(),
        );
        println!(
            "      cpu (steady): {}{}",
            self.cpu.line(),
            self.cpu.disturbed()
        );
        println!("      sidecar threads: {}", self.cpu.threads_line());
        if self.rows != self.n as i64 || self.keys != self.n + 1 {
            println!(
                "      WARNING: {} rows in MariaDB, {} Redis keys (expected {} and {} + 1 state set)",
                self.rows, self.keys, self.n, self.n
            );
        }
        if !self.exit.contains("stopped cleanly") {
            println!("      WARNING: unexpected exit: {}", self.exit);
        }
    }
}

async fn throughput_run(env: &Env, label: &str, n: usize, flush: Tuning) -> ThroughputRun {
    let pipe = Pipe::new(env, label).await;
    let input = pipe.topic(env, "in");
    let records: Vec<(String, Vec<u8>)> = (0..n as u64)
        .map(|i| (format!("item.{i:08}"), payload(i)))
        .collect();
    let producer = producer(&env.brokers);
    let t = Instant::now();
    produce_all(&producer, &input, &records).await;
    let produce = t.elapsed();
    drop(records);

    let reader = ConfirmationReader::start(env, &pipe.topic(env, "out"));
    let start = Instant::now();
    let mut sidecar = pipe.start(env, flush);
    let deadline = start + Duration::from_secs(300);
    let (mut to_consuming, mut cpu_start) = (None, None);
    let (total, cpu_end) = loop {
        if to_consuming.is_none() && sidecar.log().contains("consuming") {
            to_consuming = Some(start.elapsed());
        }
        if cpu_start.is_none() && reader.first().is_some() {
            cpu_start = Some(snapshot(&env.watched, sidecar.pid()));
        }
        if reader.count() >= n {
            break (start.elapsed(), snapshot(&env.watched, sidecar.pid()));
        }
        sidecar.check_alive();
        assert!(
            Instant::now() < deadline,
            "{label}: {} of {n} confirmed after 300 s; sidecar log:\n{}",
            reader.count(),
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (first_at, first_items) = reader.first().expect("a first confirmation");
    let cpu = cpu_split(
        &cpu_start.expect("a snapshot at the first confirmation"),
        &cpu_end,
        env.tck,
    );
    let (status, log) = sidecar.stop();
    let exit = log
        .lines()
        .find(|l| l.contains("stopped cleanly"))
        .map_or_else(|| format!("{status}"), str::to_string);
    let (events, repeated) = {
        let s = reader.shared.lock().unwrap();
        (s.events, s.repeated)
    };
    drop(reader);
    let read_ceiling = read_ceiling(env, &input, n);
    let (rows, keys) = pipe.finish(env).await;
    ThroughputRun {
        n,
        flush,
        produce,
        to_consuming,
        to_first: first_at - start,
        first_items,
        total,
        events,
        repeated,
        read_ceiling,
        cpu,
        rows,
        keys,
        exit,
    }
}

// ---------------------------------------------------------------------------------------
// 2. latency

struct LatencyRun {
    flush: Tuning,
    target_rate: f64,
    sent: usize,
    send_secs: f64,
    matched: usize,
    /// Sorted latencies, ms.
    latencies: Vec<f64>,
    cpu: CpuSplit,
}

impl LatencyRun {
    fn p(&self, p: f64) -> f64 {
        percentile(&self.latencies, p)
    }

    fn name(&self) -> String {
        let mut name = format!("batch_flush_ms = {:>3}", self.flush.ms);
        if let Some(ms) = self.flush.fetch_wait_ms {
            name.push_str(&format!(", sidecar fetch.wait.max.ms = {ms}"));
        }
        name
    }

    fn print(&self) {
        println!(
            "  {}: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms | \
             {} records at {:.0}/s (target {:.0}/s), {} matched",
            self.name(),
            self.p(50.0),
            self.p(90.0),
            self.p(99.0),
            self.latencies.last().copied().unwrap_or(f64::NAN),
            self.sent,
            self.sent as f64 / self.send_secs,
            self.target_rate,
            self.matched,
        );
        println!(
            "      cpu (feed): {}{}",
            self.cpu.line(),
            self.cpu.disturbed()
        );
        println!("      sidecar threads: {}", self.cpu.threads_line());
    }
}

async fn latency_run(env: &Env, label: &str, rate: f64, secs: u64, flush: Tuning) -> LatencyRun {
    let pipe = Pipe::new(env, label).await;
    let input = pipe.topic(env, "in");
    let producer = producer(&env.brokers);
    let reader = ConfirmationReader::start(env, &pipe.topic(env, "out"));
    let mut sidecar = pipe.start(env, flush);

    // warm-up: the group has joined and a checkpoint has gone through
    let warmup: Vec<(String, Vec<u8>)> = (0..WARMUP_RECORDS as u64)
        .map(|i| (format!("warm.{i:08}"), payload(i)))
        .collect();
    produce_all(&producer, &input, &warmup).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while reader.count() < WARMUP_RECORDS {
        sidecar.check_alive();
        assert!(
            Instant::now() < deadline,
            "{label}: warm-up not confirmed; sidecar log:\n{}",
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // steady feed: `rate` records/s, each stamped when it is handed to the producer
    let pool: Vec<Vec<u8>> = (0..1024).map(payload).collect();
    let sends: Arc<Mutex<HashMap<(i32, i64), Instant>>> = Arc::default();
    let failed = Arc::new(Mutex::new(0usize));
    let cpu_start = snapshot(&env.watched, sidecar.pid());
    let start = Instant::now();
    let duration = Duration::from_secs(secs);
    let mut sent = 0usize;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as usize;
        while sent < due {
            let id = format!("lat.{sent:08}");
            let record = FutureRecord::to(&input)
                .key(id.as_str())
                .payload(pool[sent % pool.len()].as_slice());
            let stamp = Instant::now();
            match producer.send_result(record) {
                Ok(delivery) => {
                    let (sends, failed) = (sends.clone(), failed.clone());
                    tokio::spawn(async move {
                        match delivery.await {
                            Ok(Ok(d)) => {
                                sends.lock().unwrap().insert((d.partition, d.offset), stamp);
                            }
                            _ => *failed.lock().unwrap() += 1,
                        }
                    });
                }
                Err(_) => *failed.lock().unwrap() += 1,
            }
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let send_secs = start.elapsed().as_secs_f64();
    let cpu_end = snapshot(&env.watched, sidecar.pid());

    // every delivered record confirmed
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = sends.lock().unwrap().len();
        let failed = *failed.lock().unwrap();
        if delivered + failed >= sent && reader.count() >= WARMUP_RECORDS + delivered {
            break;
        }
        sidecar.check_alive();
        assert!(
            Instant::now() < deadline,
            "{label}: {} of {delivered} confirmed; sidecar log:\n{}",
            reader.count(),
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failed = *failed.lock().unwrap();
    if failed > 0 {
        println!("      WARNING: {failed} sends failed");
    }
    let mut latencies: Vec<f64> = {
        let sends = sends.lock().unwrap();
        let confirmed = reader.shared.lock().unwrap();
        sends
            .iter()
            .filter_map(|(position, sent_at)| {
                confirmed
                    .arrivals
                    .get(position)
                    .map(|arrived| (*arrived - *sent_at).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    let (status, log) = sidecar.stop();
    if !status.success() {
        println!("      WARNING: sidecar exit {status}; log:\n{log}");
    }
    drop(reader);
    let delivered = sends.lock().unwrap().len();
    let (rows, keys) = pipe.finish(env).await;
    let expected = WARMUP_RECORDS + delivered;
    if rows != expected as i64 || keys != expected + 1 {
        println!(
            "      WARNING: {rows} rows, {keys} Redis keys (expected {expected} and {expected} + 1)"
        );
    }
    LatencyRun {
        flush,
        target_rate: rate,
        sent,
        send_secs,
        matched: latencies.len(),
        latencies,
        cpu: cpu_split(&cpu_start, &cpu_end, env.tck),
    }
}

// ---------------------------------------------------------------------------------------
// 3. raw ceiling

struct Raw {
    sql: MySqlConnection,
    db: String,
    full_statement: String,
}

struct RawRun {
    total: Duration,
    sql: Duration,
    redis: Duration,
}

fn insert_sql(rows: usize) -> String {
    format!(
        "INSERT INTO sync_items (id, payload, payload_blob, content_hash, state, source, version, redis_ttl_ms) VALUES {}",
        vec!["(?,?,?,?,?,?,?,?)"; rows].join(",")
    )
}

impl Raw {
    async fn new(env: &Env) -> Raw {
        let db = env.create_database("raw").await;
        let mut sql = MySqlConnection::connect(&format!("{}/{db}", env.server))
            .await
            .expect("connect to the raw database");
        for ddl in MYSQL_DDL {
            sqlx::raw_sql(ddl).execute(&mut sql).await.expect("raw DDL");
        }
        Raw {
            sql,
            db,
            full_statement: insert_sql(RAW_ROWS_PER_STATEMENT),
        }
    }

    async fn run(&mut self, env: &Env, run: usize, n: usize) -> RawRun {
        sqlx::query("TRUNCATE TABLE sync_items")
            .execute(&mut self.sql)
            .await
            .expect("truncate");
        let prefix = env.prefix(&format!("raw{run}"));
        let items: Vec<SyncItem> = (0..n as u64)
            .map(|i| SyncItem::new(format!("item.{i:08}"), payload(i)))
            .collect();
        let mut redis = env.redis.clone();
        let (mut sql_time, mut redis_time) = (Duration::ZERO, Duration::ZERO);
        let start = Instant::now();
        for (b, batch) in items.chunks(RAW_ROWS_PER_BATCH).enumerate() {
            let t = Instant::now();
            let mut tx = self.sql.begin().await.expect("begin");
            for (s, chunk) in batch.chunks(RAW_ROWS_PER_STATEMENT).enumerate() {
                let partial;
                let statement = if chunk.len() == RAW_ROWS_PER_STATEMENT {
                    &self.full_statement
                } else {
                    partial = insert_sql(chunk.len());
                    &partial
                };
                let mut query = sqlx::query(statement);
                for (i, item) in chunk.iter().enumerate() {
                    let version =
                        (b * RAW_ROWS_PER_BATCH + s * RAW_ROWS_PER_STATEMENT + i + 1) as i64;
                    query = query
                        .bind(item.id().as_bytes())
                        .bind(std::str::from_utf8(item.content()).expect("JSON is UTF-8"))
                        .bind(None::<&[u8]>)
                        .bind(item.content_hash())
                        .bind(item.state().as_bytes())
                        .bind(b"raw/0".as_slice())
                        .bind(version)
                        .bind(0i64);
                }
                query.execute(&mut *tx).await.expect("insert");
            }
            tx.commit().await.expect("commit");
            let t2 = Instant::now();
            sql_time += t2 - t;
            let mut pipe = redis::pipe();
            for (i, item) in batch.iter().enumerate() {
                let version = b * RAW_ROWS_PER_BATCH + i + 1;
                pipe.cmd("HSET")
                    .arg(format!("{prefix}{}", item.id()))
                    .arg("payload")
                    .arg(item.content())
                    .arg("hash")
                    .arg(item.content_hash())
                    .arg("state")
                    .arg(item.state())
                    .arg("version")
                    .arg(version)
                    .arg("type")
                    .arg("json")
                    .ignore();
            }
            let () = pipe.query_async(&mut redis).await.expect("pipeline");
            redis_time += t2.elapsed();
        }
        let total = start.elapsed();
        let keys = env.unlink_prefix(&prefix).await.expect("unlink raw keys");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sync_items")
            .fetch_one(&mut self.sql)
            .await
            .expect("count");
        if rows != n as i64 || keys != n {
            println!("      WARNING raw: {rows} rows, {keys} keys (expected {n})");
        }
        RawRun {
            total,
            sql: sql_time,
            redis: redis_time,
        }
    }

    async fn finish(self, env: &Env) {
        let _ = self.sql.close().await;
        env.drop_database(&self.db).await;
    }
}

// ---------------------------------------------------------------------------------------
// the engine alone, in this process (no Kafka)

/// Submits N items (built from payload bytes inside the clock, as the sidecar does) to an
/// engine on MariaDB + Redis with the sidecar's settings and waits until they are durable.
/// `serial`: `flush()` after every `batch_flush_count` submits, the sidecar's checkpoint
/// pattern without Kafka; otherwise one `flush()` at the end (submits overlap the writes).
/// Without `redis`, the engine has no L2 (SQL only).
async fn engine_run(env: &Env, label: &str, n: usize, serial: bool, redis: bool) -> Duration {
    let db = env.create_database(label).await;
    let prefix = env.prefix(label);
    let config = SyncEngineConfig {
        sql_url: Some(format!("{}/{db}", env.server)),
        redis_url: redis.then(|| env.redis_url.clone()),
        redis_prefix: Some(prefix.clone()),
        batch_flush_ms: DEFAULT_TUNING.ms,
        batch_flush_count: DEFAULT_TUNING.count,
        batch_flush_bytes: DEFAULT_TUNING.bytes,
        l3_filter: false,
        ..Default::default()
    };
    let (_tx, rx) = watch::channel(config.clone());
    let mut engine = SyncEngine::new(config, rx);
    engine.start().await.expect("engine starts");
    let payloads: Vec<Vec<u8>> = (0..n as u64).map(payload).collect();
    let count = DEFAULT_TUNING.count;
    let start = Instant::now();
    for (c, chunk) in payloads.chunks(count).enumerate() {
        for (i, bytes) in chunk.iter().enumerate() {
            let k = c * count + i;
            let item = SyncItem::new(format!("item.{k:08}"), bytes.clone());
            engine
                .submit(item.with_version(k as u64 + 1))
                .await
                .expect("submit");
        }
        if serial {
            engine.flush().await.expect("flush");
        }
    }
    engine.flush().await.expect("flush");
    let elapsed = start.elapsed();
    engine.shutdown().await;
    drop(engine);
    let keys = env.unlink_prefix(&prefix).await.unwrap_or(0);
    if redis && keys != n + 1 {
        println!("      WARNING engine: {keys} Redis keys (expected {n} + 1)");
    }
    env.drop_database(&db).await;
    elapsed
}

// ---------------------------------------------------------------------------------------
// the bench

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn bench(env: &Env, sizes: Sizes) {
    let n = sizes.n;
    let load_before = loadavg();
    let started = Instant::now();
    println!(
        "sidecar bench: N = {n} records of {ITEM_BYTES} B, {PARTITIONS} partitions, {} runs; binary {SIDECAR}",
        sizes.runs
    );

    // 1 + 3: throughput and raw ceiling, interleaved
    let mut raw = Raw::new(env).await;
    let (mut runs, mut raws) = (Vec::new(), Vec::new());
    let (mut engine_serial, mut engine_pipelined, mut engine_sql_only) =
        (Vec::new(), Vec::new(), Vec::new());
    for run in 0..sizes.runs {
        let t = throughput_run(env, &format!("tp{run}"), n, DEFAULT_TUNING).await;
        t.print(&format!("sidecar run {}", run + 1));
        runs.push(t);
        let r = raw.run(env, run, n).await;
        println!(
            "  raw run {}: {:.0} items/s (SQL {:.2} s, Redis {:.2} s)",
            run + 1,
            n as f64 / r.total.as_secs_f64(),
            r.sql.as_secs_f64(),
            r.redis.as_secs_f64()
        );
        raws.push(r);
        let serial = engine_run(env, &format!("es{run}"), n, true, true).await;
        let pipelined = engine_run(env, &format!("ep{run}"), n, false, true).await;
        let sql_only = engine_run(env, &format!("eq{run}"), n, true, false).await;
        println!(
            "  engine alone run {}: {:.0} items/s serial (flush every {}), {:.0} items/s pipelined, \
             {:.0} items/s serial without Redis",
            run + 1,
            n as f64 / serial.as_secs_f64(),
            DEFAULT_TUNING.count,
            n as f64 / pipelined.as_secs_f64(),
            n as f64 / sql_only.as_secs_f64()
        );
        engine_serial.push(n as f64 / serial.as_secs_f64());
        engine_pipelined.push(n as f64 / pipelined.as_secs_f64());
        engine_sql_only.push(n as f64 / sql_only.as_secs_f64());
    }
    raw.finish(env).await;

    // 4: checkpoint size
    let mut variants = Vec::new();
    if sizes.variants {
        for (label, flush) in [
            (
                "fc250",
                Tuning {
                    count: 250,
                    ..DEFAULT_TUNING
                },
            ),
            (
                "fc5000",
                Tuning {
                    count: 5000,
                    bytes: 8 * 1_048_576,
                    ..DEFAULT_TUNING
                },
            ),
        ] {
            let t = throughput_run(env, label, n, flush).await;
            t.print(&format!(
                "variant batch_flush_count = {}, batch_flush_bytes = {}",
                flush.count, flush.bytes
            ));
            variants.push(t);
        }
    }

    // 2: latency at half the median throughput
    let rates: Vec<f64> = runs.iter().map(ThroughputRun::rate).collect();
    let steady: Vec<f64> = runs.iter().map(ThroughputRun::steady).collect();
    let rate = (median(&rates) / 2.0).max(1.0);
    let mut latencies = Vec::new();
    for (label, tuning) in [
        ("lat100", DEFAULT_TUNING),
        (
            "lat20",
            Tuning {
                ms: 20,
                ..DEFAULT_TUNING
            },
        ),
        (
            "lat20fw10",
            Tuning {
                ms: 20,
                fetch_wait_ms: Some(10),
                ..DEFAULT_TUNING
            },
        ),
    ] {
        let l = latency_run(env, label, rate, sizes.latency_secs, tuning).await;
        l.print();
        latencies.push(l);
    }

    // summary
    let raw_rates: Vec<f64> = raws
        .iter()
        .map(|r| n as f64 / r.total.as_secs_f64())
        .collect();
    let joins: Vec<f64> = runs.iter().map(|r| r.to_first.as_secs_f64()).collect();
    let consuming: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.to_consuming.map(|d| d.as_secs_f64()))
        .collect();
    let reads: Vec<f64> = runs
        .iter()
        .map(|r| n as f64 / r.read_ceiling.as_secs_f64())
        .collect();
    let produces: Vec<f64> = runs
        .iter()
        .map(|r| n as f64 / r.produce.as_secs_f64())
        .collect();
    let raw_sql: Vec<f64> = raws
        .iter()
        .map(|r| n as f64 / r.sql.as_secs_f64())
        .collect();
    let raw_redis: Vec<f64> = raws
        .iter()
        .map(|r| n as f64 / r.redis.as_secs_f64())
        .collect();
    let median_run = {
        let m = median(&rates);
        runs.iter()
            .min_by(|a, b| (a.rate() - m).abs().total_cmp(&(b.rate() - m).abs()))
            .expect("a run")
    };
    let cpu = |label: &str| median(&runs.iter().map(|r| r.cpu.get(label)).collect::<Vec<_>>());

    println!();
    println!("==================== sidecar bench summary ====================");
    println!(
        "items: {ITEM_BYTES} B JSON, distinct ids, {PARTITIONS} partitions, N = {n}, median of {} runs",
        sizes.runs
    );
    println!(
        "sidecar: {SIDECAR} (release/bench profile under `cargo bench`), MariaDB + Redis (hashes), \
         batch_flush_ms = {}, batch_flush_count = {}, batch_flush_bytes = {}, l3_filter = false",
        DEFAULT_TUNING.ms, DEFAULT_TUNING.count, DEFAULT_TUNING.bytes
    );
    println!("1. throughput (pre-produced backlog, spawn → all N confirmed)");
    println!(
        "   end-to-end        {:>8.0} items/s   runs: {}",
        median(&rates),
        list(&rates, 0)
    );
    println!(
        "   steady state      {:>8.0} items/s   runs: {}   (excl. start + join)",
        median(&steady),
        list(&steady, 0)
    );
    let disturbed: Vec<String> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.cpu.disturbed().is_empty())
        .map(|(i, r)| format!("run {}{}", i + 1, r.cpu.disturbed()))
        .collect();
    if !disturbed.is_empty() {
        println!("   {}", disturbed.join("; "));
    }
    println!(
        "   spawn → 1st conf. {:>8.2} s         runs: {}   (of which spawn → `consuming`: {} s)",
        median(&joins),
        list(&joins, 2),
        list(&consuming, 2)
    );
    println!(
        "   broker ceilings   produce {:.0} items/s, plain read {:.0} items/s (medians)",
        median(&produces),
        median(&reads)
    );
    println!("2. latency produce → confirmation at {rate:.0} items/s (half the median throughput)");
    for l in &latencies {
        println!(
            "   {}: p50 {:>6.1} ms   p99 {:>6.1} ms   (p90 {:.1}, max {:.1}; {} records, {:.0}/s achieved){}",
            l.name(),
            l.p(50.0),
            l.p(99.0),
            l.p(90.0),
            l.latencies.last().copied().unwrap_or(f64::NAN),
            l.matched,
            l.sent as f64 / l.send_secs,
            l.cpu.disturbed()
        );
    }
    println!(
        "3. raw ceiling (1000-row transactions of 2 × 500-row INSERTs, then a 1000-HSET pipeline)"
    );
    println!(
        "   raw MariaDB+Redis {:>8.0} items/s   runs: {}   (SQL alone {:.0}/s, Redis alone {:.0}/s)",
        median(&raw_rates),
        list(&raw_rates, 0),
        median(&raw_sql),
        median(&raw_redis)
    );
    println!(
        "   sidecar / raw     {:>8.2} (end-to-end)   {:.2} (steady)",
        median(&rates) / median(&raw_rates),
        median(&steady) / median(&raw_rates)
    );
    println!(
        "   engine alone      {:>8.0} items/s serial (submit {} → flush, repeated), {:.0} items/s pipelined, \
         {:.0} items/s serial without Redis   runs: {} / {} / {}",
        median(&engine_serial),
        DEFAULT_TUNING.count,
        median(&engine_pipelined),
        median(&engine_sql_only),
        list(&engine_serial, 0),
        list(&engine_pipelined, 0),
        list(&engine_sql_only, 0)
    );
    println!("4. where the time goes (steady window, % of one core, medians over runs)");
    println!(
        "   sidecar {:.0}%, tansu {:.0}%, mariadbd {:.0}%, redis {:.0}%, bench {:.0}%",
        cpu("sidecar"),
        cpu("tansu"),
        cpu("mariadbd"),
        cpu("redis"),
        cpu("bench")
    );
    println!(
        "   median run: {} | sidecar threads: {}",
        median_run.cpu.line(),
        median_run.cpu.threads_line()
    );
    for v in &variants {
        println!(
            "   batch_flush_count = {:>4}: {:>8.0} items/s end-to-end, {:.0} steady, {} confirmation events; sidecar {:.0}%, tansu {:.0}%, mariadbd {:.0}%{}",
            v.flush.count,
            v.rate(),
            v.steady(),
            v.events,
            v.cpu.get("sidecar"),
            v.cpu.get("tansu"),
            v.cpu.get("mariadbd"),
            v.cpu.disturbed()
        );
    }
    if !variants.is_empty() {
        // time per checkpoint cycle = fixed + per_item × batch_flush_count (least squares)
        let points: Vec<(f64, f64)> =
            std::iter::once((DEFAULT_TUNING.count as f64, median(&steady)))
                .chain(variants.iter().map(|v| (v.flush.count as f64, v.steady())))
                .map(|(count, rate)| (count, count / rate * 1000.0))
                .collect();
        let k = points.len() as f64;
        let (sx, sy) = points
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let (mx, my) = (sx / k, sy / k);
        let slope = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum::<f64>()
            / points.iter().map(|(x, _)| (x - mx).powi(2)).sum::<f64>();
        println!(
            "   checkpoint cycle ≈ {:.1} ms fixed + {:.1} µs per item (fit over batch_flush_count {}); \
             per item: sidecar {:.1} µs, engine alone serial {:.1} µs (of which SQL {:.1} µs), raw {:.1} µs \
             (SQL {:.1} µs)",
            my - slope * mx,
            slope * 1000.0,
            points
                .iter()
                .map(|(x, _)| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join("/"),
            1e6 / median(&steady),
            1e6 / median(&engine_serial),
            1e6 / median(&engine_sql_only),
            1e6 / median(&raw_rates),
            1e6 / median(&raw_sql)
        );
    }
    println!(
        "machine: {} cores; load average before {load_before}, after {}; bench wall time {:.0} s",
        cores(),
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    println!("===============================================================");
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
    for (name, address) in [
        (
            "Kafka",
            brokers.split(',').next().unwrap_or_default().to_string(),
        ),
        ("MariaDB", host_port(&mysql_url)),
        ("Redis", host_port(&redis_url)),
    ] {
        if !reachable(&address) {
            println!("note: {name} at {address} cannot be reached: sidecar bench skipped");
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
        watched: Watched::find(&brokers, &redis_url),
        brokers,
        server: server.to_string(),
        admin_url: mysql_url.clone(),
        redis_url,
        redis,
        tag: format!("sebench{}x{nanos}", std::process::id()),
        dir: tempfile::tempdir().expect("tempdir"),
        scratch: Mutex::default(),
        tck: clock_ticks(),
    };
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(bench(&env, sizes))));
    runtime.block_on(env.cleanup());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    if !benchmarking {
        println!("(smoke run with small sizes: run `cargo bench --bench sidecar` for numbers)");
    }
}
