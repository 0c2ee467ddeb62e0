//! Benchmarks of the engine's read and write paths (criterion, `harness = false`).
//!
//! - `l1_get_hit`: `SyncEngine::get` of a 1 KiB JSON item L1 holds (SQLite engine; the item
//!   was submitted, flushed and read once). Timed with `b.to_async(&runtime).iter(..)`:
//!   criterion runs the whole timed loop inside a single `block_on`, so the executor adds one
//!   poll of a ready future per `get`, not a `block_on` per call.
//! - `submit_to_durable/{sqlite,mariadb}`: each iteration submits N = 5000 new 1 KiB JSON items
//!   (distinct ids, so every row is an insert) and awaits `flush()` (durable), with
//!   `batch_flush_count = 1000`. Items are built before the clock starts: `SyncItem::new`
//!   (JSON check + SHA-256) is the caller's cost, printed separately in the summary.
//! - `raw_insert/{sqlite,mariadb}`: the ceiling. The same rows, written by the bench itself with
//!   plain multi-row INSERTs (500 rows per statement, one transaction per 1000 rows) over one
//!   sqlx connection, into the engine's own DDL in a separate database / file. SQLite uses the
//!   engine's settings (WAL, `synchronous = FULL`), so both pay the same fsync per commit.
//!
//! Under `cargo bench` a summary follows the criterion groups: per backend, 5 runs of each
//! (interleaved engine, raw, engine, raw, …), medians and the ratio engine/raw.
//! `SYNC_ENGINE_BENCH_SUMMARY_RUNS=<n>` changes the run count (0 skips the summary).
//!
//! MariaDB comes from `SYNC_ENGINE_TEST_MYSQL_URL` (e.g. `mysql://root@127.0.0.1:3306/test`):
//! two fresh databases are created on that server and dropped at the end. When the variable
//! is unset the MariaDB benchmarks are skipped (with a note) and the rest still runs.

#[path = "common/payload.rs"]
mod payload;
use payload::{median, payload, ITEM_BYTES};

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, SamplingMode, Throughput};
use sqlx::mysql::MySqlConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use sync_engine::{SyncEngine, SyncEngineConfig, SyncItem};
use tokio::runtime::Runtime;
use tokio::sync::watch;

const MYSQL_ENV: &str = "SYNC_ENGINE_TEST_MYSQL_URL";
const SUMMARY_RUNS_ENV: &str = "SYNC_ENGINE_BENCH_SUMMARY_RUNS";

/// Items per iteration of the write benchmarks.
const N: usize = 5000;
/// Payload size of every item: a JSON object padded to exactly this many bytes.
const BATCH_FLUSH_COUNT: usize = 1000;
/// The raw ceiling's statement and transaction sizes.
const ROWS_PER_STATEMENT: usize = 500;
const ROWS_PER_TRANSACTION: usize = 1000;

const SQLITE_DDL: &str = include_str!("../schemas/sql/sqlite/0001_sync_items.sql");
const MYSQL_DDL: &str = include_str!("../schemas/sql/mysql/0001_sync_items.sql");

/// Ids are never reused, in any database, so every write is an insert.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
/// Versions of the raw rows (the engine stamps its own).
static NEXT_VERSION: AtomicU64 = AtomicU64::new(0);

/// `n` new items with ids never used before.
fn new_items(n: usize) -> Vec<SyncItem> {
    let first = NEXT_ID.fetch_add(n as u64, Ordering::Relaxed);
    (first..first + n as u64)
        .map(|i| SyncItem::new(format!("bench.{i:012}"), payload(i)))
        .collect()
}

fn insert_sql(rows: usize) -> String {
    format!(
        "INSERT INTO sync_items (id, payload, payload_blob, content_hash, state, source, version) VALUES {}",
        vec!["(?,?,?,?,?,?,?)"; rows].join(",")
    )
}

fn engine_config(url: &str) -> SyncEngineConfig {
    let config = SyncEngineConfig {
        sql_url: Some(url.to_string()),
        batch_flush_count: BATCH_FLUSH_COUNT,
        ..Default::default()
    };
    if BATCH_FLUSH_COUNT * ITEM_BYTES >= config.batch_flush_bytes {
        eprintln!(
            "note: batch_flush_bytes ({}) is reached before batch_flush_count ({BATCH_FLUSH_COUNT})",
            config.batch_flush_bytes
        );
    }
    config
}

