//! What the benches that run `sync-engine` as a process share (`benches/sidecar.rs`,
//! `benches/merkle.rs`): their `main` (services reachable, a runtime, everything the bench
//! created removed at the end, also after a panic), scratch topics, MariaDB databases and
//! Redis prefixes, a pipeline with its `sync-engine` process, producing records, a reader of
//! the confirmations on the output topic, CPU time from `/proc`, and medians.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
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

const KAFKA_ENV: &str = "SYNC_ENGINE_TEST_KAFKA_BROKERS";
const MYSQL_ENV: &str = "SYNC_ENGINE_TEST_MYSQL_URL";
const REDIS_ENV: &str = "SYNC_ENGINE_TEST_REDIS_URL";
const KAFKA_DEFAULT: &str = "127.0.0.1:19092";
const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";
const REDIS_DEFAULT: &str = "redis://127.0.0.1:6379";

/// The `sync-engine` binary (under `cargo bench`, built with the `bench` profile).
pub const SIDECAR: &str = env!("CARGO_BIN_EXE_sync-engine");
/// Partitions of every topic.
pub const PARTITIONS: i32 = 4;

/// The sidecar's checkpoint triggers, and its consumer's `fetch.wait.max.ms` (librdkafka's
/// default, 500 ms, when `None`).
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub ms: u64,
    pub count: usize,
    pub bytes: usize,
    pub fetch_wait_ms: Option<u64>,
}

/// Those of `pipelines/default.toml`.
pub const DEFAULT_TUNING: Tuning = Tuning {
    ms: 100,
    count: 1000,
    bytes: 1_048_576,
    fetch_wait_ms: None,
};

