//! Benchmarks of the L2 Redis tier (`harness = false`, plain `Instant` timing and medians).
//!
//! Every measurement runs on two servers:
//! - **plain**: Redis without modules (`SYNC_ENGINE_TEST_REDIS_URL`, default
//!   `redis://127.0.0.1:6379`): items are hashes (`payload`, `hash`, `state`, `version`, `type`);
//! - **stack**: Redis Stack (`SYNC_ENGINE_TEST_REDIS_STACK_URL`, default
//!   `redis://127.0.0.1:6380`): JSON items are RedisJSON documents
//!   `{"hash","state","version","raw","payload"}`.
//!
//! L3 is always SQLite (a file in a temp dir, WAL, as the engine configures it). Items are
//! 1 KiB JSON customer records (the same generator as `benches/engine.rs`), state `default`.
//!
//! 1. **Redis-hit `get` latency.** A writer engine writes `READ_ITEMS` items and flushes. Then,
//!    per round, a fresh *reader* engine on an EMPTY SQLite file with the same
//!    `redis_url`/`redis_prefix`: its L1 is empty and its SQL has nothing, so every
//!    `reader.get(id)` that returns the item was served by Redis. Each id is read once, in a
//!    shuffled order, each call timed with `Instant`. p50/p99 are nearest-rank percentiles of
//!    one round; the summary gives the median over rounds of the per-round p50 and p99. For
//!    scale, the same rounds time a bare `PING` and a bare `EVALSHA read.lua` (the engine's
//!    own read script) on the bench's own connection.
//! 2. **Pipelined write rate.** The engine writes Redis after the SQL commit, so the Redis
//!    share is isolated by difference: submit→flush of `WRITE_ITEMS` new items
//!    (`batch_flush_count = 1000`) on an engine WITH `redis_url` and on one WITHOUT (both on
//!    their own SQLite file), interleaved, medians over rounds; Redis items/s =
//!    N / (median t_with − median t_without). Ceilings, on the bench's own connection, for the
//!    same items in MULTI/EXEC pipelines of 1000 (commands built before the clock starts):
//!    `raw`: HSET (plain) / JSON.SET (stack) of the same shape plus SADD to the state set;
//!    `lua`: the pipelines the engine itself builds for such a batch (`RedisTier::put_pipelines`:
//!    `SCRIPT LOAD` + EVALSHA of `write.lua`, the engine's own argument encoding).
//!    The bench's keys are UNLINKed between runs, so every run inserts into an empty prefix.
//! 3. **Memory per item.** `INFO memory` `used_memory` before and after an engine writes
//!    `MEMORY_ITEMS` items (submit, flush), divided by the item count; the state set is part of
//!    the cost. Cross-checked with the sum of `MEMORY USAGE key SAMPLES 0` over the bench's
//!    keys (not disturbed by other clients of the same server, unlike `used_memory`). Also a
//!    run of 1 KiB random binary items (hash shape) on the stack server.
//!
//! Under `cargo test --benches` (no `--bench` argument) everything runs once with small sizes
//! as a smoke test. A server that cannot be reached is skipped with a note. Keys live under a
//! prefix unique to the run and are UNLINKed at the end (also if the bench panics).

#[path = "common/payload.rs"]
mod payload;
use payload::{hset_item, median, payload, ITEM_BYTES};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::Value;
use sync_engine::tier::redis::RedisTier;
use sync_engine::{ContentType, SyncEngine, SyncEngineConfig, SyncItem};
use tokio::sync::watch;

const PLAIN_ENV: &str = "SYNC_ENGINE_TEST_REDIS_URL";
const STACK_ENV: &str = "SYNC_ENGINE_TEST_REDIS_STACK_URL";
const PLAIN_DEFAULT: &str = "redis://127.0.0.1:6379";
const STACK_DEFAULT: &str = "redis://127.0.0.1:6380";

