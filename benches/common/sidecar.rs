//! What the benches that run `sync-engine` as a process (`benches/sidecar.rs`,
//! `benches/merkle.rs`) add to the tests' Kafka harness (`tests/common/kafka.rs`: pipelines,
//! the process, producers, readers): their `main` (services reachable, a runtime, everything
//! the bench created removed at the end, also after a panic), scratch MariaDB databases and
//! Redis prefixes, a pipeline on them with the benches' settings, timing the confirmations of
//! a backlog, and CPU time from `/proc` (the median is in `payload.rs`, shared by every bench).
//!
//! A bench declares the tests' modules at its root, as the test binaries do, next to this one:
//!
//! ```text
//! #[path = "../tests/common/mod.rs"] mod common;
//! #[path = "../tests/common/kafka.rs"] mod kafka;
//! #[path = "common/sidecar.rs"] mod sidecar;
//! ```

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use sqlx::mysql::MySqlConnection;
use sqlx::Connection;

use crate::common::{redis::PLAIN_ENV as REDIS_ENV, Backend, MYSQL_ENV};
use crate::kafka::{confirmations, Pipeline, Producer, Rec, Sidecar, KAFKA_ENV};

const KAFKA_DEFAULT: &str = "127.0.0.1:19092";
const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";
const REDIS_DEFAULT: &str = "redis://127.0.0.1:6379";

/// The `sync-engine` binary (under `cargo bench`, built with the `bench` profile).
pub const SIDECAR: &str = env!("CARGO_BIN_EXE_sync-engine");
/// Partitions of every topic.
pub const PARTITIONS: i32 = 4;
/// The topics a pipeline creates (`Pipeline::on`).
const PIPELINE_TOPICS: [&str; 3] = ["in", "out", "dlq"];
/// Records `produce_all` hands to the producer before awaiting their delivery (librdkafka's
/// queue holds 100 000).
const PRODUCE_CHUNK: usize = 50_000;

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
    ms: 20,
    count: 1000,
    bytes: 1_048_576,
    fetch_wait_ms: Some(25),
};

// ---------------------------------------------------------------------------------------
// statistics, the machine

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
    /// Unique to this bench process: part of the name of every database and Redis prefix it
    /// creates (its topics are named by the tests' `Pipeline`, after the process too).
    tag: String,
    scratch: Mutex<Scratch>,
    pub watched: Watched,
    pub tck: f64,
}

impl Env {
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

    /// A pipeline of the tests' harness (`PARTITIONS` partitions) on this broker, its topics
    /// removed at the end.
    pub async fn pipeline(&self, label: &str, sql: Backend) -> Pipeline {
        let pipeline = Pipeline::on_brokers(label, PARTITIONS, sql, self.brokers.clone()).await;
        let topics = PIPELINE_TOPICS.map(|kind| pipeline.topic(kind));
        self.scratch.lock().unwrap().topics.extend(topics);
        pipeline
    }

    pub async fn delete_topics_of(&self, pipeline: &Pipeline) {
        self.delete_topics(&PIPELINE_TOPICS.map(|kind| pipeline.topic(kind)))
            .await;
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

    /// The engine keys of a pipeline file for the stores: this Redis with `prefix`, no L3
    /// filter (the SQL database is the file's `sql_url`).
    pub fn stores(&self, prefix: &str) -> String {
        format!(
            "redis_url = \"{}\"\nredis_prefix = \"{prefix}\"\nl3_filter = false\n",
            self.redis_url
        )
    }
}

// ---------------------------------------------------------------------------------------
// one pipeline: the tests' (topics, group), a database, a prefix; its sidecar process

/// The resources of one `sync-engine run`: a pipeline of the tests' harness (topics `in`,
/// `out` and `dlq`, a group) on a MariaDB database of its own, and a Redis prefix.
pub struct Pipe {
    pub pipeline: Pipeline,
    /// Another pipeline's input topic the sidecar reads instead of `in` (one backlog for
    /// many runs).
    input: Option<String>,
    pub db: String,
    pub prefix: String,
}

impl Pipe {
    pub async fn new(env: &Env, label: &str, input: Option<&str>) -> Pipe {
        let db = env.create_database(label).await;
        let sql = Backend::at("mariadb", format!("{}/{db}", env.server));
        let pipeline = env.pipeline(label, sql).await;
        Pipe {
            pipeline,
            input: input.map(str::to_string),
            db,
            prefix: env.prefix(label),
        }
    }

    /// Spawns `sync-engine run` with the pipeline of `pipelines/default.toml` (checkpoint
    /// triggers `flush`), `session.timeout.ms = 6000`, and the `engine` keys.
    pub fn start(&self, env: &Env, flush: Tuning, engine: &str) -> Sidecar {
        self.start_binary(env, flush, engine, SIDECAR)
    }

    /// Like `start`, with another `sync-engine` binary (e.g. a baseline build to compare with).
    pub fn start_binary(&self, env: &Env, flush: Tuning, engine: &str, binary: &str) -> Sidecar {
        let engine = format!(
            "{}batch_flush_ms = {}\nbatch_flush_count = {}\nbatch_flush_bytes = {}\n{engine}",
            env.stores(&self.prefix),
            flush.ms,
            flush.count,
            flush.bytes
        );
        let fetch_wait = flush.fetch_wait_ms.map_or(String::new(), |ms| {
            format!("\"fetch.wait.max.ms\" = \"{ms}\"\n")
        });
        let tail = format!("{fetch_wait}[kafka.producer]\n\"linger.ms\" = \"5\"\n");
        // the file names the pipeline's own `in`; an override in the environment wins
        let input: Vec<(&str, &str)> = match &self.input {
            Some(topic) => vec![("SYNC_ENGINE__KAFKA__INPUT_TOPIC", topic.as_str())],
            None => Vec::new(),
        };
        self.pipeline.spawn(binary, &engine, &tail, &input)
    }