async fn start_engine(url: &str) -> (SyncEngine, watch::Sender<SyncEngineConfig>) {
    let config = engine_config(url);
    let (tx, rx) = watch::channel(config.clone());
    let mut engine = SyncEngine::new(config, rx);
    engine.start().await.expect("engine starts");
    (engine, tx)
}

/// Submits every item, then waits until all are durable.
async fn submit_durable(engine: &SyncEngine, items: Vec<SyncItem>) {
    for item in items {
        engine.submit(item).await.expect("submit");
    }
    engine.flush().await.expect("flush");
}

/// The bench's own connection for the raw ceiling.
enum RawConn {
    Sqlite(SqliteConnection),
    MySql(MySqlConnection),
}

struct Raw {
    conn: RawConn,
    /// The full-chunk statement, built once.
    full_statement: String,
}

macro_rules! insert_rows {
    ($conn:expr, $full:expr, $rows:expr) => {{
        for tx_rows in $rows.chunks(ROWS_PER_TRANSACTION) {
            let mut tx = $conn.begin().await.expect("begin");
            for chunk in tx_rows.chunks(ROWS_PER_STATEMENT) {
                let partial;
                let sql = if chunk.len() == ROWS_PER_STATEMENT {
                    $full
                } else {
                    partial = insert_sql(chunk.len());
                    &partial
                };
                let mut query = sqlx::query(sql);
                for item in chunk {
                    let version = NEXT_VERSION.fetch_add(1, Ordering::Relaxed) as i64;
                    let text = std::str::from_utf8(item.content()).expect("JSON is UTF-8");
                    query = query
                        .bind(item.id().as_bytes())
                        .bind(text)
                        .bind(None::<&[u8]>)
                        .bind(item.content_hash())
                        .bind(item.state().as_bytes())
                        .bind(b"local".as_slice())
                        .bind(version);
                }
                query.execute(&mut *tx).await.expect("insert");
            }
            tx.commit().await.expect("commit");
        }
    }};
}

impl Raw {
    async fn insert(&mut self, rows: &[SyncItem]) {
        let full = self.full_statement.as_str();
        match &mut self.conn {
            RawConn::Sqlite(conn) => insert_rows!(conn, full, rows),
            RawConn::MySql(conn) => insert_rows!(conn, full, rows),
        }
    }

    async fn count(&mut self) -> i64 {
        let sql = "SELECT COUNT(*) FROM sync_items";
        match &mut self.conn {
            RawConn::Sqlite(conn) => sqlx::query_scalar(sql).fetch_one(conn).await,
            RawConn::MySql(conn) => sqlx::query_scalar(sql).fetch_one(conn).await,
        }
        .expect("count raw rows")
    }

    async fn close(self) {
        let _ = match self.conn {
            RawConn::Sqlite(conn) => conn.close().await,
            RawConn::MySql(conn) => conn.close().await,
        };
    }
}

/// What to remove once the bench is done.
enum Scratch {
    Dir(tempfile::TempDir),
    MariaDb {
        admin_url: String,
        databases: Vec<String>,
    },
}

/// One backend: an engine and, in a separate database, the raw ceiling.
struct Backend {
    name: &'static str,
    engine: SyncEngine,
    _config_tx: watch::Sender<SyncEngineConfig>,
    raw: Raw,
    scratch: Scratch,
    /// Rows each side has written, checked against the tables at the end.
    engine_rows: Cell<u64>,
    raw_rows: Cell<u64>,
}