/// Payload size of every item.
/// `batch_flush_count` of the engines, and the raw ceilings' pipeline size.
const BATCH: usize = 1000;
/// Untimed reads of absent ids before each timed read round (connections, scripts, SQLite).
const WARMUP_READS: usize = 50;

const READ_LUA: &str = include_str!("../src/tier/redis/lua/read.lua");

/// Sizes of one run: full under `cargo bench`, tiny as a smoke test.
#[derive(Clone, Copy)]
struct Sizes {
    read_items: usize,
    read_rounds: usize,
    write_items: usize,
    write_rounds: usize,
    memory_items: usize,
}

const FULL: Sizes = Sizes {
    read_items: 2000,
    read_rounds: 3,
    write_items: 20_000,
    write_rounds: 3,
    memory_items: 20_000,
};

const SMOKE: Sizes = Sizes {
    read_items: 100,
    read_rounds: 1,
    write_items: 2000,
    write_rounds: 1,
    memory_items: 2000,
};

/// Ids are never reused within a run.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// xorshift64*: shuffles and random payloads without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn shuffle<T>(&mut self, values: &mut [T]) {
        for i in (1..values.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            values.swap(i, j);
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

fn next_ids(n: usize) -> std::ops::Range<u64> {
    let first = NEXT_ID.fetch_add(n as u64, Ordering::Relaxed);
    first..first + n as u64
}

/// `n` new 1 KiB JSON items.
fn json_items(n: usize) -> Vec<SyncItem> {
    next_ids(n)
        .map(|i| SyncItem::new(format!("bench.{i:012}"), payload(i)))
        .collect()
}

/// `n` new items of 1 KiB random bytes (never valid JSON, so binary).
fn binary_items(n: usize, rng: &mut Rng) -> Vec<SyncItem> {
    next_ids(n)
        .map(|i| {
            let item = SyncItem::new(format!("bench.{i:012}"), rng.bytes(ITEM_BYTES));
            assert_eq!(item.content_type(), ContentType::Binary);
            item
        })
        .collect()
}

/// One Redis server under test.
struct Target {
    name: &'static str,
    url: String,
    /// Whether the server has RedisJSON (so JSON items become documents).
    json_module: bool,
    version: String,
    conn: MultiplexedConnection,
    /// The run's key prefix on this server; every key the bench makes starts with it.
    prefix: String,
}

impl Target {
    async fn connect(name: &'static str, env: &str, default: &str, run: &str) -> Option<Target> {
        let url = std::env::var(env)
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| default.to_string());
        let connected = async {
            let client = redis::Client::open(url.as_str())?;
            tokio::time::timeout(
                Duration::from_secs(2),
                client.get_multiplexed_async_connection(),
            )
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))?
        }
        .await;
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!(
                    "NOTE: skipping {name}: cannot connect to {env}={url} ({e}); start it with `bash scripts/services.sh`"
                );
                return None;
            }
        };
        let info: Vec<Value> = redis::cmd("COMMAND")
            .arg("INFO")
            .arg("JSON.SET")
            .query_async(&mut conn)
            .await
            .expect("COMMAND INFO");
        let json_module = info.first().is_some_and(|v| !matches!(v, Value::Nil));
        let server: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .expect("INFO server");
        let version = info_field(&server, "redis_version").unwrap_or_else(|| "?".into());
        Some(Target {
            name,
            url,
            json_module,
            version,
            conn,
            prefix: format!("{run}{name}:"),
        })
    }

    fn shape(&self) -> &'static str {
        if self.json_module {
            "RedisJSON document"
        } else {
            "hash"
        }
    }

    /// Every key under `prefix`.
    async fn keys(&self, prefix: &str) -> Vec<Vec<u8>> {
        let mut conn = self.conn.clone();
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// UNLINKs every key under `prefix`, then waits (up to 5 s) until the server has no
    /// lazy frees pending, so the next timed run does not share the CPU with them.
    async fn unlink(&self, prefix: &str) {
        let mut conn = self.conn.clone();
        for chunk in self.keys(prefix).await.chunks(1000) {
            let _: () = redis::cmd("UNLINK")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .expect("UNLINK");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let memory = self.info_memory().await;
            if info_field(&memory, "lazyfree_pending_objects").as_deref() == Some("0") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn info_memory(&self) -> String {
        redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.conn.clone())
            .await
            .expect("INFO memory")
    }

    async fn used_memory(&self) -> i64 {
        info_field(&self.info_memory().await, "used_memory")
            .and_then(|v| v.parse().ok())
            .expect("used_memory in INFO memory")
    }

    async fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE")
            .query_async(&mut self.conn.clone())
            .await
            .expect("DBSIZE")
    }

    /// TYPE and OBJECT ENCODING of `key`.
    async fn describe(&self, key: &str) -> String {
        let mut conn = self.conn.clone();
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        let encoding: Option<String> = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(key)
            .query_async(&mut conn)
            .await
            .ok()
            .flatten();
        match encoding {
            Some(e) => format!("{kind}/{e}"),
            None => kind,
        }
    }

    /// The key of the state set of `state` under `prefix` (as the engine names it).
    fn state_set(prefix: &str, state: &str) -> Vec<u8> {
        let mut key = prefix.as_bytes().to_vec();
        key.extend_from_slice(b"\xffstate:");
        key.extend_from_slice(state.as_bytes());
        key
    }
}

