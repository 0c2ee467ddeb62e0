//! What the stores must hold after a sidecar run, checked from the outside: the records a test
//! produced are the truth, and SQL, Redis, the confirmations, the committed offsets and the
//! checkpoint roots are each held against them (or against each other) with the test's own
//! code: `merkle_ref` for roots, raw SQL and raw Redis commands for the tiers, no engine call.
//!
//! Also the helpers those scenarios share: a sidecar process that must not exit by itself,
//! fault-proxied URLs, and the timings of the confirmation flow.
//!
//! Declared by a test binary as `#[path = "common/stores.rs"] mod stores;`, next to
//! `mod common;` and the `kafka` and `merkle_ref` modules it uses.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Raw;
use crate::kafka::{confirmations, differences, events, Out, Pipeline, Position, Rec, Sidecar};
use crate::merkle_ref;

// ---------------------------------------------------------------------------------------
// The truth: what the produced records leave behind

/// What the last record produced for an id leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Last {
    /// A put: the row holds `value` at `version` (its offset + 1); Redis holds it too when
    /// the record was routed there.
    Put {
        value: Vec<u8>,
        version: i64,
        redis: bool,
    },
    /// A delete: no row, no key.
    Deleted,
}

/// Whether a put goes to Redis: no `sync-route` header, or one that names `redis`.
pub fn routed_to_redis(record: &Rec) -> bool {
    routed_to(record, "redis")
}

/// Whether a put goes to SQL: no `sync-route` header, or one that names `sql`.
pub fn routed_to_sql(record: &Rec) -> bool {
    routed_to(record, "sql")
}

fn routed_to(record: &Rec, tier: &str) -> bool {
    match record
        .headers
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case("sync-route"))
    {
        None => true,
        Some((_, route)) => route.split(',').any(|r| r.trim() == tier),
    }
}

/// Per id, what its last record (the highest offset: one key, one partition) leaves. Panics
/// if an id reached two partitions (the per-key order the checks rely on would not hold).
pub fn last_per_id(sent: &[(Rec, Position)]) -> BTreeMap<Vec<u8>, Last> {
    let mut by_id: BTreeMap<Vec<u8>, (Position, Last)> = BTreeMap::new();
    for (record, position) in sent {
        let id = record.key.clone().expect("records have keys");
        let last = match &record.value {
            Some(value) => Last::Put {
                value: value.clone(),
                version: position.1 + 1,
                redis: routed_to_redis(record),
            },
            None => Last::Deleted,
        };
        match by_id.get(&id) {
            Some((seen, _)) => {
                assert_eq!(
                    seen.0,
                    position.0,
                    "id {} reached two partitions",
                    String::from_utf8_lossy(&id)
                );
                if position.1 > seen.1 {
                    by_id.insert(id, (*position, last));
                }
            }
            None => {
                by_id.insert(id, (*position, last));
            }
        }
    }
    by_id
        .into_iter()
        .map(|(id, (_, last))| (id, last))
        .collect()
}

/// The first `n` lines of a list of problems, and how many there are.
pub fn summary(problems: &[String], n: usize) -> String {
    let mut text = problems
        .iter()
        .take(n)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    if problems.len() > n {
        text.push_str(&format!("\n… and {} more", problems.len() - n));
    }
    text
}

// ---------------------------------------------------------------------------------------
// Confirmations

