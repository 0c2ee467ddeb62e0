//! What the Merkle state roots (schemas/MERKLE.md) cost, and how fast `verify` is
//! (`harness = false`, plain `Instant` timing and medians).
//!
//! 1. **Sidecar throughput, `merkle = true` vs `merkle = false`.** The real `sync-engine run`
//!    process (`env!("CARGO_BIN_EXE_sync-engine")`, an optimized binary under `cargo bench`)
//!    against the Kafka-protocol broker, MariaDB and Redis, with the pipeline of
//!    `benches/sidecar.rs` (both start it with `benches/common/sidecar.rs`, on the tests'
//!    harness `tests/common/kafka.rs`:
//!    `batch_flush_ms = 100`, `batch_flush_count = 1000`,
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
//! With `SYNC_ENGINE_BENCH_BASELINE=<path of another sync-engine binary>` (e.g. one built
//! from an earlier commit), section 1 compares this build with that one instead (both
//! `merkle = true`, interleaved the same way), and section 2 is skipped: the cost of a change
//! on the sidecar's happy path.
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
use payload::{median, payload, ITEM_BYTES};

#[path = "../tests/common/mod.rs"]
mod common;
use common::Backend;
#[path = "../tests/common/kafka.rs"]
mod kafka;
#[path = "common/sidecar.rs"]
#[allow(dead_code)] // shared with benches/sidecar.rs, which prints more of it
mod sidecar;
use sidecar::{
    cores, list, loadavg, machine_line, produce_all, record, stop, Backlog, ConfirmationReader,
    Env, Pipe, DEFAULT_TUNING, PARTITIONS, SIDECAR,
};

use std::process::Command;
use std::time::{Duration, Instant};

use sync_engine::{SyncEngine, SyncEngineConfig, SyncItem};
use tokio::sync::watch;

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

// ---------------------------------------------------------------------------------------
// 1. sidecar throughput, merkle on vs off

/// One side of each interleaved pair of runs.
struct Variant {
    name: String,
    binary: String,
    merkle: bool,
}

const BASELINE_ENV: &str = "SYNC_ENGINE_BENCH_BASELINE";

/// Merkle on vs off on this build, or this build vs a baseline binary.
fn variants() -> [Variant; 2] {
    match std::env::var(BASELINE_ENV) {
        Ok(baseline) => [
            Variant {
                name: "this build".into(),
                binary: SIDECAR.into(),
                merkle: true,
            },
            Variant {
                name: "baseline".into(),
                binary: baseline,
                merkle: true,
            },
        ],
        Err(_) => [true, false].map(|merkle| Variant {
            name: format!("merkle = {merkle}"),
            binary: SIDECAR.into(),
            merkle,
        }),
    }
}

struct ThroughputRun {
    /// Index into `variants()`.
    variant: usize,
    backlog: Backlog,
}

impl ThroughputRun {
    /// CPU µs per item of a watched process (`sidecar`, `mariadbd`) in the steady window.
    fn cpu_us(&self, label: &str) -> f64 {
        let b = &self.backlog;
        b.cpu.get(label) / 100.0 * (b.total - b.to_first).as_secs_f64() * 1e6
            / b.steady_items() as f64
    }

    /// Busy cores not accounted to the sidecar, the services or the bench: other sessions.
    fn other_load(&self) -> f64 {
        self.backlog.cpu.other / 100.0
    }
}