/// Removes every key of the run when the bench ends, even by a panic (synchronous client).
struct Cleanup {
    servers: Vec<(String, String)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (url, prefix) in &self.servers {
            let removed = (|| -> redis::RedisResult<usize> {
                let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
                let mut cursor: u64 = 0;
                let mut removed = 0;
                loop {
                    let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{prefix}*"))
                        .arg("COUNT")
                        .arg(1000)
                        .query(&mut conn)?;
                    if !keys.is_empty() {
                        removed += redis::cmd("UNLINK").arg(&keys).query::<usize>(&mut conn)?;
                    }
                    if next == 0 {
                        return Ok(removed);
                    }
                    cursor = next;
                }
            })();
            match removed {
                Ok(0) => {}
                Ok(n) => eprintln!("cleanup: unlinked {n} leftover keys under {prefix} on {url}"),
                Err(e) => eprintln!("cleanup of {prefix}* on {url} failed: {e}"),
            }
        }
    }
}

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// SQLite files for the engines: a new, empty one per call.
struct SqliteFiles {
    dir: tempfile::TempDir,
    next: AtomicU64,
}

impl SqliteFiles {
    fn new_url(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("l3-{n}.db"));
        format!("sqlite://{}?mode=rwc", path.display())
    }
}

struct Engine {
    engine: SyncEngine,
    _config_tx: watch::Sender<SyncEngineConfig>,
}

async fn start_engine(sql_url: String, redis: Option<(&str, &str)>) -> Engine {
    let config = SyncEngineConfig {
        sql_url: Some(sql_url),
        redis_url: redis.map(|(url, _)| url.to_string()),
        redis_prefix: redis.map(|(_, prefix)| prefix.to_string()),
        batch_flush_count: BATCH,
        ..Default::default()
    };
    assert!(
        BATCH * ITEM_BYTES < config.batch_flush_bytes,
        "batches must close by count, not bytes"
    );
    let (tx, rx) = watch::channel(config.clone());
    let mut engine = SyncEngine::new(config, rx);
    engine.start().await.expect("engine starts");
    Engine {
        engine,
        _config_tx: tx,
    }
}

/// Submits every item and waits until all are durable (and, with Redis, written there).
async fn submit_durable(engine: &SyncEngine, items: Vec<SyncItem>) -> Duration {
    let start = Instant::now();
    for item in items {
        engine.submit(item).await.expect("submit");
    }
    engine.flush().await.expect("flush");
    start.elapsed()
}