    /// Counts the rows, removes the database, keys and topics; returns (rows, keys).
    pub async fn finish(self, env: &Env) -> (i64, usize) {
        let rows = env.rows(&self.db).await;
        let keys = env.unlink_prefix(&self.prefix).await.unwrap_or(0);
        env.drop_database(&self.db).await;
        env.delete_topics_of(&self.pipeline).await;
        (rows, keys)
    }
}

/// Calls `step` every `every` until it returns a value; panics with the log when the sidecar
/// exits or `limit` passes (`stuck`: what was not reached, for the message).
pub async fn poll<T>(
    sidecar: &mut Sidecar,
    limit: Duration,
    every: Duration,
    mut step: impl FnMut(&Sidecar) -> Option<T>,
    stuck: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = step(sidecar) {
            return value;
        }
        if let Some(status) = sidecar.try_status() {
            panic!("the sidecar exited ({status}); its log:\n{}", sidecar.log());
        }
        assert!(
            Instant::now() < deadline,
            "{}; sidecar log:\n{}",
            stuck(),
            sidecar.log()
        );
        tokio::time::sleep(every).await;
    }
}

/// SIGTERM (the sidecar drains, confirms and commits), then its exit (60 s at most); unlike
/// the tests' `Sidecar::stop`, an unclean exit is the caller's to report.
pub fn stop(sidecar: &mut Sidecar) -> ExitStatus {
    sidecar.sigterm();
    sidecar.wait_exit(Duration::from_secs(60))
}

// ---------------------------------------------------------------------------------------
// producing a backlog, timing its confirmations

/// A record without headers (route redis+sql, state `default`).
pub fn record(id: String, value: Vec<u8>) -> Rec {
    Rec {
        key: Some(id.into_bytes()),
        value: Some(value),
        headers: Vec::new(),
    }
}

/// Produces `records`, delivery awaited, `PRODUCE_CHUNK` at a time.
pub async fn produce_all(producer: &Producer, records: impl IntoIterator<Item = Rec>) {
    let mut records = records.into_iter();
    loop {
        let chunk: Vec<Rec> = records.by_ref().take(PRODUCE_CHUNK).collect();
        if chunk.is_empty() {
            return;
        }
        producer.send(&chunk).await;
    }
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

/// A reader of the confirmations on a pipeline's whole output topic (checkpoint events are
/// skipped), on a thread of its own; what one read of the topic returns arrived then.
pub struct ConfirmationReader {
    pub shared: Arc<Mutex<Confirmed>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConfirmationReader {
    pub fn start(pipeline: &Pipeline) -> ConfirmationReader {
        let mut reader = pipeline.reader_with("out", &[("fetch.wait.max.ms", "20")]);
        let shared = Arc::new(Mutex::new(Confirmed::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (state, flag) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                reader.poll(Duration::from_millis(50));
                if reader.outs.is_empty() {
                    continue;
                }
                let now = Instant::now();
                let outs = std::mem::take(&mut reader.outs);
                let mut s = state.lock().unwrap();
                for c in confirmations(&outs) {
                    let partition = c["partition"].as_i64().expect("a partition") as i32;
                    let items = c["items"].as_array().expect("items");
                    s.events += 1;
                    s.first.get_or_insert((now, items.len()));
                    for item in items {
                        let offset = item["offset"].as_i64().expect("an offset");
                        match s.arrivals.entry((partition, offset)) {
                            Entry::Vacant(first) => {
                                first.insert(now);
                            }
                            Entry::Occupied(_) => s.repeated += 1,
                        }
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

    /// Panics when the reading thread has (the tests' reader panics on a read error or an
    /// event that is neither a confirmation nor a checkpoint).
    pub fn check(&self) {
        let stopped = self.thread.as_ref().is_some_and(JoinHandle::is_finished);
        assert!(
            !stopped,
            "the confirmation reader failed (see its panic above)"
        );
    }

    /// Waits until `n` items are confirmed (300 s at most; the sidecar, spawned at `start`,
    /// must not exit). CPU is measured from the first confirmation to the last.
    pub async fn all_confirmed(
        &self,
        env: &Env,
        label: &str,
        sidecar: &mut Sidecar,
        start: Instant,
        n: usize,
    ) -> Backlog {
        let (mut to_consuming, mut cpu_start) = (None, None);
        let step = |sidecar: &Sidecar| {
            self.check();
            if to_consuming.is_none() && sidecar.log().contains("consuming") {
                to_consuming = Some(start.elapsed());
            }
            if cpu_start.is_none() && self.first().is_some() {
                cpu_start = Some(snapshot(&env.watched, sidecar.pid()));
            }
            (self.count() >= n).then(|| (start.elapsed(), snapshot(&env.watched, sidecar.pid())))
        };
        let stuck = || format!("{label}: {} of {n} confirmed after 300 s", self.count());
        let (limit, every) = (Duration::from_secs(300), Duration::from_millis(5));
        let (total, cpu_end) = poll(sidecar, limit, every, step, stuck).await;
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
