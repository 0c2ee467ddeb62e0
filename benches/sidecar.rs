//! Benchmark of the sidecar as a real process (`sync-engine run`), writing MariaDB + Redis
//! from a Kafka-protocol broker (`harness = false`, plain `Instant` timing and medians).
//!
//! The process is `env!("CARGO_BIN_EXE_sync-engine")`: under `cargo bench` cargo builds it
//! with the `bench` profile (which inherits `release`), so it is an optimized binary. Items
//! are 1 KiB JSON customer records (`benches/common/payload.rs`), distinct ids,
//! no headers (route redis+sql, state `default`). The pipeline mirrors
//! `pipelines/default.toml` (`batch_flush_ms = 20`, `batch_flush_count = 1000`,
//! `batch_flush_bytes = 1 MiB`, `l3_filter = false`, consumer `fetch.wait.max.ms = 25`,
//! producer `linger.ms = 5`), with
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
//!    broker's read ceiling. The reader skips the checkpoint events on the output topic.
//! 2. **Latency.** A fresh sidecar; 100 warm-up records are produced and confirmed (so the
//!    group has joined); then records are produced at a steady rate for `latency_secs`: half
//!    the median steady throughput (the shipped tuning), and a quarter of it (the shipped
//!    tuning, `batch_flush_ms = 100` with librdkafka's `fetch.wait.max.ms`, and
//!    `fetch.wait.max.ms = 10`). Each send is stamped with `Instant::now()` when it is
//!    handed to the producer, and keyed by the (partition, offset) of its delivery report;
//!    the reader stamps each read of the output topic (what a read returns arrived then).
//!    Latency = confirmation arrival − send; p50/p90/p99/max over every record of the steady
//!    phase, and the p99 of each second of the feed (flat while the sidecar keeps up,
//!    growing when a backlog builds). The confirmation reader uses `fetch.wait.max.ms = 20`.
//!    The load generator, the broker and both databases share the machine with the sidecar.
//! 3. **Raw ceiling.** The same rows written by the bench itself: per 1000 rows, one
//!    MariaDB transaction of two 500-row `INSERT`s of the `sync_items` columns (table from
//!    `schemas/sql/mysql/*.sql`, in a database of its own), then one Redis pipeline of 1000
//!    `HSET key payload … hash … state … version … type json`. Items (and their SHA-256) are
//!    built before the clock starts. Median of `runs`, interleaved with the sidecar runs;
//!    the SQL and Redis shares are reported too. Also the engine alone, in this process (no
//!    Kafka), with the sidecar's settings: N submits and `flush()` every 1000 (the sidecar's
//!    checkpoint pattern), N submits and one `flush()` (writes overlap submits), and the
//!    first pattern without Redis (the SQL share of the engine's write path). And, SQL only
//!    with one `flush()`: one engine against two engines on one database writing interleaved
//!    halves of the ids at once (each its own writer and connection; both write partition
//!    `local`, so they share its Merkle bucket rows): what parallel SQL transactions gain here.
//! 4. **Where the time goes.** During each steady window, CPU time (utime + stime from
//!    `/proc`) of the sidecar (and its busiest threads), tansu, mariadbd, redis-server and
//!    the bench process, and the machine's busy and iowait share from `/proc/stat`. Two more
//!    throughput runs vary the checkpoint size: `batch_flush_count = 250` and `5000` (with
//!    `batch_flush_bytes = 8 MiB`); a least-squares fit of the time per checkpoint cycle
//!    (`batch_flush_count` / steady rate) splits it into a fixed and a per-item part.
//! 5. **Picture.** `benches/results/sidecar.png` (the README shows it): the steady rate of each
//!    configuration, end to end and the engine alone against the raw ceiling of the same run
//!    and 0.8 × it; the latency CDFs. Each throughput run also reports the sidecar's peak RSS
//!    (`VmHWM`).
//!
//! With `SYNC_ENGINE_BENCH_SCRAPE=1`, a thread of the bench GETs `/metrics` from the sidecar
//! once per second during every throughput run (sections 1 and 4), from the moment the
//! sidecar logs its endpoint (`HTTP endpoint … address=HOST:PORT`: the benches listen on
//! port 0) until all N are confirmed; each run reports the scrapes' count, failures, mean
//! body size and mean/max latency (connect → whole answer read). A 1 s scraper is a heavy
//! one (Prometheus' usual interval is 15–60 s). With `SYNC_ENGINE_BENCH_SCRAPE=compare` the
//! bench runs nothing but throughput runs of one N, unscraped and scraped alternately
//! (unscraped, scraped, unscraped, …; under `cargo bench` N = 200 000 and 5 pairs, about 14 s
//! of steady window per run, ~5 min in all), and prints both medians (end-to-end and
//! steady), their ratio, the median of the per-pair ratios (each scraped run against the
//! unscraped run right before it) and the sidecar's CPU per item in the steady window. The
//! metrics are recorded in both arms: this measures serving them, not recording them.
//! Unset (or `0`), the bench is unchanged.
//!
//! With `SYNC_ENGINE_BENCH_BASELINE=<path of another sync-engine binary>` (e.g. one built
//! from the previous commit and copied aside) the bench runs only a comparison: pairs of
//! throughput runs of one N (under `cargo bench` N = 200 000 and 5 pairs), the baseline and
//! this build in alternating order, then two pairs of latency runs at one rate (half the
//! baseline's median steady throughput); it prints both medians, their ratio and the median of
//! the per-pair ratios, the sidecar's CPU per item, and each latency run's p50/p99. The
//! machine's noise moves both sides of a pair alike, so the per-pair ratios are the figure.
//!
//! With `SYNC_ENGINE_BENCH_SOAK=<records>` (e.g. `2000000`) the bench runs only a memory soak:
//! the records are produced first, then one sidecar with the shipped tuning works them off
//! while its RSS is sampled every second; it prints the curve, the peak and whether it stayed
//! within `l1_max_bytes` + 64 MiB.
//!
//! Services (defaults are this machine's): `SYNC_ENGINE_TEST_KAFKA_BROKERS`
//! (`127.0.0.1:19092`), `SYNC_ENGINE_TEST_MYSQL_URL` (`mysql://root@127.0.0.1:3306/test`),
//! `SYNC_ENGINE_TEST_REDIS_URL` (`redis://127.0.0.1:6379`). One that cannot be reached skips
//! the bench with a note. Under `cargo test --benches` (no `--bench` argument) everything runs
//! once with small sizes as a smoke test.