/// Nearest-rank percentile `p` (0..=1) of `samples`, in µs.
fn percentile_us(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1].as_secs_f64() * 1e6
}

fn list(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------
// 1. Redis-hit get latency

#[derive(Default)]
struct ReadResult {
    p50: Vec<f64>,
    p99: Vec<f64>,
    ping_p50: Vec<f64>,
    script_p50: Vec<f64>,
    script_p99: Vec<f64>,
    key_shape: String,
}

async fn read_latency(target: &Target, files: &SqliteFiles, sizes: Sizes) -> ReadResult {
    let prefix = format!("{}get:", target.prefix);
    let redis = Some((target.url.as_str(), prefix.as_str()));
    let mut result = ReadResult::default();

    let writer = start_engine(files.new_url(), redis).await;
    let items = json_items(sizes.read_items);
    let expected: Vec<(String, Vec<u8>)> = items
        .iter()
        .map(|i| (i.id().to_string(), i.content().to_vec()))
        .collect();
    submit_durable(&writer.engine, items).await;
    writer.engine.shutdown().await;
    drop(writer);
    result.key_shape = target.describe(&format!("{prefix}{}", expected[0].0)).await;

    let read_script = redis::Script::new(READ_LUA);
    let mut conn = target.conn.clone();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..sizes.read_rounds {
        let reader = start_engine(files.new_url(), redis).await;
        for i in 0..WARMUP_READS {
            let absent = format!("bench.absent.{i}");
            assert!(reader.engine.get(&absent).await.expect("get").is_none());
        }
        let mut order: Vec<usize> = (0..expected.len()).collect();
        rng.shuffle(&mut order);
        let mut samples = Vec::with_capacity(order.len());
        for &i in &order {
            let (id, content) = &expected[i];
            let start = Instant::now();
            let got = reader.engine.get(id).await.expect("get");
            samples.push(start.elapsed());
            // SQL is empty and L1 had never seen this id: only Redis can have answered
            let got = got.unwrap_or_else(|| panic!("{id} not served by Redis"));
            assert_eq!(got.content(), content.as_slice(), "{id}: wrong bytes");
        }
        result.p50.push(percentile_us(&mut samples, 0.50));
        result.p99.push(percentile_us(&mut samples, 0.99));
        reader.engine.shutdown().await;
        drop(reader);

        // scale: one bare round trip, and the engine's read script without the engine
        let mut pings = Vec::with_capacity(order.len());
        for _ in 0..order.len() {
            let start = Instant::now();
            let _: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .expect("PING");
            pings.push(start.elapsed());
        }
        result.ping_p50.push(percentile_us(&mut pings, 0.50));
        rng.shuffle(&mut order);
        let mut scripted = Vec::with_capacity(order.len());
        for &i in &order {
            let key = format!("{prefix}{}", expected[i].0);
            let start = Instant::now();
            let reply: Value = read_script
                .key(key)
                .invoke_async(&mut conn)
                .await
                .expect("read.lua");
            scripted.push(start.elapsed());
            assert!(matches!(reply, Value::Array(_)), "read.lua found the item");
        }
        result.script_p50.push(percentile_us(&mut scripted, 0.50));
        result.script_p99.push(percentile_us(&mut scripted, 0.99));
    }
    target.unlink(&prefix).await;
    result
}

// ---------------------------------------------------------------------------------------
// 2. Pipelined write rate

#[derive(Default)]
struct WriteResult {
    /// Seconds per run.
    without: Vec<f64>,
    with: Vec<f64>,
    raw: Vec<f64>,
    lua: Vec<f64>,
}

/// MULTI/EXEC pipelines of `BATCH` writes of `items` under `prefix`. `lua`: exactly what the
/// engine sends for a flushed batch of them (`RedisTier::put_pipelines`: `SCRIPT LOAD` and one
/// EVALSHA of write.lua per pipeline, the engine's own argument encoding); otherwise the raw
/// ceiling, HSET / JSON.SET of the same shape plus SADD to the state set.
fn ceiling_pipelines(
    target: &Target,
    prefix: &str,
    items: &[SyncItem],
    lua: bool,
) -> Vec<redis::Pipeline> {
    if lua {
        let tier = RedisTier::new(&target.url, prefix).expect("a Redis URL");
        return items
            .chunks(BATCH)
            .flat_map(|chunk| tier.put_pipelines(chunk, target.json_module))
            .collect();
    }
    let sets = {
        let mut key = prefix.as_bytes().to_vec();
        key.extend_from_slice(b"\xffstate:");
        key
    };
    let version = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    items
        .chunks(BATCH)
        .map(|chunk| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for item in chunk {
                let key = format!("{prefix}{}", item.id());
                let text = std::str::from_utf8(item.content()).expect("JSON is UTF-8");
                let document = target.json_module.then(|| {
                    let quote = |s: &str| serde_json::to_string(s).expect("serializes");
                    format!(
                        r#"{{"hash":{},"state":{},"version":{version},"raw":{},"payload":{text}}}"#,
                        quote(item.content_hash()),
                        quote(item.state()),
                        quote(text),
                    )
                });
                match &document {
                    Some(doc) => pipe.cmd("JSON.SET").arg(&key).arg("$").arg(doc),
                    None => {
                        hset_item(&mut pipe, &key, item, version);
                        &mut pipe
                    }
                }
                .ignore();
                let mut set = sets.clone();
                set.extend_from_slice(item.state().as_bytes());
                pipe.cmd("SADD").arg(set).arg(item.id()).ignore();
            }
            pipe
        })
        .collect()
}