fn confirmation_validator() -> jsonschema::Validator {
    let path = format!(
        "{}/schemas/confirmation.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the confirmations of a run added up to.
#[derive(Debug, Default)]
pub struct Confirmed {
    pub events: usize,
    /// Records confirmed more than once (after a rebalance, crash or outage).
    pub repeated: usize,
    /// Items whose outcome is `unchanged` (replays).
    pub unchanged: usize,
}

/// Every produced record is confirmed at least once, nothing else is, and each confirmed
/// item matches its record (schemas/confirmation.schema.json): the same id, `put` for a
/// value and `delete` for a null, the payload's hash, its tiers, an outcome of `applied` or
/// `unchanged`. `has_redis`: the sidecar had a Redis tier (it then lists `redis`).
pub fn check_confirmations(outs: &[Out], sent: &[(Rec, Position)], has_redis: bool) -> Confirmed {
    let validator = confirmation_validator();
    let produced: HashMap<Position, &Rec> = sent.iter().map(|(r, p)| (*p, r)).collect();
    let mut seen: BTreeMap<Position, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut stats = Confirmed::default();
    for c in confirmations(outs) {
        stats.events += 1;
        for e in validator.iter_errors(&c) {
            problems.push(format!(
                "invalid confirmation ({e} at {}): {c}",
                e.instance_path()
            ));
        }
        let partition = c["partition"].as_i64().unwrap_or(-1) as i32;
        for item in c["items"].as_array().into_iter().flatten() {
            let offset = item["offset"].as_i64().unwrap_or(-1);
            *seen.entry((partition, offset)).or_insert(0) += 1;
            let Some(record) = produced.get(&(partition, offset)) else {
                problems.push(format!(
                    "confirmed but never produced: ({partition}, {offset}) {item}"
                ));
                continue;
            };
            let key = record.key.as_deref().map(String::from_utf8_lossy);
            if item["id"].as_str() != key.as_deref() {
                problems.push(format!(
                    "({partition}, {offset}): id of {item}, key {key:?}"
                ));
            }
            match item["outcome"].as_str() {
                Some("applied") => {}
                Some("unchanged") => stats.unchanged += 1,
                _ => problems.push(format!("({partition}, {offset}): outcome of {item}")),
            }
            let tiers: BTreeSet<&str> = item["tiers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let mut expected_tiers = BTreeSet::new();
            match &record.value {
                Some(value) => {
                    if item["op"] != "put" {
                        problems.push(format!("({partition}, {offset}): a put, confirmed {item}"));
                    }
                    let hash = sync_engine::item::content_hash(value);
                    if item["content_hash"].as_str() != Some(hash.as_str()) {
                        problems.push(format!("({partition}, {offset}): hash {hash}, {item}"));
                    }
                    if routed_to_sql(record) {
                        expected_tiers.insert("sql");
                    }
                    if has_redis && routed_to_redis(record) {
                        expected_tiers.insert("redis");
                    }
                }
                None => {
                    if item["op"] != "delete" {
                        problems.push(format!(
                            "({partition}, {offset}): a delete, confirmed {item}"
                        ));
                    }
                    expected_tiers.insert("sql");
                    if has_redis {
                        expected_tiers.insert("redis");
                    }
                }
            }
            if tiers != expected_tiers {
                problems.push(format!(
                    "({partition}, {offset}): tiers {expected_tiers:?} expected, {item}"
                ));
            }
        }
    }
    let missing: Vec<String> = sent
        .iter()
        .filter(|(_, position)| !seen.contains_key(position))
        .map(|(_, position)| format!("never confirmed: {position:?}"))
        .collect();
    problems.extend(missing);
    assert!(
        problems.is_empty(),
        "{} problems with the confirmations of {} records:\n{}",
        problems.len(),
        sent.len(),
        summary(&problems, 30)
    );
    stats.repeated = seen.values().filter(|n| **n > 1).count();
    stats
}

/// The CreateTime (ms since the epoch) of every confirmation event, in order.
pub fn confirmation_times(outs: &[Out]) -> Vec<i64> {
    let mut times: Vec<i64> = outs
        .iter()
        .filter(|o| {
            o.value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<Value>(v).ok())
                .is_some_and(|v| v["type"] == "confirmation")
        })
        .filter_map(|o| o.timestamp_ms)
        .collect();
    times.sort_unstable();
    times
}

/// How long after `t_ms` the sidecar produced its first confirmation (None: none after it).
pub fn first_after(times: &[i64], t_ms: i64) -> Option<i64> {
    times.iter().find(|t| **t >= t_ms).map(|t| t - t_ms)
}

/// The longest stretch of `[from_ms, to_ms]` in which no confirmation was produced.
pub fn longest_gap(times: &[i64], from_ms: i64, to_ms: i64) -> i64 {
    let mut last = from_ms;
    let mut gap = 0;
    for t in times.iter().filter(|t| **t > from_ms && **t < to_ms) {
        gap = gap.max(t - last);
        last = *t;
    }
    gap.max(to_ms - last)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------
// SQL

/// SQL holds exactly the last put of every id (its bytes, at version = offset + 1), and no
/// row for a deleted id or for an id never produced.
pub async fn check_sql(raw: &mut Raw, expected: &BTreeMap<Vec<u8>, Last>) {
    let stored = raw.contents().await;
    let wanted: BTreeMap<Vec<u8>, (Vec<u8>, i64)> = expected
        .iter()
        .filter_map(|(id, last)| match last {
            Last::Put { value, version, .. } => Some((id.clone(), (value.clone(), *version))),
            Last::Deleted => None,
        })
        .collect();
    let differences = differences(&stored, &wanted);
    assert!(
        differences.is_empty(),
        "SQL: {} of {} ids differ from the last record produced (payload, version):\n{}",
        differences.len(),
        expected.len(),
        summary(&differences, 30)
    );
}

/// How many ids `sync_redis_repairs` holds (ids Redis may be wrong about).
pub async fn repairs_pending(raw: &mut Raw) -> i64 {
    let sql = "SELECT COUNT(*) FROM sync_redis_repairs";
    match raw {
        Raw::MySql(conn) => sqlx::query_scalar(sql).fetch_one(&mut *conn).await.unwrap(),
        Raw::Sqlite(conn) => sqlx::query_scalar(sql).fetch_one(&mut *conn).await.unwrap(),
    }
}

// ---------------------------------------------------------------------------------------
// Redis, read directly (no engine, no repair)

/// A Redis server and the key prefix of one pipeline on it.
#[derive(Clone)]
pub struct RedisKeys {
    pub url: String,
    /// No glob characters (`*?[]\`): it is used in SCAN MATCH as is.
    pub prefix: String,
}

impl RedisKeys {
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Every item key under the prefix, as id -> the `payload` field of its hash (an error
    /// text for a key that is not a hash or has no payload). Keys whose first byte after the
    /// prefix is 0xFF (state sets, the Merkle mirror) are not items.
    pub async fn items(&self) -> BTreeMap<Vec<u8>, Result<Vec<u8>, String>> {
        let mut con = self.connection().await;
        let pattern = format!("{}*", self.prefix);
        let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .unwrap();
            keys.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let prefix = self.prefix.as_bytes();
        let keys: Vec<Vec<u8>> = keys
            .into_iter()
            .filter(|k| k.get(prefix.len()) != Some(&0xFF))
            .collect();
        if keys.is_empty() {
            return BTreeMap::new();
        }
        let mut types = redis::pipe();
        for key in &keys {
            types.cmd("TYPE").arg(key);
        }
        let types: Vec<String> = types.query_async(&mut con).await.unwrap();
        // HGET of a key that is not a hash fails the pipeline: only hashes are asked
        let hashes: Vec<&Vec<u8>> = keys
            .iter()
            .zip(&types)
            .filter(|(_, t)| *t == "hash")
            .map(|(k, _)| k)
            .collect();
        let mut asked = redis::pipe();
        for key in &hashes {
            asked.cmd("HGET").arg(*key).arg("payload");
        }
        let values: Vec<Option<Vec<u8>>> = if hashes.is_empty() {
            Vec::new()
        } else {
            asked.query_async(&mut con).await.unwrap()
        };
        let mut by_key: HashMap<&Vec<u8>, Option<Vec<u8>>> =
            hashes.into_iter().zip(values).collect();
        keys.iter()
            .zip(&types)
            .map(|(key, kind)| {
                let id = key[prefix.len()..].to_vec();
                let value = match by_key.remove(key) {
                    Some(Some(payload)) => Ok(payload),
                    Some(None) => Err("a hash without payload".to_string()),
                    None => Err(format!("a {kind}, not a hash")),
                };
                (id, value)
            })
            .collect()
    }

    /// Where Redis differs from what it must hold: for every id whose last record is a put
    /// routed to Redis, its payload; for every other id (deleted, SQL only, never produced),
    /// no key.
    pub async fn differences(&self, expected: &BTreeMap<Vec<u8>, Last>) -> Vec<String> {
        let wanted: BTreeMap<Vec<u8>, Result<Vec<u8>, String>> = expected
            .iter()
            .filter_map(|(id, last)| match last {
                Last::Put {
                    value, redis: true, ..
                } => Some((id.clone(), Ok(value.clone()))),
                _ => None,
            })
            .collect();
        differences(&self.items().await, &wanted)
    }

    /// Polls until Redis holds exactly what it must (see `differences`); returns when it first
    /// did. Panics at the deadline with the ids still wrong and `context()`.
    pub async fn wait_equal(
        &self,
        expected: &BTreeMap<Vec<u8>, Last>,
        deadline: Duration,
        context: impl Fn() -> String,
    ) -> Instant {
        let end = Instant::now() + deadline;
        loop {
            let differences = self.differences(expected).await;
            if differences.is_empty() {
                return Instant::now();
            }
            assert!(
                Instant::now() < end,
                "Redis did not converge to SQL within {deadline:?}: {} ids differ:\n{}\n{}",
                differences.len(),
                summary(&differences, 30),
                context()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Roots and `verify`

/// The engine's name of a source partition (the `source` column): `<topic>/<partition>`.
pub fn source(p: &Pipeline, partition: i32) -> String {
    format!("{}/{partition}", p.topic("in"))
}

/// For every partition: the last checkpoint event on the output topic states the root (by
/// `merkle_ref`, from `SELECT id, content_hash … WHERE source = ?`) and the size of its SQL
/// rows, at the partition's last offset (`ends` holds each partition's log end).
pub async fn check_roots(p: &Pipeline, raw: &mut Raw, outs: &[Out], ends: &BTreeMap<i32, i64>) {
    let checkpoints = events(outs, "checkpoint");
    let mut problems = Vec::new();
    for partition in 0..p.partitions {
        let source = source(p, partition);
        let rows = raw.leaves(&source).await;
        let root = merkle_ref::root(&rows);
        let last = checkpoints
            .iter()
            .rfind(|c| c["partition"].as_i64() == Some(partition as i64));
        let Some(last) = last else {
            problems.push(format!("{source}: no checkpoint event"));
            continue;
        };
        if last["state_root"].as_str() != Some(root.as_str())
            || last["item_count"].as_u64() != Some(rows.len() as u64)
        {
            problems.push(format!(
                "{source}: the last checkpoint {last} states another set than SQL's {} rows \
                 (root {root})",
                rows.len()
            ));
        }
        if let Some(end) = ends.get(&partition) {
            if last["offset"].as_i64() != Some(end - 1) {
                problems.push(format!(
                    "{source}: the last checkpoint {last} is not at the last offset {}",
                    end - 1
                ));
            }
        }
    }
    assert!(problems.is_empty(), "roots:\n{}", problems.join("\n"));
}

/// `sync-engine verify --pipeline <file>` exits 0 (SQL, the stored digests, Redis and the
/// newest checkpoints agree).
pub fn verify_ok(pipeline: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_sync-engine"))
        .args(["verify", "--pipeline"])
        .arg(pipeline)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "verify {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// Processes and proxied URLs

/// A sidecar that must not exit unless it is told to.
pub struct Watched {
    pub sidecar: Sidecar,
}

impl Watched {
    pub fn new(sidecar: Sidecar) -> Watched {
        Watched { sidecar }
    }

    /// Panics with the process's log if it exited by itself.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.sidecar.try_status() {
            panic!(
                "sidecar {} exited by itself {when} ({status}); its log:\n{}",
                self.sidecar.n,
                log_excerpt(&self.sidecar.log())
            );
        }
    }

    /// SIGTERM, then exit 0 within 30 s.
    pub fn stop(&mut self) {
        self.assert_alive("before its SIGTERM");
        self.sidecar.stop();
    }
}

/// Holds for `d` (pacing a load or a fault window, not waiting for a condition), checking
/// every 200 ms that each of `running` is still alive.
pub async fn hold(running: &mut [Watched], d: Duration, when: &str) {
    let end = Instant::now() + d;
    loop {
        for w in running.iter_mut() {
            w.assert_alive(when);
        }
        let now = Instant::now();
        if now >= end {
            return;
        }
        tokio::time::sleep((end - now).min(Duration::from_millis(200))).await;
    }
}

/// "host:port" of a URL like `mysql://user@host:port/db` or `redis://host:port`.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, a)| a)
        .to_string()
}

/// `url` with its host:port replaced by `addr` (a fault proxy's).
pub fn through(url: &str, addr: &str) -> String {
    url.replacen(&host_port(url), addr, 1)
}

/// The warnings and errors of a sidecar log (each distinct message once, with a count), then
/// its last lines: the readable part of a long log.
pub fn log_excerpt(log: &str) -> String {
    let log = &strip_colors(log);
    let mut counts: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for line in log.lines() {
        if line.contains(" WARN ") || line.contains(" ERROR ") || line.contains("panicked") {
            // the message without its timestamp: the same warning repeated counts once
            let message = line.split_once(' ').map_or(line, |(_, m)| m);
            let entry = counts
                .entry(message.chars().take(160).collect())
                .or_insert((0, line.to_string()));
            entry.0 += 1;
        }
    }
    let mut warnings: Vec<String> = counts
        .into_values()
        .map(|(n, line)| format!("{n:>5}× {line}"))
        .collect();
    warnings.truncate(60);
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    format!(
        "--- warnings and errors (first of each) ---\n{}\n--- last lines ---\n{tail}",
        warnings.join("\n")
    )
}

/// The text without its ANSI color sequences (`ESC [ … m`), as tracing writes them.
pub fn strip_colors(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `log_excerpt` of each process's log in a pipeline's combined log.
pub fn logs_excerpt(all: &str) -> String {
    all.split("===== ")
        .filter(|s| !s.is_empty())
        .map(|section| {
            let (name, log) = section.split_once('\n').unwrap_or((section, ""));
            format!("===== {name}\n{}", log_excerpt(log))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