impl Backend {
    async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine_url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("engine.db").display()
        );
        let (engine, config_tx) = start_engine(&engine_url).await;
        let mut conn = SqliteConnectOptions::new()
            .filename(dir.path().join("raw.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("open raw SQLite file");
        sqlx::raw_sql(SQLITE_DDL)
            .execute(&mut conn)
            .await
            .expect("raw DDL");
        Backend::new(
            "sqlite",
            engine,
            config_tx,
            RawConn::Sqlite(conn),
            Scratch::Dir(dir),
        )
    }

    /// Two fresh databases on the server of `base_url`: one for the engine, one for raw.
    async fn mariadb(base_url: &str) -> Backend {
        let (server, _) = base_url
            .rsplit_once('/')
            .unwrap_or_else(|| panic!("{MYSQL_ENV} must look like mysql://user@host:port/db"));
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let prefix = format!("se_bench_{}_{stamp}", std::process::id());
        let (engine_db, raw_db) = (format!("{prefix}_engine"), format!("{prefix}_raw"));
        let mut admin = MySqlConnection::connect(base_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to MariaDB at {MYSQL_ENV}={base_url}: {e}"));
        for db in [&engine_db, &raw_db] {
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&mut admin)
                .await
                .expect("create bench database");
        }
        let _ = admin.close().await;
        let (engine, config_tx) = start_engine(&format!("{server}/{engine_db}")).await;
        let mut conn = MySqlConnection::connect(&format!("{server}/{raw_db}"))
            .await
            .expect("connect raw database");
        sqlx::raw_sql(MYSQL_DDL)
            .execute(&mut conn)
            .await
            .expect("raw DDL");
        let scratch = Scratch::MariaDb {
            admin_url: base_url.to_string(),
            databases: vec![engine_db, raw_db],
        };
        Backend::new("mariadb", engine, config_tx, RawConn::MySql(conn), scratch)
    }

    fn new(
        name: &'static str,
        engine: SyncEngine,
        config_tx: watch::Sender<SyncEngineConfig>,
        conn: RawConn,
        scratch: Scratch,
    ) -> Backend {
        Backend {
            name,
            engine,
            _config_tx: config_tx,
            raw: Raw {
                conn,
                full_statement: insert_sql(ROWS_PER_STATEMENT),
            },
            scratch,
            engine_rows: Cell::new(0),
            raw_rows: Cell::new(0),
        }
    }

    /// One timed engine run of `N` new items.
    async fn engine_run(&self) -> Duration {
        let items = new_items(N);
        let start = Instant::now();
        submit_durable(&self.engine, items).await;
        let elapsed = start.elapsed();
        self.engine_rows.set(self.engine_rows.get() + N as u64);
        elapsed
    }

    /// One timed raw run of `N` new rows.
    async fn raw_run(&mut self) -> Duration {
        let items = new_items(N);
        let start = Instant::now();
        self.raw.insert(&items).await;
        let elapsed = start.elapsed();
        self.raw_rows.set(self.raw_rows.get() + N as u64);
        elapsed
    }

    /// Checks both tables hold every row written, stops the engine and removes the scratch
    /// databases / files.
    async fn finish(mut self) {
        let engine_count = self
            .engine
            .count_prefix("bench.")
            .await
            .expect("count engine rows");
        let raw_count = self.raw.count().await as u64;
        let (engine_rows, raw_rows) = (self.engine_rows.get(), self.raw_rows.get());
        if engine_count != engine_rows || raw_count != raw_rows {
            eprintln!(
                "WARNING {}: rows written engine {engine_rows} / raw {raw_rows}, found engine {engine_count} / raw {raw_count}",
                self.name
            );
        }
        self.engine.shutdown().await;
        drop(self.engine);
        self.raw.close().await;
        match self.scratch {
            Scratch::Dir(dir) => {
                if let Err(e) = dir.close() {
                    eprintln!("could not remove the bench's SQLite files: {e}");
                }
            }
            Scratch::MariaDb {
                admin_url,
                databases,
            } => {
                let mut admin = MySqlConnection::connect(&admin_url)
                    .await
                    .expect("connect to drop");
                for db in databases {
                    let drop_db = format!("DROP DATABASE IF EXISTS {db}");
                    if let Err(e) = sqlx::query(&drop_db).execute(&mut admin).await {
                        eprintln!("could not drop bench database {db}: {e}");
                    }
                }
                let _ = admin.close().await;
            }
        }
    }
}