async fn run_ceiling(target: &Target, prefix: &str, n: usize, lua: bool) -> f64 {
    let mut conn = target.conn.clone();
    let pipes = ceiling_pipelines(target, prefix, &json_items(n), lua);
    let start = Instant::now();
    for pipe in &pipes {
        let _: () = pipe.query_async(&mut conn).await.expect("ceiling pipeline");
    }
    let elapsed = start.elapsed().as_secs_f64();
    check_written(target, prefix, n).await;
    target.unlink(prefix).await;
    elapsed
}

/// The state set under `prefix` holds `n` ids (each write reached Redis).
async fn check_written(target: &Target, prefix: &str, n: usize) {
    let members: usize = redis::cmd("SCARD")
        .arg(Target::state_set(prefix, "default"))
        .query_async(&mut target.conn.clone())
        .await
        .expect("SCARD");
    assert_eq!(members, n, "{prefix}: items in the state set");
}

async fn write_rate(target: &Target, files: &SqliteFiles, sizes: Sizes) -> WriteResult {
    let n = sizes.write_items;
    let engine_prefix = format!("{}write:engine:", target.prefix);
    let raw_prefix = format!("{}write:raw:", target.prefix);
    let lua_prefix = format!("{}write:lua:", target.prefix);
    let with = start_engine(
        files.new_url(),
        Some((target.url.as_str(), engine_prefix.as_str())),
    )
    .await;
    let without = start_engine(files.new_url(), None).await;
    // untimed warm-up of both engines (SQLite pages, connections, the write script)
    submit_durable(&with.engine, json_items(BATCH)).await;
    submit_durable(&without.engine, json_items(BATCH)).await;
    target.unlink(&engine_prefix).await;

    let mut result = WriteResult::default();
    for _ in 0..sizes.write_rounds {
        // items are built (JSON check + SHA-256) before the clock starts
        let items = json_items(n);
        result
            .without
            .push(submit_durable(&without.engine, items).await.as_secs_f64());
        let items = json_items(n);
        result
            .with
            .push(submit_durable(&with.engine, items).await.as_secs_f64());
        check_written(target, &engine_prefix, n).await;
        target.unlink(&engine_prefix).await;
        result
            .raw
            .push(run_ceiling(target, &raw_prefix, n, false).await);
        result
            .lua
            .push(run_ceiling(target, &lua_prefix, n, true).await);
    }
    with.engine.shutdown().await;
    without.engine.shutdown().await;
    result
}