#[path = "common/payload.rs"]
mod payload;
use payload::{hset_item, median, payload, ITEM_BYTES};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/kafka.rs"]
mod kafka;
#[path = "common/plot.rs"]
mod plot;
#[path = "common/sidecar.rs"]
mod sidecar;
use kafka::Pipeline;
use sidecar::{
    cpu_split, list, loadavg, machine_line, poll, produce_all, record, snapshot, stop, Backlog,
    ConfirmationReader, CpuSplit, Env, Pipe, Tuning, DEFAULT_TUNING, PARTITIONS, SIDECAR,
};

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sqlx::mysql::MySqlConnection;
use sqlx::Connection;
use sync_engine::{SyncEngine, SyncEngineConfig, SyncItem};
use tokio::sync::watch;

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
    /// Records per run and pairs of runs of the comparisons: (unscraped, scraped) under
    /// `SYNC_ENGINE_BENCH_SCRAPE=compare`, (baseline, this build) under
    /// `SYNC_ENGINE_BENCH_BASELINE`.
    compare_n: usize,
    compare_pairs: usize,
}

const FULL: Sizes = Sizes {
    n: 50_000,
    runs: 3,
    latency_secs: 15,
    variants: true,
    compare_n: 200_000,
    compare_pairs: 5,
};

const SMOKE: Sizes = Sizes {
    n: 2000,
    runs: 1,
    latency_secs: 3,
    variants: false,
    compare_n: 2000,
    compare_pairs: 1,
};

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How long a plain consumer takes to read the `n` records of a pipeline's input topic.
fn read_ceiling(pipeline: &Pipeline, n: usize) -> Duration {
    let mut reader = pipeline.reader("in");
    let (start, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(60));
    let mut read = 0;
    while read < n {
        assert!(Instant::now() < deadline, "read {read} of {n} in 60 s");
        reader.poll(Duration::from_millis(100));
        read += reader.outs.len();
        reader.outs.clear();
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------------
// scraping /metrics during throughput runs

const SCRAPE_ENV: &str = "SYNC_ENGINE_BENCH_SCRAPE";
/// How often the scraper GETs `/metrics`.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq)]
enum ScrapeMode {
    /// The bench as it is without the variable.
    Off,
    /// Every throughput run scraped.
    On,
    /// Only throughput runs, unscraped and scraped alternately.
    Compare,
}

fn scrape_mode() -> ScrapeMode {
    match std::env::var(SCRAPE_ENV).as_deref() {
        Err(_) | Ok("" | "0") => ScrapeMode::Off,
        Ok("1") => ScrapeMode::On,
        Ok("compare") => ScrapeMode::Compare,
        Ok(other) => panic!("{SCRAPE_ENV}={other:?}: expected 0, 1 or compare"),
    }
}

/// What a scraper saw.
#[derive(Clone, Debug, Default)]
struct Scrapes {
    /// Answers 200.
    ok: usize,
    /// Errors and other statuses.
    failed: usize,
    /// Body bytes of the answers 200.
    bytes: usize,
    /// Connect → whole answer read, summed over the answers 200.
    latency: Duration,
    max_latency: Duration,
}

impl Scrapes {
    fn mean_bytes(&self) -> f64 {
        self.bytes as f64 / self.ok.max(1) as f64
    }

    fn mean_ms(&self) -> f64 {
        self.latency.as_secs_f64() * 1000.0 / self.ok.max(1) as f64
    }

    fn add(&mut self, other: &Scrapes) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.bytes += other.bytes;
        self.latency += other.latency;
        self.max_latency = self.max_latency.max(other.max_latency);
    }

    fn line(&self) -> String {
        format!(
            "{} scrapes of /metrics ({} failed), mean {:.0} B, latency mean {:.2} ms, max {:.2} ms",
            self.ok,
            self.failed,
            self.mean_bytes(),
            self.mean_ms(),
            self.max_latency.as_secs_f64() * 1000.0
        )
    }
}

/// The `address=HOST:PORT` of the sidecar's `HTTP endpoint` log line (colors stripped).
fn endpoint(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("HTTP endpoint"))?;
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // an ANSI escape: up to its final letter
            chars.by_ref().find(char::is_ascii_alphabetic);
        } else {
            plain.push(c);
        }
    }
    plain
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .map(str::to_string)
}

/// `GET /metrics` over HTTP/1.0: the body's bytes of an answer 200.
fn get_metrics(address: &str) -> std::io::Result<usize> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    let status = String::from_utf8_lossy(&response[..head])
        .split_whitespace()
        .nth(1)
        .map(str::to_string);
    match status.as_deref() {
        Some("200") => Ok(response.len() - head - 4),
        other => Err(std::io::Error::other(format!("status {other:?}"))),
    }
}

/// A thread that reads the sidecar's endpoint from its log and GETs `/metrics` every
/// [`SCRAPE_EVERY`], the first time as soon as the address is logged, until stopped.
struct Scraper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Scrapes>>,
}