fn bench_l1_get_hit(c: &mut Criterion, runtime: &Runtime) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("l1.db").display());
    let (engine, _config_tx) = runtime.block_on(start_engine(&url));
    let item = new_items(1).pop().expect("one item");
    let id = item.id().to_string();
    runtime.block_on(async {
        engine.submit(item).await.expect("submit");
        engine.flush().await.expect("flush");
        assert!(engine.get(&id).await.expect("get").is_some());
    });
    let stats = engine.l1_stats();
    assert_eq!(
        (stats.cached_items, stats.pending_items),
        (1, 0),
        "the item is cached, not pending"
    );

    c.bench_function("l1_get_hit", |b| {
        b.to_async(runtime).iter(|| engine.get(&id))
    });

    runtime.block_on(engine.shutdown());
}

fn write_group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(N as u64));
    group
}

fn bench_submit_to_durable(c: &mut Criterion, runtime: &Runtime, backends: &[Backend]) {
    let mut group = write_group(c, "submit_to_durable");
    for backend in backends {
        group.bench_function(backend.name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += backend.engine_run().await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

fn bench_raw_insert(c: &mut Criterion, runtime: &Runtime, backends: &mut [Backend]) {
    let mut group = write_group(c, "raw_insert");
    for backend in backends {
        group.bench_function(backend.name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += backend.raw_run().await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

fn per_second(d: Duration) -> f64 {
    N as f64 / d.as_secs_f64()
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Interleaved engine/raw runs per backend, outside criterion, for the ratio.
fn summary(runtime: &Runtime, backends: &mut [Backend], runs: usize) {
    let first = NEXT_ID.fetch_add(N as u64, Ordering::Relaxed);
    let payloads: Vec<(String, Vec<u8>)> = (first..first + N as u64)
        .map(|i| (format!("bench.{i:012}"), payload(i)))
        .collect();
    let start = Instant::now();
    let items: Vec<SyncItem> = payloads
        .into_iter()
        .map(|(id, p)| SyncItem::new(id, p))
        .collect();
    let build = start.elapsed();
    drop(items);
    println!();
    println!(
        "== summary: N = {N} items of {ITEM_BYTES} B JSON, batch_flush_count = {BATCH_FLUSH_COUNT}, \
         median of {runs} interleaved runs; load average before: {} ==",
        load_average()
    );
    println!(
        "SyncItem::new (JSON check + SHA-256; the caller's cost, excluded from all timings): {:.2} us/item",
        build.as_secs_f64() * 1e6 / N as f64
    );
    for backend in backends.iter_mut() {
        let (mut engine, mut raw) = (Vec::new(), Vec::new());
        runtime.block_on(async {
            for _ in 0..runs {
                engine.push(per_second(backend.engine_run().await));
                raw.push(per_second(backend.raw_run().await));
            }
        });
        let (e, r) = (median(&engine), median(&raw));
        println!(
            "submit->durable {}: {e:.0} items/s (median of {runs}), raw insert: {r:.0} items/s, ratio {:.2}",
            backend.name,
            e / r
        );
        println!(
            "    runs, items/s: engine [{}], raw [{}]",
            list(&engine),
            list(&raw)
        );
    }
    println!("load average after: {}", load_average());
}

/// The 1/5/15-minute load averages: on a small machine, the noise to expect.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut criterion = Criterion::default().configure_from_args();
    // criterion benchmarks only under `cargo bench` (`--bench`); `cargo test --benches` runs
    // each routine once, and then the summary is skipped too.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let benchmarking = has("--bench") && !has("--test") && !has("--list") && !has("--profile-time");

    let mut backends = vec![runtime.block_on(Backend::sqlite())];
    match std::env::var(MYSQL_ENV) {
        Ok(url) if !url.is_empty() => backends.push(runtime.block_on(Backend::mariadb(&url))),
        _ => eprintln!(
            "NOTE: {MYSQL_ENV} is not set: skipping submit_to_durable/mariadb and raw_insert/mariadb \
             (set it to e.g. mysql://root@127.0.0.1:3306/test)"
        ),
    }

    bench_l1_get_hit(&mut criterion, &runtime);
    bench_submit_to_durable(&mut criterion, &runtime, &backends);
    bench_raw_insert(&mut criterion, &runtime, &mut backends);
    criterion.final_summary();

    if benchmarking {
        let runs = std::env::var(SUMMARY_RUNS_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        if runs > 0 {
            summary(&runtime, &mut backends, runs);
        }
    }

    runtime.block_on(async {
        for backend in backends {
            backend.finish().await;
        }
    });
}