// ---------------------------------------------------------------------------------------
// 3. Memory per item

struct MemoryResult {
    label: String,
    items: usize,
    /// `used_memory` after − before, bytes.
    delta: i64,
    /// Sum of `MEMORY USAGE` over the item keys, and of the state set, bytes.
    item_keys: u64,
    state_set: u64,
    /// DBSIZE change not explained by the bench's own keys (other clients of the server).
    foreign_keys: i64,
    key_shape: String,
    set_shape: String,
}

async fn memory_per_item(
    target: &Target,
    files: &SqliteFiles,
    label: &str,
    items: Vec<SyncItem>,
) -> MemoryResult {
    let prefix = format!("{}mem-{label}:", target.prefix);
    let n = items.len();
    let first_id = items[0].id().to_string();
    let engine = start_engine(
        files.new_url(),
        Some((target.url.as_str(), prefix.as_str())),
    )
    .await;
    // after start, so the engine's own connection is in both readings
    let (keys_before, before) = (target.dbsize().await, target.used_memory().await);
    submit_durable(&engine.engine, items).await;
    let (keys_after, after) = (target.dbsize().await, target.used_memory().await);

    let keys = target.keys(&prefix).await;
    let set_key = Target::state_set(&prefix, "default");
    let mut conn = target.conn.clone();
    let mut item_keys = 0;
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0);
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(&mut conn).await.expect("MEMORY USAGE");
        item_keys += chunk
            .iter()
            .zip(sizes)
            .filter(|(key, _)| **key != set_key)
            .map(|(_, size)| size.unwrap_or(0))
            .sum::<u64>();
    }
    let state_set: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&set_key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("MEMORY USAGE of the state set");
    let set_shape = {
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(&set_key)
            .query_async(&mut conn)
            .await
            .expect("OBJECT ENCODING");
        format!("set/{encoding}")
    };
    let key_shape = target.describe(&format!("{prefix}{first_id}")).await;
    check_written(target, &prefix, n).await;
    assert_eq!(
        keys.len(),
        n + 2,
        "{prefix}: item keys + the state set + the Merkle mirror"
    );
    engine.engine.shutdown().await;
    drop(engine);
    target.unlink(&prefix).await;
    MemoryResult {
        label: format!("{} {label}", target.name),
        items: n,
        delta: after - before,
        item_keys,
        state_set: state_set.unwrap_or(0),
        foreign_keys: keys_after - keys_before - (n as i64 + 2),
        key_shape,
        set_shape,
    }
}

// ---------------------------------------------------------------------------------------