impl Scraper {
    fn start(log: &Path) -> Scraper {
        let log = log.to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut scrapes = Scrapes::default();
            let address = loop {
                if flag.load(Ordering::SeqCst) {
                    return scrapes;
                }
                if let Some(address) = endpoint(&std::fs::read_to_string(&log).unwrap_or_default())
                {
                    break address;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let mut next = Instant::now();
            while !flag.load(Ordering::SeqCst) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(10)));
                    continue;
                }
                match get_metrics(&address) {
                    Ok(bytes) => {
                        let took = now.elapsed();
                        scrapes.ok += 1;
                        scrapes.bytes += bytes;
                        scrapes.latency += took;
                        scrapes.max_latency = scrapes.max_latency.max(took);
                    }
                    Err(_) => scrapes.failed += 1,
                }
                next = (next + SCRAPE_EVERY).max(Instant::now());
            }
            scrapes
        });
        Scraper {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Scrapes {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("a scraper thread");
        thread.join().expect("the scraper thread")
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------
// 1. throughput

struct ThroughputRun {
    flush: Tuning,
    produce: Duration,
    backlog: Backlog,
    events: usize,
    repeated: usize,
    read_ceiling: Duration,
    rows: i64,
    keys: usize,
    exit: String,
    /// With a scraper: what it saw from spawn to all confirmed.
    scrapes: Option<Scrapes>,
    /// The sidecar's peak resident set (VmHWM), MiB, read when all N are confirmed.
    peak_rss_mib: f64,
}

impl ThroughputRun {
    fn print(&self, name: &str) {
        let b = &self.backlog;
        println!(
            "  {name}: {:.0} items/s end-to-end, {:.0} items/s steady | first confirmation at {:.2} s \
             (consuming at {}), all {} at {:.2} s, {} confirmation events ({} items repeated) | \
             produce {:.2} s, plain read {:.2} s | peak RSS {:.0} MiB",
            b.rate(),
            b.steady(),
            b.to_first.as_secs_f64(),
            b.to_consuming
                .map_or("?".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            b.n,
            b.total.as_secs_f64(),
            self.events,
            self.repeated,
            self.produce.as_secs_f64(),
            self.read_ceiling.as_secs_f64(),
            self.peak_rss_mib,
        );
        println!("      cpu (steady): {}{}", b.cpu.line(), b.cpu.disturbed());
        println!("      sidecar threads: {}", b.cpu.threads_line());
        if let Some(scrapes) = &self.scrapes {
            println!("      {}", scrapes.line());
        }
        // + 1 state set + one Merkle mirror per partition
        if self.rows != b.n as i64 || self.keys != b.n + 1 + PARTITIONS as usize {
            println!(
                "      WARNING: {} rows in MariaDB, {} Redis keys (expected {} and {} + 1 state set + {PARTITIONS} mirrors)",
                self.rows, self.keys, b.n, b.n
            );
        }
        if !self.exit.contains("stopped cleanly") {
            println!("      WARNING: unexpected exit: {}", self.exit);
        }
    }

    /// The sidecar's CPU µs per item in the steady window.
    fn sidecar_us(&self) -> f64 {
        let b = &self.backlog;
        b.cpu.get("sidecar") / 100.0 * (b.total - b.to_first).as_secs_f64() * 1e6
            / b.steady_items() as f64
    }
}

/// `scrape`: with a [`Scraper`] from spawn to all confirmed. `binary`: the `sync-engine` to
/// run ([`SIDECAR`], or a baseline to compare with).
async fn throughput_run(
    env: &Env,
    label: &str,
    n: usize,
    flush: Tuning,
    scrape: bool,
    binary: &str,
) -> ThroughputRun {
    let pipe = Pipe::new(env, label, None).await;
    let records: Vec<_> = (0..n as u64)
        .map(|i| record(format!("item.{i:08}"), payload(i)))
        .collect();
    let t = Instant::now();
    produce_all(&pipe.pipeline.producer(), records).await;
    let produce = t.elapsed();

    let reader = ConfirmationReader::start(&pipe.pipeline);
    let start = Instant::now();
    let mut sidecar = pipe.start_binary(env, flush, "", binary);
    let scraper = scrape.then(|| Scraper::start(sidecar.log_path()));
    let backlog = reader
        .all_confirmed(env, label, &mut sidecar, start, n)
        .await;
    let scrapes = scraper.map(Scraper::finish);
    let peak_rss_mib = peak_rss_mib(sidecar.pid());
    let status = stop(&mut sidecar);
    let exit = sidecar
        .log()
        .lines()
        .find(|l| l.contains("stopped cleanly"))
        .map_or_else(|| format!("{status}"), str::to_string);
    let (events, repeated) = {
        let s = reader.shared.lock().unwrap();
        (s.events, s.repeated)
    };
    drop(reader);
    let read_ceiling = read_ceiling(&pipe.pipeline, n);
    let (rows, keys) = pipe.finish(env).await;
    ThroughputRun {
        flush,
        produce,
        backlog,
        events,
        repeated,
        read_ceiling,
        rows,
        keys,
        exit,
        scrapes,
        peak_rss_mib,
    }
}

/// A process's peak resident set (`VmHWM` in `/proc/<pid>/status`), MiB; NaN if unreadable.
fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A `… kB` field of `/proc/<pid>/status`, MiB; NaN if unreadable.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with(field))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .unwrap_or(f64::NAN)
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
    /// p99 of the records sent in each second of the feed, ms: flat when the sidecar keeps
    /// up, growing when a backlog builds.
    p99_by_second: Vec<f64>,
    cpu: CpuSplit,
}

impl LatencyRun {
    fn p(&self, p: f64) -> f64 {
        percentile(&self.latencies, p)
    }

    fn name(&self) -> String {
        let mut name = format!(
            "{:.0}/s, batch_flush_ms = {:>3}",
            self.target_rate, self.flush.ms
        );
        match self.flush.fetch_wait_ms {
            Some(ms) => name.push_str(&format!(", fetch.wait.max.ms = {ms}")),
            None => name.push_str(", fetch.wait.max.ms default"),
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
            "      p99 per second of the feed (ms): {}",
            list(&self.p99_by_second, 0)
        );
        println!(
            "      cpu (feed): {}{}",
            self.cpu.line(),
            self.cpu.disturbed()
        );
        println!("      sidecar threads: {}", self.cpu.threads_line());
    }
}

async fn latency_run(
    env: &Env,
    label: &str,
    rate: f64,
    secs: u64,
    flush: Tuning,
    binary: &str,
) -> LatencyRun {
    let pipe = Pipe::new(env, label, None).await;
    let producer = pipe.pipeline.producer();
    let reader = ConfirmationReader::start(&pipe.pipeline);
    let mut sidecar = pipe.start_binary(env, flush, "", binary);

    // warm-up: the group has joined and a checkpoint has gone through
    let warmup = (0..WARMUP_RECORDS as u64).map(|i| record(format!("warm.{i:08}"), payload(i)));
    produce_all(&producer, warmup).await;
    let (limit, every) = (Duration::from_secs(120), Duration::from_millis(10));
    let warm = |_: &_| {
        reader.check();
        (reader.count() >= WARMUP_RECORDS).then_some(())
    };
    let stuck = || format!("{label}: warm-up not confirmed");
    poll(&mut sidecar, limit, every, warm, stuck).await;

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
        // one task per tick awaits the tick's deliveries (a task per record cost the bench,
        // which shares the cores with the sidecar, more CPU than the sidecar itself)
        let mut tick = Vec::with_capacity(due.saturating_sub(sent));
        while sent < due {
            let rec = record(format!("lat.{sent:08}"), pool[sent % pool.len()].clone());
            let stamp = Instant::now();
            match producer.enqueue(&rec) {
                Ok(delivery) => tick.push((stamp, delivery)),
                Err(_) => *failed.lock().unwrap() += 1,
            }
            sent += 1;
        }
        if !tick.is_empty() {
            let (sends, failed) = (sends.clone(), failed.clone());
            tokio::spawn(async move {
                let mut delivered = Vec::with_capacity(tick.len());
                let mut lost = 0;
                for (stamp, delivery) in tick {
                    match delivery.await {
                        Ok(Ok(d)) => delivered.push(((d.partition, d.offset), stamp)),
                        _ => lost += 1,
                    }
                }
                sends.lock().unwrap().extend(delivered);
                *failed.lock().unwrap() += lost;
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let send_secs = start.elapsed().as_secs_f64();
    let cpu_end = snapshot(&env.watched, sidecar.pid());

    // every delivered record confirmed
    let delivered = || sends.lock().unwrap().len();
    let all = |_: &_| {
        reader.check();
        let (delivered, failed) = (delivered(), *failed.lock().unwrap());
        (delivered + failed >= sent && reader.count() >= WARMUP_RECORDS + delivered).then_some(())
    };
    let stuck = || format!("{label}: {} of {} confirmed", reader.count(), delivered());
    poll(&mut sidecar, limit, every, all, stuck).await;
    let failed = *failed.lock().unwrap();
    if failed > 0 {
        println!("      WARNING: {failed} sends failed");
    }
    // (second of the feed it was sent in, latency ms)
    let timed: Vec<(usize, f64)> = {
        let sends = sends.lock().unwrap();
        let confirmed = reader.shared.lock().unwrap();
        sends
            .iter()
            .filter_map(|(position, sent_at)| {
                let arrived = confirmed.arrivals.get(position)?;
                let second = sent_at.saturating_duration_since(start).as_secs() as usize;
                Some((second, (*arrived - *sent_at).as_secs_f64() * 1000.0))
            })
            .collect()
    };
    let mut by_second: Vec<Vec<f64>> = vec![Vec::new(); secs as usize + 1];
    for (second, ms) in &timed {
        by_second[(*second).min(secs as usize)].push(*ms);
    }
    let p99_by_second: Vec<f64> = by_second
        .iter_mut()
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.sort_by(f64::total_cmp);
            percentile(v, 99.0)
        })
        .collect();
    let mut latencies: Vec<f64> = timed.into_iter().map(|(_, ms)| ms).collect();
    latencies.sort_by(f64::total_cmp);
    let status = stop(&mut sidecar);
    if !status.success() {
        println!(
            "      WARNING: sidecar exit {status}; log:\n{}",
            sidecar.log()
        );
    }
    drop(reader);
    let delivered = sends.lock().unwrap().len();
    let (rows, keys) = pipe.finish(env).await;
    let expected = WARMUP_RECORDS + delivered;
    if rows != expected as i64 || keys != expected + 1 + PARTITIONS as usize {
        println!(
            "      WARNING: {rows} rows, {keys} Redis keys (expected {expected} and {expected} + 1 + {PARTITIONS} mirrors)"
        );
    }
    LatencyRun {
        flush,
        target_rate: rate,
        sent,
        send_secs,
        matched: latencies.len(),
        latencies,
        p99_by_second,
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
                hset_item(
                    &mut pipe,
                    &format!("{prefix}{}", item.id()),
                    item,
                    version as u64,
                );
                pipe.ignore();
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

/// Submits N items (built from payload bytes inside the clock, as the sidecar does) to
/// `engines` engines on one MariaDB database (+ Redis) with the sidecar's settings and waits
/// until they are durable. `serial`: `flush()` after every `batch_flush_count` submits, the
/// sidecar's checkpoint pattern without Kafka; otherwise one `flush()` at the end (submits
/// overlap the writes). Without `redis`, the engines have no L2 (SQL only). With more than one
/// engine, each writes every `engines`-th id (interleaved, so their new rows share index
/// gaps) at the same time on its own writer and SQL connection: what parallel SQL
/// transactions gain on this machine. All write partition `local`, so they also share its
/// Merkle bucket rows (a worst case for parallel writers).
async fn engine_run(
    env: &Env,
    label: &str,
    n: usize,
    serial: bool,
    redis: bool,
    engines: usize,
) -> Duration {
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
    let mut started = Vec::new();
    for _ in 0..engines {
        let (tx, rx) = watch::channel(config.clone());
        let mut engine = SyncEngine::new(config.clone(), rx);
        engine.start().await.expect("engine starts");
        started.push((tx, engine));
    }
    // per engine, its (index, payload) pairs
    let mut shares: Vec<Vec<(usize, Vec<u8>)>> = vec![Vec::new(); engines];
    for k in 0..n {
        shares[k % engines].push((k, payload(k as u64)));
    }
    let count = DEFAULT_TUNING.count;
    let start = Instant::now();
    let writers: Vec<_> = started
        .into_iter()
        .zip(shares)
        .map(|((tx, engine), share)| {
            tokio::spawn(async move {
                for chunk in share.chunks(count) {
                    for (k, bytes) in chunk {
                        let item = SyncItem::new(format!("item.{k:08}"), bytes.clone());
                        engine
                            .submit(item.with_version(*k as u64 + 1))
                            .await
                            .expect("submit");
                    }
                    if serial {
                        engine.flush().await.expect("flush");
                    }
                }
                engine.flush().await.expect("flush");
                (tx, engine)
            })
        })
        .collect();
    let mut finished = Vec::new();
    for writer in writers {
        finished.push(writer.await.expect("a writer task"));
    }
    let elapsed = start.elapsed();
    for (_tx, engine) in &finished {
        engine.shutdown().await;
    }
    drop(finished);
    let keys = env.unlink_prefix(&prefix).await.unwrap_or(0);
    // + 1 state set + the Merkle mirror of partition `local`
    if redis && keys != n + 2 {
        println!("      WARNING engine: {keys} Redis keys (expected {n} + 2)");
    }
    env.drop_database(&db).await;
    elapsed
}

// ---------------------------------------------------------------------------------------
// the bench

async fn bench(env: &Env, sizes: Sizes) {
    let scrape = match scrape_mode() {
        ScrapeMode::Off => false,
        ScrapeMode::On => true,
        ScrapeMode::Compare => return compare_scraped(env, sizes).await,
    };
    if let Some(baseline) = baseline_binary() {
        return compare_baseline(env, sizes, &baseline).await;
    }
    if let Some(n) = soak_records() {
        return soak(env, n).await;
    }
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
    // SQL only, pipelined: one engine, two engines on one database at once
    let (mut sql_one, mut sql_two) = (Vec::new(), Vec::new());
    for run in 0..sizes.runs {
        let t = throughput_run(env, &format!("tp{run}"), n, DEFAULT_TUNING, scrape, SIDECAR).await;
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
        let serial = engine_run(env, &format!("es{run}"), n, true, true, 1).await;
        let pipelined = engine_run(env, &format!("ep{run}"), n, false, true, 1).await;
        let sql_only = engine_run(env, &format!("eq{run}"), n, true, false, 1).await;
        let one = engine_run(env, &format!("e1{run}"), n, false, false, 1).await;
        let two = engine_run(env, &format!("e2{run}"), n, false, false, 2).await;
        sql_one.push(n as f64 / one.as_secs_f64());
        sql_two.push(n as f64 / two.as_secs_f64());
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
        println!(
            "  SQL only, pipelined, run {}: {:.0} items/s one engine, {:.0} items/s two engines \
             on one database at once (interleaved ids)",
            run + 1,
            sql_one[run],
            sql_two[run]
        );
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
            let t = throughput_run(env, label, n, flush, scrape, SIDECAR).await;
            t.print(&format!(
                "variant batch_flush_count = {}, batch_flush_bytes = {}",
                flush.count, flush.bytes
            ));
            variants.push(t);
        }
    }

    // 2: latency at half the maximum load (the median steady throughput), and at a quarter
    // of it (this box also runs the broker, both databases and the load generator: at half
    // load it is CPU-bound, and what queues then is not the sidecar's alone)
    let rates: Vec<f64> = runs.iter().map(|r| r.backlog.rate()).collect();
    let steady: Vec<f64> = runs.iter().map(|r| r.backlog.steady()).collect();
    let half = (median(&steady) / 2.0).max(1.0);
    let quarter = (half / 2.0).max(1.0);
    let mut latencies = Vec::new();
    for (label, tuning, rate) in [
        ("latdefault", DEFAULT_TUNING, half),
        ("latdefaultq", DEFAULT_TUNING, quarter),
        (
            "lat100",
            Tuning {
                ms: 100,
                fetch_wait_ms: None,
                ..DEFAULT_TUNING
            },
            quarter,
        ),
        (
            "lat20fw10",
            Tuning {
                fetch_wait_ms: Some(10),
                ..DEFAULT_TUNING
            },
            quarter,
        ),
    ] {
        let l = latency_run(env, label, rate, sizes.latency_secs, tuning, SIDECAR).await;
        l.print();
        latencies.push(l);
    }

    // summary
    let raw_rates: Vec<f64> = raws
        .iter()
        .map(|r| n as f64 / r.total.as_secs_f64())
        .collect();
    let joins: Vec<f64> = runs
        .iter()
        .map(|r| r.backlog.to_first.as_secs_f64())
        .collect();
    let consuming: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.backlog.to_consuming.map(|d| d.as_secs_f64()))
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
            .min_by(|a, b| {
                (a.backlog.rate() - m)
                    .abs()
                    .total_cmp(&(b.backlog.rate() - m).abs())
            })
            .expect("a run")
    };
    let cpu = |label: &str| {
        median(
            &runs
                .iter()
                .map(|r| r.backlog.cpu.get(label))
                .collect::<Vec<_>>(),
        )
    };

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
        .filter(|(_, r)| !r.backlog.cpu.disturbed().is_empty())
        .map(|(i, r)| format!("run {}{}", i + 1, r.backlog.cpu.disturbed()))
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
    let rss: Vec<f64> = runs.iter().map(|r| r.peak_rss_mib).collect();
    println!(
        "   peak RSS          {:>8.0} MiB        runs: {}   (sidecar VmHWM; l1_max_bytes = 256 MiB)",
        median(&rss),
        list(&rss, 0)
    );
    if scrape {
        let mut all = Scrapes::default();
        for r in runs.iter().chain(&variants) {
            all.add(r.scrapes.as_ref().expect("scraped runs"));
        }
        println!(
            "   /metrics scraped every {} s during every throughput run: {}",
            SCRAPE_EVERY.as_secs(),
            all.line()
        );
    }
    println!(
        "2. latency produce → confirmation at {half:.0} items/s (half the median steady throughput) \
         and {quarter:.0} items/s (a quarter)"
    );
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
    println!(
        "   SQL in parallel   {:>8.0} items/s one engine, {:.0} items/s two engines on one database \
         (SQL only, pipelined, interleaved ids) → {:.2}×   runs: {} / {}",
        median(&sql_one),
        median(&sql_two),
        median(&sql_two) / median(&sql_one),
        list(&sql_one, 0),
        list(&sql_two, 0)
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
        median_run.backlog.cpu.line(),
        median_run.backlog.cpu.threads_line()
    );
    for v in &variants {
        println!(
            "   batch_flush_count = {:>4}: {:>8.0} items/s end-to-end, {:.0} steady, {} confirmation events; sidecar {:.0}%, tansu {:.0}%, mariadbd {:.0}%{}",
            v.flush.count,
            v.backlog.rate(),
            v.backlog.steady(),
            v.events,
            v.backlog.cpu.get("sidecar"),
            v.backlog.cpu.get("tansu"),
            v.backlog.cpu.get("mariadbd"),
            v.backlog.cpu.disturbed()
        );
    }
    if !variants.is_empty() {
        // time per checkpoint cycle = fixed + per_item × batch_flush_count (least squares)
        let points: Vec<(f64, f64)> =
            std::iter::once((DEFAULT_TUNING.count as f64, median(&steady)))
                .chain(
                    variants
                        .iter()
                        .map(|v| (v.flush.count as f64, v.backlog.steady())),
                )
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
    println!("{}", machine_line(&load_before, started));
    println!("===============================================================");
    draw(
        sizes,
        &runs,
        &variants,
        &latencies,
        median(&raw_rates),
        median(&engine_pipelined),
    );
}

/// The PNG the README shows: `benches/results/sidecar.png` under `cargo bench`; the smoke run
/// draws into a temporary file (and removes it) so the drawing code is exercised too.
fn draw(
    sizes: Sizes,
    runs: &[ThroughputRun],
    variants: &[ThroughputRun],
    latencies: &[LatencyRun],
    ceiling: f64,
    engine_pipelined: f64,
) {
    let full = sizes.variants;
    let path = if full {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/sidecar.png")
    } else {
        std::env::temp_dir().join(format!("sync-engine-bench-{}.png", std::process::id()))
    };
    let steady: Vec<f64> = runs.iter().map(|r| r.backlog.steady()).collect();
    let ends: Vec<f64> = runs.iter().map(|r| r.backlog.rate()).collect();
    let mut bars = vec![plot::Bar {
        label: "sidecar, steady (default.toml)".into(),
        rate: median(&steady),
    }];
    bars.extend(variants.iter().map(|v| plot::Bar {
        label: format!("sidecar, steady, batch_flush_count {}", v.flush.count),
        rate: v.backlog.steady(),
    }));
    bars.push(plot::Bar {
        label: "sidecar, end-to-end (incl. 3 s join)".into(),
        rate: median(&ends),
    });
    bars.push(plot::Bar {
        label: "engine alone (no Kafka), pipelined".into(),
        rate: engine_pipelined,
    });
    let cdfs: Vec<plot::Cdf> = latencies
        .iter()
        .map(|l| plot::Cdf {
            label: format!("{} (p99 {:.0} ms)", l.name(), l.p(99.0)),
            sorted_ms: &l.latencies,
        })
        .collect();
    let title = format!(
        "sync-engine sidecar, {} × {ITEM_BYTES} B records, {PARTITIONS} partitions, MariaDB + Redis, {} cores (cargo bench --bench sidecar)",
        runs.first().map_or(0, |r| r.backlog.n),
        sidecar::cores()
    );
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match plot::render(&path, &title, &bars, ceiling, &cdfs) {
        Ok(()) if full => println!("plot: {}", path.display()),
        Ok(()) => {
            println!("plot: drawn (smoke run; not kept)");
            let _ = std::fs::remove_file(&path);
        }
        Err(e) => println!("plot: skipped ({e})"),
    }
}

// ---------------------------------------------------------------------------------------
// SYNC_ENGINE_BENCH_SCRAPE=compare

/// Throughput runs of the same N, unscraped and scraped alternately; both medians and ratios.
async fn compare_scraped(env: &Env, sizes: Sizes) {
    let n = sizes.compare_n;
    let load_before = loadavg();
    let started = Instant::now();
    println!(
        "sidecar bench, {SCRAPE_ENV}=compare: {} (unscraped, scraped) pairs of throughput runs, \
         N = {n} records of {ITEM_BYTES} B, {PARTITIONS} partitions, /metrics every {} s; binary {SIDECAR}",
        sizes.compare_pairs,
        SCRAPE_EVERY.as_secs()
    );
    let mut runs: Vec<ThroughputRun> = Vec::new();
    for pair in 0..sizes.compare_pairs {
        for scraped in [false, true] {
            let label = format!("{}{pair}", if scraped { "sc" } else { "un" });
            let t = throughput_run(env, &label, n, DEFAULT_TUNING, scraped, SIDECAR).await;
            t.print(&format!(
                "pair {} {}",
                pair + 1,
                if scraped { "scraped  " } else { "unscraped" }
            ));
            runs.push(t);
        }
    }

    let side = |scraped: bool| -> Vec<&ThroughputRun> {
        runs.iter()
            .filter(|r| r.scrapes.is_some() == scraped)
            .collect()
    };
    let values = |scraped: bool, f: &dyn Fn(&ThroughputRun) -> f64| -> Vec<f64> {
        side(scraped).into_iter().map(f).collect()
    };
    let rate = |r: &ThroughputRun| r.backlog.rate();
    let steady = |r: &ThroughputRun| r.backlog.steady();
    let pair_ratios = |f: &dyn Fn(&ThroughputRun) -> f64| -> Vec<f64> {
        runs.chunks(2).map(|p| f(&p[1]) / f(&p[0])).collect()
    };
    let mut scrapes = Scrapes::default();
    for r in side(true) {
        scrapes.add(r.scrapes.as_ref().expect("a scraped run"));
    }
    let per_run: Vec<f64> = side(true)
        .iter()
        .map(|r| r.scrapes.as_ref().map_or(0.0, |s| s.ok as f64))
        .collect();

    println!();
    println!("============= sidecar bench: /metrics scraped vs not =============");
    println!(
        "N = {n} × {ITEM_BYTES} B, {PARTITIONS} partitions, {} interleaved pairs (unscraped, scraped), \
         pipeline of pipelines/default.toml; scraped: GET /metrics every {} s from the logged endpoint \
         to all N confirmed",
        sizes.compare_pairs,
        SCRAPE_EVERY.as_secs()
    );
    for (name, f) in [
        ("end-to-end", &rate as &dyn Fn(&ThroughputRun) -> f64),
        ("steady", &steady),
    ] {
        let (un, sc) = (values(false, f), values(true, f));
        println!(
            "   {name:<10} unscraped {:>6.0} items/s (runs: {})   scraped {:>6.0} items/s (runs: {})",
            median(&un),
            list(&un, 0),
            median(&sc),
            list(&sc, 0)
        );
        let ratios = pair_ratios(f);
        println!(
            "   {name:<10} scraped / unscraped = {:.3} (medians); per pair: {} → median {:.3}",
            median(&sc) / median(&un),
            list(&ratios, 3),
            median(&ratios)
        );
    }
    let us = |scraped: bool| median(&values(scraped, &ThroughputRun::sidecar_us));
    println!(
        "   sidecar CPU (steady window): unscraped {:.1} µs/item, scraped {:.1} µs/item (medians)",
        us(false),
        us(true)
    );
    println!(
        "   scraped runs: {} (per run: {})",
        scrapes.line(),
        list(&per_run, 0)
    );
    let other: Vec<f64> = runs.iter().map(|r| r.backlog.cpu.other / 100.0).collect();
    println!(
        "   other load in the steady windows (cores, in run order): {}",
        list(&other, 2)
    );
    println!("{}", machine_line(&load_before, started));
    println!("==================================================================");
}

// ---------------------------------------------------------------------------------------
// SYNC_ENGINE_BENCH_BASELINE=<binary>

const BASELINE_ENV: &str = "SYNC_ENGINE_BENCH_BASELINE";

fn baseline_binary() -> Option<String> {
    let path = std::env::var(BASELINE_ENV).ok().filter(|p| !p.is_empty())?;
    assert!(
        Path::new(&path).is_file(),
        "{BASELINE_ENV}={path}: no such file"
    );
    Some(path)
}

/// The binary and the name of one side of a pair: this build (`true`) or the baseline.
fn side(this: bool, baseline: &str) -> (&str, &'static str) {
    if this {
        (SIDECAR, "this build")
    } else {
        (baseline, "baseline  ")
    }
}

/// One run of each side, `(baseline, this build)`; the baseline goes first in even pairs, so
/// a drift of the machine does not favour one side.
async fn both<T, F: std::future::Future<Output = T>>(
    pair: usize,
    run: impl Fn(bool) -> F,
) -> (T, T) {
    if pair % 2 == 0 {
        let base = run(false).await;
        (base, run(true).await)
    } else {
        let this = run(true).await;
        (run(false).await, this)
    }
}

/// Pairs of throughput runs of the same N, a baseline binary and this build in alternating
/// order, then pairs of latency runs at one rate (half the baseline's median steady
/// throughput); medians, ratios and per-pair ratios.
async fn compare_baseline(env: &Env, sizes: Sizes, baseline: &str) {
    let n = sizes.compare_n;
    let load_before = loadavg();
    let started = Instant::now();
    println!(
        "sidecar bench, {BASELINE_ENV}: {} pairs of throughput runs (baseline {baseline}, this build {SIDECAR}), \
         N = {n} records of {ITEM_BYTES} B, {PARTITIONS} partitions, then {} pairs of latency runs",
        sizes.compare_pairs,
        sizes.runs.min(2)
    );
    // (baseline, this build) per pair
    let mut pairs: Vec<(ThroughputRun, ThroughputRun)> = Vec::new();
    for pair in 0..sizes.compare_pairs {
        let run = |this: bool| {
            let label = format!("{}{pair}", if this { "bt" } else { "bb" });
            let (binary, name) = side(this, baseline);
            async move {
                let t = throughput_run(env, &label, n, DEFAULT_TUNING, false, binary).await;
                t.print(&format!("pair {} {name}", pair + 1));
                t
            }
        };
        pairs.push(both(pair, run).await);
    }
    let steady = |r: &ThroughputRun| r.backlog.steady();
    let rate = |r: &ThroughputRun| r.backlog.rate();
    let half = median(&pairs.iter().map(|(b, _)| steady(b)).collect::<Vec<_>>()) / 2.0;
    let mut latencies: Vec<(LatencyRun, LatencyRun)> = Vec::new();
    for pair in 0..sizes.runs.min(2) {
        let run = |this: bool| {
            let label = format!("lt{}{pair}", if this { "t" } else { "b" });
            let (binary, name) = side(this, baseline);
            async move {
                let secs = sizes.latency_secs;
                let l = latency_run(env, &label, half, secs, DEFAULT_TUNING, binary).await;
                println!("  latency pair {} {name}:", pair + 1);
                l.print();
                l
            }
        };
        latencies.push(both(pair, run).await);
    }

    println!();
    println!("============= sidecar bench: this build vs a baseline =============");
    println!(
        "N = {n} × {ITEM_BYTES} B, {PARTITIONS} partitions, {} interleaved pairs, pipeline of \
         pipelines/default.toml",
        pairs.len()
    );
    println!("baseline: {baseline}\nthis build: {SIDECAR}");
    for (name, f) in [
        ("end-to-end", &rate as &dyn Fn(&ThroughputRun) -> f64),
        ("steady", &steady),
    ] {
        let base: Vec<f64> = pairs.iter().map(|(b, _)| f(b)).collect();
        let this: Vec<f64> = pairs.iter().map(|(_, t)| f(t)).collect();
        let ratios: Vec<f64> = pairs.iter().map(|(b, t)| f(t) / f(b)).collect();
        println!(
            "   {name:<10} baseline {:>6.0} items/s (runs: {})   this build {:>6.0} items/s (runs: {})",
            median(&base),
            list(&base, 0),
            median(&this),
            list(&this, 0)
        );
        println!(
            "   {name:<10} this / baseline = {:.3} (medians); per pair: {} → median {:.3}",
            median(&this) / median(&base),
            list(&ratios, 3),
            median(&ratios)
        );
    }
    let us = |this: bool| {
        let v: Vec<f64> = pairs
            .iter()
            .map(|(b, t)| if this { t } else { b }.sidecar_us())
            .collect();
        median(&v)
    };
    println!(
        "   sidecar CPU (steady window): baseline {:.1} µs/item, this build {:.1} µs/item (medians)",
        us(false),
        us(true)
    );
    for (pair, (base, this)) in latencies.iter().enumerate() {
        println!(
            "   latency at {half:.0}/s, pair {}: baseline p50 {:.1} ms, p99 {:.1} ms | this build p50 {:.1} ms, p99 {:.1} ms",
            pair + 1,
            base.p(50.0),
            base.p(99.0),
            this.p(50.0),
            this.p(99.0)
        );
    }
    println!("{}", machine_line(&load_before, started));
    println!("===================================================================");
}

// ---------------------------------------------------------------------------------------
// SYNC_ENGINE_BENCH_SOAK=<records>

const SOAK_ENV: &str = "SYNC_ENGINE_BENCH_SOAK";
/// The shipped `l1_max_bytes`; the soak holds the process to it + 64 MiB.
const L1_MAX_MIB: f64 = 256.0;

fn soak_records() -> Option<usize> {
    let value = std::env::var(SOAK_ENV)
        .ok()
        .filter(|v| !v.is_empty() && v != "0")?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{SOAK_ENV}={value:?}: expected a record count")),
    )
}

/// A process's resident set now (`VmRSS`), MiB; NaN if unreadable.
fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// The memory soak: `n` records produced first, then one sidecar with the shipped tuning
/// works them off while a thread samples its RSS every second. Prints the curve (every
/// 10 s), the peak and the budget (`l1_max_bytes` + 64 MiB).
async fn soak(env: &Env, n: usize) {
    println!("sidecar soak: N = {n} records of {ITEM_BYTES} B, {PARTITIONS} partitions; binary {SIDECAR}");
    let pipe = Pipe::new(env, "soak", None).await;
    let t = Instant::now();
    let records = (0..n as u64).map(|i| record(format!("soak.{i:010}"), payload(i)));
    produce_all(&pipe.pipeline.producer(), records).await;
    println!("  produced in {:.1} s", t.elapsed().as_secs_f64());

    let reader = ConfirmationReader::start(&pipe.pipeline);
    let start = Instant::now();
    let mut sidecar = pipe.start(env, DEFAULT_TUNING, "");
    let (pid, confirmed) = (sidecar.pid(), reader.shared.clone());
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let stopping = stop_sampling.clone();
    let sampler = std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !stopping.load(Ordering::SeqCst) {
            let count = confirmed.lock().unwrap().arrivals.len();
            samples.push((start.elapsed().as_secs_f64(), rss_mib(pid), count));
            std::thread::sleep(Duration::from_secs(1));
        }
        samples
    });
    let backlog = reader
        .all_confirmed(env, "soak", &mut sidecar, start, n)
        .await;
    let peak = peak_rss_mib(pid);
    stop_sampling.store(true, Ordering::SeqCst);
    let samples = sampler.join().expect("the sampler");
    let status = stop(&mut sidecar);
    drop(reader);
    let (rows, _) = pipe.finish(env).await;

    println!("  t (s)   RSS (MiB)   confirmed");
    for (i, (secs, rss, count)) in samples.iter().enumerate() {
        if i % 10 == 0 || i + 1 == samples.len() {
            println!("  {secs:>5.0}   {rss:>9.0}   {count:>9}");
        }
    }
    let budget = L1_MAX_MIB + 64.0;
    println!(
        "  all {n} confirmed in {:.1} s ({:.0} items/s end-to-end, {:.0} steady); {rows} rows; exit {status}",
        backlog.total.as_secs_f64(),
        backlog.rate(),
        backlog.steady()
    );
    println!(
        "  peak RSS {peak:.0} MiB (VmHWM), budget l1_max_bytes + 64 MiB = {budget:.0} MiB: {}",
        if peak <= budget { "within" } else { "EXCEEDED" }
    );
}

fn main() {
    sidecar::main("sidecar", "sebench", |env, benchmarking| {
        Box::pin(bench(env, if benchmarking { FULL } else { SMOKE }))
    });
}