// ---------------------------------------------------------------------------------------
// statistics, the machine

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn list(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The summary's last line: cores, load average before (`load_before`) and now, wall time
/// since `started`.
pub fn machine_line(load_before: &str, started: Instant) -> String {
    format!(
        "machine: {} cores; load average before {load_before}, after {}; bench wall time {:.0} s",
        cores(),
        loadavg(),
        started.elapsed().as_secs_f64()
    )
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
pub struct Watched {
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

pub struct CpuSnapshot {
    at: Instant,
    procs: Vec<(&'static str, u64)>,
    /// The sidecar's threads: (tid, name, ticks).
    threads: Vec<(u32, String, u64)>,
    machine: (u64, u64, u64),
}

pub fn snapshot(watched: &Watched, sidecar: u32) -> CpuSnapshot {
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
pub struct CpuSplit {
    wall: f64,
    procs: Vec<(&'static str, f64)>,
    /// The sidecar's busiest threads.
    threads: Vec<(String, f64)>,
    machine_busy: f64,
    machine_iowait: f64,
    /// Busy CPU not accounted to any watched process, in % of one core.
    pub other: f64,
}

pub fn cpu_split(a: &CpuSnapshot, b: &CpuSnapshot, tck: f64) -> CpuSplit {
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
    pub fn line(&self) -> String {
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

    pub fn threads_line(&self) -> String {
        self.threads
            .iter()
            .map(|(n, p)| format!("{n} {p:.0}%"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A note when processes other than the watched ones used more than a quarter of a core
    /// (other sessions' builds or tests): the window's numbers are not clean.
    pub fn disturbed(&self) -> String {
        if self.other > 25.0 {
            format!(" [DISTURBED: other processes {:.0}% of a core]", self.other)
        } else {
            String::new()
        }
    }

    /// The CPU of a watched process (`sidecar`, `tansu`, `mariadbd`, `redis`, `bench`).
    pub fn get(&self, label: &str) -> f64 {
        self.procs
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0.0, |(_, p)| *p)
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

pub struct Env {
    pub brokers: String,
    /// `mysql://user@host:port` (no database).
    pub server: String,
    admin_url: String,
    pub redis_url: String,
    pub redis: redis::aio::MultiplexedConnection,
    /// Unique to this bench process: part of every name it creates.
    tag: String,
    dir: tempfile::TempDir,
    scratch: Mutex<Scratch>,
    pub watched: Watched,
    pub tck: f64,
}

impl Env {
    /// `<tag>.<name>`.
    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.tag)
    }

    pub async fn create_topics(&self, topics: &[String]) {
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

    pub async fn create_database(&self, label: &str) -> String {
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

    pub fn prefix(&self, label: &str) -> String {
        let prefix = format!("{}:{label}:", self.tag);
        self.scratch.lock().unwrap().prefixes.push(prefix.clone());
        prefix
    }

    /// Rows in a database's `sync_items`.
    pub async fn rows(&self, db: &str) -> i64 {
        let mut conn = MySqlConnection::connect(&format!("{}/{db}", self.server))
            .await
            .expect("connect to the bench database");
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM sync_items")
            .fetch_one(&mut conn)
            .await
            .expect("count rows");
        let _ = conn.close().await;
        n
    }

    /// Drops a database; returns whether it was dropped.
    pub async fn drop_database(&self, db: &str) -> bool {
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
    pub async fn unlink_prefix(&self, prefix: &str) -> redis::RedisResult<usize> {
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
    pub async fn delete_topics(&self, topics: &[String]) {
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

    /// Writes the pipeline file `<label>.toml` for `sync-engine run` / `verify`: the engine on
    /// database `db` and Redis prefix `prefix` without the L3 filter, plus the `engine` keys;
    /// the broker, plus the `kafka` keys.
    pub fn pipeline(
        &self,
        label: &str,
        db: &str,
        prefix: &str,
        engine: &str,
        kafka: &str,
    ) -> PathBuf {
        let file = self.dir.path().join(format!("{label}.toml"));
        std::fs::write(
            &file,
            format!(
                r#"sql_url = "{server}/{db}"
redis_url = "{redis}"
redis_prefix = "{prefix}"
l3_filter = false
{engine}
[kafka]
brokers = "{brokers}"
{kafka}"#,
                server = self.server,
                redis = self.redis_url,
                brokers = self.brokers,
            ),
        )
        .expect("write the pipeline file");
        file
    }
}

// ---------------------------------------------------------------------------------------
// one pipeline: topics, database, prefix, sidecar process

/// The resources of one `sync-engine run`: output and DLQ topics (and an input topic of its
/// own unless one is given), a database, a Redis prefix.
pub struct Pipe {
    label: String,
    pub input: String,
    pub db: String,
    pub prefix: String,
    /// The topics this pipe created.
    topics: Vec<String>,
}

impl Pipe {
    pub async fn new(env: &Env, label: &str, input: Option<&str>) -> Pipe {
        let topic = |kind: &str| env.topic(&format!("{label}.{kind}"));
        let mut topics = vec![topic("out"), topic("dlq")];
        let input = match input {
            Some(input) => input.to_string(),
            None => {
                topics.insert(0, topic("in"));
                topics[0].clone()
            }
        };
        env.create_topics(&topics).await;
        Pipe {
            label: label.to_string(),
            input,
            db: env.create_database(label).await,
            prefix: env.prefix(label),
            topics,
        }
    }

    pub fn output(&self, env: &Env) -> String {
        env.topic(&format!("{}.out", self.label))
    }

    /// Spawns `sync-engine run` with the pipeline of `pipelines/default.toml` (checkpoint
    /// triggers `flush`), `session.timeout.ms = 6000`, and the `engine` keys.
    pub fn start(&self, env: &Env, flush: Tuning, engine: &str) -> Process {
        self.start_binary(env, flush, engine, SIDECAR)
    }

    /// Like `start`, with another `sync-engine` binary (e.g. a baseline build to compare with).
    pub fn start_binary(&self, env: &Env, flush: Tuning, engine: &str, binary: &str) -> Process {
        let output = self.output(env);
        let pipeline = env.pipeline(
            &self.label,
            &self.db,
            &self.prefix,
            &format!(
                "batch_flush_ms = {}\nbatch_flush_count = {}\nbatch_flush_bytes = {}\n{engine}",
                flush.ms, flush.count, flush.bytes
            ),
            &format!(
                r#"group_id = "{output}.group"
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
                input = self.input,
                dlq = env.topic(&format!("{}.dlq", self.label)),
                fetch_wait = flush.fetch_wait_ms.map_or(String::new(), |ms| format!(
                    "\"fetch.wait.max.ms\" = \"{ms}\"\n"
                )),
            ),
        );
        Process::spawn_binary(env, &self.label, binary, &["run"], &pipeline)
    }

    /// Counts the rows, removes the database, keys and the topics it created; returns (rows,
    /// keys).
    pub async fn finish(self, env: &Env) -> (i64, usize) {
        let rows = env.rows(&self.db).await;
        let keys = env.unlink_prefix(&self.prefix).await.unwrap_or(0);
        env.drop_database(&self.db).await;
        env.delete_topics(&self.topics).await;
        (rows, keys)
    }
}

/// A `sync-engine` process, its output in `<label>.log`; killed when dropped (a panicking
/// bench leaves none behind).
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn_binary(
        env: &Env,
        label: &str,
        binary: &str,
        args: &[&str],
        pipeline: &Path,
    ) -> Process {
        let log = env.dir.path().join(format!("{label}.log"));
        let out = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(binary)
            .args(args)
            .arg("--pipeline")
            .arg(pipeline)
            .env("RUST_LOG", "info")
            .env("SYNC_ENGINE__HTTP__LISTEN", "127.0.0.1:0")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("spawn sync-engine");
        Process { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The file `log` reads (for a thread that watches it).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the sidecar exited ({status}); its log:\n{}", self.log());
        }
    }

    /// Calls `step` every `every` until it returns a value; panics with the log when the
    /// process exits or `limit` passes (`stuck`: what was not reached, for the message).
    pub async fn poll<T>(
        &mut self,
        limit: Duration,
        every: Duration,
        mut step: impl FnMut(&Process) -> Option<T>,
        stuck: impl Fn() -> String,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = step(self) {
                return value;
            }
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "{}; sidecar log:\n{}",
                stuck(),
                self.log()
            );
            tokio::time::sleep(every).await;
        }
    }

    /// Waits for the exit (`limit` at most).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
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
    pub fn stop(&mut self) -> ExitStatus {
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
// Kafka: producing, reading confirmations

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces `(id, payload)` records to `topic`, delivery awaited.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = (impl AsRef<str>, impl AsRef<[u8]>)>,
) {
    let mut deliveries = Vec::new();
    for (id, value) in records {
        let mut record = FutureRecord::to(topic)
            .key(id.as_ref())
            .payload(value.as_ref());
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

/// A consumer (group `<topic>.<group>`, no commits) of every partition of `topic` from the
/// beginning, with the `settings`.
pub fn consumer_from_start(
    env: &Env,
    topic: &str,
    group: &str,
    settings: &[(&str, &str)],
) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", format!("{topic}.{group}"))
        .set("enable.auto.commit", "false");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// The parts of an output-topic event the benches need.
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

#[derive(Default)]
pub struct Confirmed {
    /// Arrival of the first confirmation and how many items it listed.
    pub first: Option<(Instant, usize)>,
    /// First arrival of a confirmation for each (partition, offset).
    pub arrivals: HashMap<(i32, i64), Instant>,
    pub events: usize,
    pub repeated: usize,
}

/// A reader of the confirmations on the whole output topic (checkpoint events are skipped),
/// on a thread of its own.
pub struct ConfirmationReader {
    pub shared: Arc<Mutex<Confirmed>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConfirmationReader {
    pub fn start(env: &Env, topic: &str) -> ConfirmationReader {
        let consumer = consumer_from_start(env, topic, "reader", &[("fetch.wait.max.ms", "20")]);
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
                let event: OutputEvent =
                    serde_json::from_slice(message.payload().unwrap_or_default())
                        .expect("an output event");
                if event.kind == "checkpoint" {
                    continue;
                }
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

    pub fn count(&self) -> usize {
        self.shared.lock().unwrap().arrivals.len()
    }

    pub fn first(&self) -> Option<(Instant, usize)> {
        self.shared.lock().unwrap().first
    }

    /// Waits until `n` items are confirmed (300 s at most; the sidecar, spawned at `start`,
    /// must not exit). CPU is measured from the first confirmation to the last.
    pub async fn all_confirmed(
        &self,
        env: &Env,
        label: &str,
        sidecar: &mut Process,
        start: Instant,
        n: usize,
    ) -> Backlog {
        let (mut to_consuming, mut cpu_start) = (None, None);
        let step = |sidecar: &Process| {
            if to_consuming.is_none() && sidecar.log().contains("consuming") {
                to_consuming = Some(start.elapsed());
            }
            if cpu_start.is_none() && self.first().is_some() {
                cpu_start = Some(snapshot(&env.watched, sidecar.pid()));
            }
            (self.count() >= n).then(|| (start.elapsed(), snapshot(&env.watched, sidecar.pid())))
        };
        let stuck = || format!("{label}: {} of {n} confirmed after 300 s", self.count());
        let (total, cpu_end) = sidecar
            .poll(
                Duration::from_secs(300),
                Duration::from_millis(5),
                step,
                stuck,
            )
            .await;
        let (first_at, first_items) = self.first().expect("a first confirmation");
        let cpu = cpu_split(
            &cpu_start.expect("a snapshot at the first confirmation"),
            &cpu_end,
            env.tck,
        );
        Backlog {
            n,
            to_consuming,
            to_first: first_at - start,
            first_items,
            total,
            cpu,
        }
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

/// A backlog of `n` records worked off by a sidecar, timed from its spawn.
pub struct Backlog {
    pub n: usize,
    /// Spawn → the `consuming` log line (engine started, consumer subscribed).
    pub to_consuming: Option<Duration>,
    /// Spawn → the first confirmation, and the items it listed.
    pub to_first: Duration,
    pub first_items: usize,
    /// Spawn → all N confirmed.
    pub total: Duration,
    /// From the first confirmation to the last.
    pub cpu: CpuSplit,
}

impl Backlog {
    /// Items/s from spawn to all confirmed.
    pub fn rate(&self) -> f64 {
        self.n as f64 / self.total.as_secs_f64()
    }

    /// Items after the first confirmation.
    pub fn steady_items(&self) -> usize {
        self.n - self.first_items
    }

    /// Items/s from the first confirmation to all confirmed.
    pub fn steady(&self) -> f64 {
        self.steady_items() as f64 / (self.total - self.to_first).as_secs_f64()
    }
}

// ---------------------------------------------------------------------------------------
// main

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

/// The `main` of the bench `name`: nothing under `--list`; a service that cannot be reached
/// skips it with a note; otherwise `bench(env, benchmarking)` (`benchmarking`: under
/// `cargo bench`, not a smoke test) with the names it creates tagged `<tag><pid>x<nanos>`,
/// and everything it created removed afterwards, also when it panics.
pub fn main<F>(name: &str, tag: &str, bench: F)
where
    F: for<'a> FnOnce(&'a Env, bool) -> Pin<Box<dyn Future<Output = ()> + 'a>>,
{
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--list") {
        return;
    }
    let benchmarking = has("--bench") && !has("--test");
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let (brokers, mysql_url, redis_url) = (
        var(KAFKA_ENV, KAFKA_DEFAULT),
        var(MYSQL_ENV, MYSQL_DEFAULT),
        var(REDIS_ENV, REDIS_DEFAULT),
    );
    for (service, address) in [
        (
            "Kafka",
            brokers.split(',').next().unwrap_or_default().to_string(),
        ),
        ("MariaDB", host_port(&mysql_url)),
        ("Redis", host_port(&redis_url)),
    ] {
        if !reachable(&address) {
            println!("note: {service} at {address} cannot be reached: {name} bench skipped");
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
        watched: Watched::find(&brokers, &redis_url),
        brokers,
        server: server.to_string(),
        admin_url: mysql_url.clone(),
        redis_url,
        redis,
        tag: format!("{tag}{}x{nanos}", std::process::id()),
        dir: tempfile::tempdir().expect("tempdir"),
        scratch: Mutex::default(),
        tck: clock_ticks(),
    };
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(bench(&env, benchmarking))
    }));
    runtime.block_on(env.cleanup());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    if !benchmarking {
        println!("(smoke run with small sizes: run `cargo bench --bench {name}` for numbers)");
    }
}