struct TargetResults {
    read: ReadResult,
    write: WriteResult,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn print_summary(
    sizes: Sizes,
    targets: &[Target],
    results: &[TargetResults],
    memory: &[MemoryResult],
    elapsed: Duration,
    load_before: &str,
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("================ sync-engine Redis bench: summary ================");
    println!(
        "items: {ITEM_BYTES}-byte JSON customer records (state \"default\"); L3 = SQLite file; \
         engine batch_flush_count = {BATCH}"
    );
    println!(
        "machine: {cores} cores; load average before {load_before}, after {}; bench wall time {:.1} s",
        load_average(),
        elapsed.as_secs_f64()
    );
    for t in targets {
        println!(
            "{:<5} = {} (redis {}), JSON items stored as: {}",
            t.name,
            t.url,
            t.version,
            t.shape()
        );
    }

    println!();
    println!(
        "1) Redis-hit get latency, microseconds (µs). Per round: {} gets (each id once, shuffled) \
         by a fresh reader engine with empty L1 and empty SQLite, nearest-rank p50/p99 of that \
         round; table = MEDIAN of the {} per-round values.",
        sizes.read_items, sizes.read_rounds
    );
    println!(
        "{:<6} {:>10} {:>10} {:>14} {:>16} {:>16}  {:<}",
        "redis", "get p50", "get p99", "PING p50", "read.lua p50", "read.lua p99", "stored as"
    );
    for (t, r) in targets.iter().zip(results) {
        let read = &r.read;
        println!(
            "{:<6} {:>10.1} {:>10.1} {:>14.1} {:>16.1} {:>16.1}  {}",
            t.name,
            median(&read.p50),
            median(&read.p99),
            median(&read.ping_p50),
            median(&read.script_p50),
            median(&read.script_p99),
            read.key_shape
        );
        println!(
            "       per round: get p50 [{}] µs, get p99 [{}] µs",
            list(&read.p50, 1),
            list(&read.p99, 1)
        );
    }
    println!(
        "       (PING and read.lua: the bench's own connection, no engine; read.lua is the \
         script the engine's get runs)"
    );

    println!();
    println!(
        "2) Pipelined write rate to Redis, items/s. Per run: N = {} new items, submit -> flush \
         (durable, Redis written). MEDIAN of {} interleaved runs each. Redis share = \
         median t_with - median t_without; Redis items/s = N / share.",
        sizes.write_items, sizes.write_rounds
    );
    println!(
        "{:<6} {:>11} {:>11} {:>11} {:>13} {:>13} {:>13} {:>14} {:>14}",
        "redis",
        "t_without",
        "t_with",
        "Redis share",
        "Redis items/s",
        "engine w/o/s",
        "engine w/ /s",
        "raw ceiling/s",
        "lua ceiling/s"
    );
    let n = sizes.write_items as f64;
    for (t, r) in targets.iter().zip(results) {
        let w = &r.write;
        let (without, with) = (median(&w.without), median(&w.with));
        let share = with - without;
        let redis_rate = if share > 0.0 {
            format!("{:.0}", n / share)
        } else {
            "n/a (<= 0)".to_string()
        };
        println!(
            "{:<6} {:>9.1}ms {:>9.1}ms {:>9.1}ms {:>13} {:>13.0} {:>13.0} {:>14.0} {:>14.0}",
            t.name,
            without * 1e3,
            with * 1e3,
            share * 1e3,
            redis_rate,
            n / without,
            n / with,
            n / median(&w.raw),
            n / median(&w.lua)
        );
        let ms = |v: &[f64]| list(&v.iter().map(|s| s * 1e3).collect::<Vec<_>>(), 1);
        let pairs: Vec<f64> = w
            .with
            .iter()
            .zip(&w.without)
            .map(|(a, b)| (a - b) * 1e3)
            .collect();
        println!(
            "       runs, ms: without [{}], with [{}], with-without per pair [{}], raw [{}], lua [{}]",
            ms(&w.without),
            ms(&w.with),
            list(&pairs, 1),
            ms(&w.raw),
            ms(&w.lua)
        );
    }
    println!(
        "       (ceilings: the bench's own connection, MULTI/EXEC pipelines of {BATCH}, commands \
         built before the clock; raw = HSET (plain) / JSON.SET of the engine's document (stack) \
         + SADD to the state set; lua = EVALSHA of the engine's write.lua with its arguments)"
    );

    println!();
    println!(
        "3) Redis memory per item, bytes/item (single run each; payload = {ITEM_BYTES} B). \
         INFO used_memory delta over an engine writing the items (submit, flush); \
         MEMORY USAGE = sum over the bench's own keys (SAMPLES 0), unaffected by other clients."
    );
    println!(
        "{:<14} {:>6} {:>13} {:>7} {:>13} {:>9} {:>13} {:>7}  {:<30} {:<}",
        "run",
        "items",
        "used_mem Δ/it",
        "ratio",
        "MEM USAGE/it",
        "set/it",
        "key+set /it",
        "ratio",
        "key shape",
        "foreign key Δ"
    );
    for m in memory {
        let per = |b: f64| b / m.items as f64;
        let delta = per(m.delta as f64);
        let keys = per(m.item_keys as f64);
        let set = per(m.state_set as f64);
        println!(
            "{:<14} {:>6} {:>13.0} {:>6.2}x {:>13.0} {:>9.1} {:>13.0} {:>6.2}x  {:<30} {}",
            m.label,
            m.items,
            delta,
            delta / ITEM_BYTES as f64,
            keys,
            set,
            keys + set,
            (keys + set) / ITEM_BYTES as f64,
            format!("{}, {}", m.key_shape, m.set_shape),
            m.foreign_keys
        );
    }
    println!(
        "       (ratio = bytes/item / {ITEM_BYTES}; used_memory Δ also holds the keyspace table \
         growth; 'foreign key Δ' = keys other clients added/removed meanwhile: if not 0, \
         used_memory Δ is disturbed, trust MEMORY USAGE)"
    );
    println!("==================================================================");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let benchmarking = has("--bench") && !has("--test") && !has("--list");
    if has("--list") {
        return;
    }
    let sizes = if benchmarking { FULL } else { SMOKE };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let load_before = load_average();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let run = format!("se-bench-redis:{}:{nanos}:", std::process::id());

    runtime.block_on(async {
        let mut targets = Vec::new();
        for (name, env, default) in [
            ("plain", PLAIN_ENV, PLAIN_DEFAULT),
            ("stack", STACK_ENV, STACK_DEFAULT),
        ] {
            if let Some(target) = Target::connect(name, env, default, &run).await {
                targets.push(target);
            }
        }
        let _cleanup = Cleanup {
            servers: targets
                .iter()
                .map(|t| (t.url.clone(), t.prefix.clone()))
                .collect(),
        };
        for t in &targets {
            if (t.name == "stack") != t.json_module {
                eprintln!(
                    "WARNING: {} at {} {} RedisJSON; its JSON items are {}s",
                    t.name,
                    t.url,
                    if t.json_module { "has" } else { "lacks" },
                    t.shape()
                );
            }
            if t.json_module {
                let indexes: Vec<Value> = redis::cmd("FT._LIST")
                    .query_async(&mut t.conn.clone())
                    .await
                    .unwrap_or_default();
                if !indexes.is_empty() {
                    eprintln!(
                        "note: {} RediSearch indexes exist on {} (other clients'); one whose \
                         PREFIX covers every key would also index the bench's documents",
                        indexes.len(),
                        t.url
                    );
                }
            }
        }
        let files = SqliteFiles {
            dir: tempfile::tempdir().expect("tempdir"),
            next: AtomicU64::new(0),
        };
        let mut results = Vec::new();
        let mut memory = Vec::new();
        for target in &targets {
            eprintln!("[{}] 1) get latency ...", target.name);
            let read = read_latency(target, &files, sizes).await;
            eprintln!("[{}] 2) write rate ...", target.name);
            let write = write_rate(target, &files, sizes).await;
            eprintln!("[{}] 3) memory ...", target.name);
            memory.push(
                memory_per_item(target, &files, "json", json_items(sizes.memory_items)).await,
            );
            results.push(TargetResults { read, write });
        }
        if let Some(stack) = targets.iter().find(|t| t.name == "stack") {
            eprintln!("[stack] 3) memory, binary items ...");
            let mut rng = Rng(0xD1B5_4A32_D192_ED03);
            let items = binary_items(sizes.memory_items, &mut rng);
            memory.push(memory_per_item(stack, &files, "binary", items).await);
        }
        if targets.is_empty() {
            eprintln!("NOTE: no Redis reachable: nothing measured");
            return;
        }
        print_summary(
            sizes,
            &targets,
            &results,
            &memory,
            started.elapsed(),
            &load_before,
        );
        if !benchmarking {
            println!("(smoke run with small sizes: run `cargo bench --bench redis` for numbers)");
        }
    });
}