async fn throughput_run(
    env: &Env,
    input: &str,
    run: usize,
    (index, variant): (usize, &Variant),
    n: usize,
) -> ThroughputRun {
    let label = format!("{}{run}", if index == 0 { "a" } else { "b" });
    let pipe = Pipe::new(env, &label, Some(input)).await;
    let reader = ConfirmationReader::start(&pipe.pipeline);
    let start = Instant::now();
    let mut sidecar = pipe.start_binary(
        env,
        DEFAULT_TUNING,
        &format!("merkle = {}\n", variant.merkle),
        &variant.binary,
    );
    let backlog = reader
        .all_confirmed(env, &label, &mut sidecar, start, n)
        .await;
    if !stop(&mut sidecar).success() {
        println!(
            "      WARNING {label}: unclean exit; log:\n{}",
            sidecar.log()
        );
    }
    drop(reader);

    let (rows, keys) = pipe.finish(env).await;
    if rows != n as i64 || keys < n {
        println!("      WARNING {label}: {rows} rows in MariaDB, {keys} Redis keys (expected {n})");
    }
    let run = ThroughputRun {
        variant: index,
        backlog,
    };
    println!(
        "  {:<14}: {:>6.0} items/s steady, {:>6.0} end-to-end (first confirmation at {:.2} s, \
         all at {:.2} s) | CPU µs/item: sidecar {:.0}, mariadbd {:.0}; other load {:.2} cores",
        variant.name,
        run.backlog.steady(),
        run.backlog.rate(),
        run.backlog.to_first.as_secs_f64(),
        run.backlog.total.as_secs_f64(),
        run.cpu_us("sidecar"),
        run.cpu_us("mariadbd"),
        run.other_load()
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

    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = dir.path().join("verify.toml");
    let stores = env.stores(&prefix);
    let text = format!(
        "sql_url = \"{}/{db}\"\n{stores}[kafka]\nbrokers = \"{}\"\n",
        env.server, env.brokers
    );
    std::fs::write(&pipeline, text).expect("write the pipeline file");
    let start = Instant::now();
    let ran = Command::new(SIDECAR)
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .env("RUST_LOG", "info")
        .output()
        .expect("run sync-engine verify");
    let wall = start.elapsed().as_secs_f64();
    let ok = ran.status.success();
    let log = String::from_utf8_lossy(&ran.stdout) + String::from_utf8_lossy(&ran.stderr);
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

    // 1. throughput, interleaved on/off on one pre-produced input topic: that of a pipeline
    // no sidecar runs on (so its SQL side is never opened)
    let source = env.pipeline("source", Backend::sqlite()).await;
    let input = source.topic("in");
    let t = Instant::now();
    let records = (0..n as u64).map(|i| record(format!("item.{i:08}"), payload(i)));
    produce_all(&source.producer(), records).await;
    println!(
        "  produced {n} records in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let variants = variants();
    let mut runs = Vec::new();
    for pair in 0..sizes.pairs {
        for variant in variants.iter().enumerate() {
            runs.push(throughput_run(env, &input, pair, variant, n).await);
        }
    }
    env.delete_topics_of(&source).await;

    // 2. verify
    let comparing = std::env::var(BASELINE_ENV).is_ok();
    let verify = if comparing {
        None
    } else {
        Some(verify_bench(env, sizes.verify_rows).await)
    };

    // summary
    let of = |v: usize| -> Vec<&ThroughputRun> { runs.iter().filter(|r| r.variant == v).collect() };
    let steady = |v: usize| -> Vec<f64> { of(v).iter().map(|r| r.backlog.steady()).collect() };
    let pair_ratios: Vec<f64> = runs
        .chunks(2)
        .map(|pair| pair[1].backlog.steady() / pair[0].backlog.steady())
        .collect();
    let ratio = median(&steady(1)) / median(&steady(0));
    println!();
    println!("======================== merkle bench summary ========================");
    println!(
        "1. sidecar (`sync-engine run`, MariaDB + Redis, batch_flush_count 1000), N = {n} × {ITEM_BYTES} B, \
         {PARTITIONS} partitions, {} interleaved pairs ({} / {})",
        sizes.pairs, variants[0].name, variants[1].name
    );
    println!(
        "   {:<15} {:>14} {:>14} {:>13} {:>14}   steady runs",
        "", "steady items/s", "end-to-end/s", "sidecar µs/it", "mariadbd µs/it"
    );
    for (v, variant) in variants.iter().enumerate() {
        let runs = of(v);
        let m = |f: &dyn Fn(&ThroughputRun) -> f64| {
            median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
        };
        println!(
            "   {:<15} {:>14.0} {:>14.0} {:>13.0} {:>14.0}   {}",
            variant.name,
            median(&steady(v)),
            m(&|r| r.backlog.rate()),
            m(&|r| r.cpu_us("sidecar")),
            m(&|r| r.cpu_us("mariadbd")),
            list(&steady(v), 0)
        );
    }
    println!(
        "   {} / {} = {ratio:.3} (medians); per pair: {} → median {:.3}",
        variants[1].name,
        variants[0].name,
        list(&pair_ratios, 3),
        median(&pair_ratios)
    );
    if comparing {
        println!(
            "   this build's steady throughput is {:.1} % of the baseline's (per-pair median; \
             {:.1} % from the medians)",
            100.0 / median(&pair_ratios),
            100.0 / ratio
        );
    } else {
        println!(
            "   Merkle maintenance costs {:.1} % of steady throughput (1 − on/off, per-pair median; \
             {:.1} % from the medians)",
            (1.0 - 1.0 / median(&pair_ratios)) * 100.0,
            (1.0 - 1.0 / ratio) * 100.0
        );
    }
    let other: Vec<f64> = runs.iter().map(ThroughputRun::other_load).collect();
    println!(
        "   other load during the steady windows: {} cores (of {})",
        list(&other, 2),
        cores()
    );
    if let Some(verify) = verify {
        print_verify(&verify, sizes.verify_rows);
    }
    println!("{}", machine_line(&load_before, started));
    println!("=======================================================================");
}

fn print_verify(verify: &VerifyBench, rows: usize) {
    println!(
        "2. verify on {} rows (partition `local`, 1 KiB JSON, Redis holds every row)",
        rows
    );
    println!(
        "   load through the engine (batch_flush_count 5000): {:.1} s = {:.0} rows/s",
        verify.load.as_secs_f64(),
        rows as f64 / verify.load.as_secs_f64()
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
        rows as f64 / wall,
        own.map_or(String::new(), |s| format!(
            " ({s:.2} s = {:.0} rows/s in verify itself)",
            rows as f64 / s
        ))
    );
}

fn main() {
    sidecar::main("merkle", "mkbench", |env, benchmarking| {
        Box::pin(bench(env, if benchmarking { FULL } else { SMOKE }))
    });
}
