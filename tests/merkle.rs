//! Merkle state roots (`schemas/MERKLE.md`) checked against an independent implementation.
//!
//! The reference `sync-engine-merkle-v1` is tests/common/merkle_ref.rs (sha2 + hex, nothing
//! from `sync_engine::merkle`), written from MERKLE.md alone, whose own test reproduces the
//! document's worked example; this file recomputes the root of `local` with it from the raw
//! rows (`SELECT id, content_hash FROM sync_items WHERE source = ?`). On SQLite and MariaDB:
//!
//! - the worked example of MERKLE.md gives the documented root;
//! - seeded random histories (puts of JSON and binary, re-puts with new and identical content,
//!   state changes, deletes of present and absent ids, range deletes, replays of old versions,
//!   cache-only puts, restarts) keep `merkle_root`, `item_count`, the stored bucket digests
//!   and a `BTreeMap` model in agreement after every flush; ops that must not move the root
//!   (replays, deletes of absent ids, ...) are often fenced by flushes and checked to leave it
//!   unchanged, and a restart on the same database reports the same root;
//! - digests deleted from the table are backfilled from the rows at start;
//! - inclusion proofs check, carry the path our own tree computes, and fail when tampered
//!   with or compared against the root of another state.

#[macro_use] // `on_raw!`, for queries `Raw` has no method for
mod common;
#[path = "common/merkle_ref.rs"]
mod merkle_ref;

use std::collections::BTreeMap;
use std::fmt;

use sync_engine::merkle::StateRoot;
use sync_engine::{SubmitOptions, SyncEngine, SyncEngineConfig, SyncItem};

use common::{Backend, Raw, XorShift};

const LOCAL: &str = "local";

// ---------------------------------------------------------------------------------------------
// Raw SQL
// ---------------------------------------------------------------------------------------------

/// `(bucket, item_count, digest)` rows of `sync_merkle_buckets` for `local`.
async fn stored_buckets(raw: &mut Raw) -> Vec<(i64, i64, String)> {
    let sql = "SELECT bucket, item_count, digest FROM sync_merkle_buckets WHERE source = ?";
    on_raw!(raw, conn => {
        let rows: Vec<(i64, i64, String)> =
            sqlx::query_as(sql).bind(LOCAL.as_bytes()).fetch_all(&mut *conn).await.unwrap();
        rows
    })
}

/// The stored digests must be the buckets of `rows`: a row for every non-empty bucket, equal
/// to our computation. A bucket that emptied keeps its row, with count 0 and (the XOR of
/// nothing) a zero digest: MERKLE.md says "one row per non-empty bucket", but such rows
/// change no root, so they are accepted as long as they are exactly that.
fn assert_bucket_table(stored: &[(i64, i64, String)], rows: &[(Vec<u8>, String)], ctx: &str) {
    let want = merkle_ref::buckets(rows);
    let mut listed = [false; 256];
    for (bucket, count, digest) in stored {
        let b = usize::try_from(*bucket).ok().filter(|b| *b < 256);
        let b = b.unwrap_or_else(|| panic!("{ctx}: bucket {bucket} out of range"));
        assert!(!listed[b], "{ctx}: bucket {b} listed twice");
        listed[b] = true;
        let expected = (want[b].count as i64, hex::encode(want[b].digest));
        assert_eq!(
            (*count, digest.clone()),
            expected,
            "{ctx}: stored bucket {b}"
        );
    }
    for (b, bucket) in want.iter().enumerate() {
        assert!(
            bucket.count == 0 || listed[b],
            "{ctx}: no row for non-empty bucket {b}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The worked example
// ---------------------------------------------------------------------------------------------

async fn documented_example(backend: Backend) {
    // that our implementation reproduces every number of the page is merkle_ref's own test
    let engine = backend.engine().await;
    let empty = engine.merkle_root(LOCAL).await.unwrap();
    assert_eq!(
        (empty.root.as_str(), empty.item_count),
        (merkle_ref::EMPTY_ROOT, 0)
    );
    for (id, payload, ..) in merkle_ref::EXAMPLE {
        let item = SyncItem::new(id.into(), payload.as_bytes().to_vec());
        engine.submit(item).await.unwrap();
    }
    engine.flush().await.unwrap();

    let expected = StateRoot {
        partition: LOCAL.into(),
        root: merkle_ref::EXAMPLE_ROOT.into(),
        item_count: 3,
    };
    assert_eq!(engine.merkle_root(LOCAL).await.unwrap(), expected);
    assert_eq!(engine.merkle_roots().await.unwrap(), vec![expected]);
    // a partition nobody wrote to is empty
    let other = engine.merkle_root("orders/3").await.unwrap();
    assert_eq!(
        (other.root.as_str(), other.item_count),
        (merkle_ref::EMPTY_ROOT, 0)
    );

    // the table holds the documented hashes, and our recomputation from it gives the root
    let mut raw = backend.raw().await;
    let mut rows = raw.leaves(LOCAL).await;
    rows.sort();
    let mut documented: Vec<(Vec<u8>, String)> = merkle_ref::EXAMPLE
        .iter()
        .map(|(id, _, hash, ..)| (id.as_bytes().to_vec(), hash.to_string()))
        .collect();
    documented.sort();
    assert_eq!(rows, documented);
    assert_eq!(merkle_ref::root(&rows), merkle_ref::EXAMPLE_ROOT);

    // one stored row per bucket 56, 195, 243: count 1, digest = the leaf
    let mut stored = stored_buckets(&mut raw).await;
    stored.sort();
    let mut expected: Vec<(i64, i64, String)> = merkle_ref::EXAMPLE
        .iter()
        .map(|(.., leaf_hex, bucket)| (i64::from(*bucket), 1, leaf_hex.to_string()))
        .collect();
    expected.sort();
    assert_eq!(stored, expected);
    engine.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Random histories
// ---------------------------------------------------------------------------------------------

/// Ids the histories use: shared prefixes for range deletes, multi-byte UTF-8 (the leaf
/// takes the id's *byte* length), one long id and a crowd.
fn id_pool() -> Vec<String> {
    let mut ids: Vec<String> = [
        "a/0", "a/1", "a/2", "a/10", "ab/0", "ab/1", "b/0", "b/1", "b/2", "c", "é/0", "日本/1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.push(format!("long/{}", "x".repeat(245)));
    // enough items that buckets often hold several leaves (their XOR is what is stored)
    ids.extend((0..CROWD).map(crowd_id));
    ids
}

/// How many `n/<k>` ids there are.
const CROWD: usize = 48;

fn crowd_id(k: usize) -> String {
    format!("n/{k}")
}

/// Prefixes of the range deletes: some match several ids, `zz` none, `` all of them.
const PREFIXES: &[&str] = &["a", "a/", "a/1", "ab/", "b/", "é", "n/1", "n/", "zz", ""];
const STATES: &[&str] = &["default", "hot", "cold"];
/// A state no item ever has.
const ABSENT_STATE: &str = "frozen";

#[derive(Clone, PartialEq, Eq)]
enum Content {
    Json(String),
    Binary(Vec<u8>),
    /// JSON text submitted with `SyncItem::binary`: stored as a blob, same content hash.
    ForcedBinary(String),
}

/// Binary as a byte-string literal, so failing histories read as they were written.
impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Json(text) => write!(f, "Json({text:?})"),
            Content::Binary(bytes) => write!(f, "Binary(b\"{}\")", bytes.escape_ascii()),
            Content::ForcedBinary(text) => write!(f, "ForcedBinary({text:?})"),
        }
    }
}

impl Content {
    fn bytes(&self) -> &[u8] {
        match self {
            Content::Json(text) | Content::ForcedBinary(text) => text.as_bytes(),
            Content::Binary(bytes) => bytes,
        }
    }

    fn item(&self, id: &str) -> SyncItem {
        match self {
            Content::Json(text) => SyncItem::new(id.into(), text.as_bytes().to_vec()),
            Content::Binary(bytes) => SyncItem::new(id.into(), bytes.clone()),
            Content::ForcedBinary(text) => SyncItem::binary(id.into(), text.as_bytes().to_vec()),
        }
    }

    /// Few distinct values, so identical contents (and content hashes) recur across ids.
    fn random(rng: &mut XorShift) -> Content {
        let n = rng.below(6);
        match rng.below(7) {
            0 => Content::Json(format!(r#"{{"n":{n}}}"#)),
            1 => Content::Json(format!(" {{ \"n\" : {n} ,\"tags\":[\"x\"] }}\n")),
            2 => Content::Json(format!("[{n}, \"é\"]")),
            3 => Content::Json(n.to_string()),
            4 => Content::Binary(vec![0, n as u8, 0xff, 0xfe]),
            5 if n == 0 => Content::Binary(Vec::new()),
            5 => Content::Binary(format!("not json {n}").into_bytes()),
            _ => Content::ForcedBinary(format!(r#"{{"n":{n}}}"#)),
        }
    }
}

/// Where a put's state comes from (the options win over the item).
#[derive(Debug, Clone, Copy)]
enum StateVia {
    Default,
    Item(&'static str),
    Options(&'static str),
    Both {
        item: &'static str,
        options: &'static str,
    },
}

impl StateVia {
    fn state(self) -> &'static str {
        match self {
            StateVia::Default => "default",
            StateVia::Item(s) | StateVia::Options(s) | StateVia::Both { options: s, .. } => s,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// `submit` (or `submit_with`; `durable` = SQL only) with the engine's clock.
    Put {
        id: String,
        content: Content,
        state: StateVia,
        durable: bool,
    },
    /// A put of every `n/<k>` id of the pool (in one batch, unless tiny batches), so that
    /// buckets hold several leaves.
    Crowd(Vec<Content>),
    /// A cache-only put (`SubmitOptions::cache`): never reaches SQL, so never the root.
    CacheOnly(String),
    SetState(String, &'static str),
    Delete(String),
    DeleteMany(Vec<String>),
    /// A put pinned to a version SQL already has (or a lower one): must change nothing.
    Replay {
        id: String,
        version: u64,
        content: Content,
    },
    /// `delete_at` a version not newer than the stored row's: must change nothing.
    StaleDelete(String, u64),
    DeletePrefix(&'static str),
    DeleteByState(&'static str),
    Flush,
    Restart,
}

/// What the model holds for an id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    content: Content,
    state: &'static str,
}

type Model = BTreeMap<String, Stored>;

/// The `(id, content_hash)` set the root must commit to.
fn leaves_of(model: &Model) -> BTreeMap<Vec<u8>, String> {
    model
        .iter()
        .map(|(id, s)| {
            (
                id.as_bytes().to_vec(),
                merkle_ref::content_hash(s.content.bytes()),
            )
        })
        .collect()
}

/// Applies `op` to the model; returns what `set_state` (1 = found) or a range delete (how
/// many) must answer.
fn apply_to_model(model: &mut Model, op: &Op) -> Option<u64> {
    match op {
        Op::Put {
            id, content, state, ..
        } => {
            let stored = Stored {
                content: content.clone(),
                state: state.state(),
            };
            model.insert(id.clone(), stored);
            None
        }
        Op::Crowd(contents) => {
            for (k, content) in contents.iter().enumerate() {
                let stored = Stored {
                    content: content.clone(),
                    state: "default",
                };
                model.insert(crowd_id(k), stored);
            }
            None
        }
        Op::SetState(id, state) => Some(match model.get_mut(id) {
            Some(stored) => {
                stored.state = state;
                1
            }
            None => 0,
        }),
        Op::Delete(id) => {
            model.remove(id);
            None
        }
        Op::DeleteMany(ids) => {
            ids.iter().for_each(|id| {
                model.remove(id);
            });
            None
        }
        Op::DeletePrefix(prefix) => Some(remove_where(model, |id, _| {
            id.as_bytes().starts_with(prefix.as_bytes())
        })),
        Op::DeleteByState(state) => Some(remove_where(model, |_, s| s.state == *state)),
        Op::CacheOnly(_) | Op::Replay { .. } | Op::StaleDelete(..) | Op::Flush | Op::Restart => {
            None
        }
    }
}

/// Removes every item matching `doomed`; returns how many.
fn remove_where(model: &mut Model, doomed: impl Fn(&str, &Stored) -> bool) -> u64 {
    let before = model.len();
    model.retain(|id, s| !doomed(id, s));
    (before - model.len()) as u64
}

/// One history on one engine, with the model and what it has seen of SQL.
struct Run<'a> {
    backend: &'a Backend,
    config: SyncEngineConfig,
    engine: SyncEngine,
    raw: Raw,
    rng: XorShift,
    seed: u64,
    pool: Vec<String>,
    model: Model,
    /// The version SQL last showed for each id (kept after a delete: the tombstone is newer).
    versions: BTreeMap<String, u64>,
    log: Vec<String>,
    /// Fresh ids for deletes of ids that never existed.
    next_absent: u32,
    checks: usize,
}

impl<'a> Run<'a> {
    async fn new(backend: &'a Backend, config: SyncEngineConfig, seed: u64) -> Run<'a> {
        Run {
            engine: backend.engine_with(config.clone()).await,
            raw: backend.raw().await,
            backend,
            config,
            rng: XorShift(seed),
            seed,
            pool: id_pool(),
            model: Model::new(),
            versions: BTreeMap::new(),
            log: Vec::new(),
            next_absent: 0,
            checks: 0,
        }
    }

    /// The ops so far, numbered: printed with every failure.
    fn history(&self) -> String {
        format!(
            "{} seed {} ({:?}); ops:\n{}",
            self.backend.name,
            self.seed,
            (self.config.batch_flush_count, self.config.batch_flush_ms),
            self.log.join("\n")
        )
    }

    fn random_state(&mut self) -> StateVia {
        let state = self.rng.pick(STATES);
        match self.rng.below(5) {
            0 => StateVia::Default,
            1 => StateVia::Item(state),
            2 => StateVia::Options(state),
            3 => StateVia::Both {
                item: self.rng.pick(STATES),
                options: state,
            },
            _ => StateVia::Item("default"),
        }
    }

    fn next_op(&mut self) -> Op {
        let id = self.rng.pick(&self.pool);
        let present: Vec<String> = self.model.keys().cloned().collect();
        let seen: Vec<(String, u64)> = self.versions.clone().into_iter().collect();
        match self.rng.below(100) {
            0..=34 => Op::Put {
                id,
                content: Content::random(&mut self.rng),
                state: self.random_state(),
                durable: self.rng.below(2) == 0,
            },
            // the same content again, in the same or another state
            35..=39 if !present.is_empty() => {
                let id = self.rng.pick(&present);
                let content = self.model[&id].content.clone();
                Op::Put {
                    id,
                    content,
                    state: self.random_state(),
                    durable: self.rng.below(2) == 0,
                }
            }
            40..=45 => Op::SetState(id, self.rng.pick(STATES)),
            // a pool id, present or not
            46..=53 => Op::Delete(id),
            54..=57 => {
                self.next_absent += 1;
                Op::Delete(format!("gone/{}", self.next_absent))
            }
            58..=60 => {
                let n = 1 + self.rng.below(3);
                Op::DeleteMany((0..n).map(|_| self.rng.pick(&self.pool)).collect())
            }
            61..=68 if !seen.is_empty() => {
                let (id, version) = self.rng.pick(&seen);
                let version = match self.rng.below(4) {
                    0 => version,
                    1 => version - 1,
                    2 => version / 2,
                    _ => 1,
                };
                Op::Replay {
                    id,
                    version: version.max(1), // 0 would mean "the engine's clock"
                    content: Content::random(&mut self.rng),
                }
            }
            69..=72 if !seen.is_empty() => {
                let (id, version) = self.rng.pick(&seen);
                Op::StaleDelete(id, version - self.rng.below(2))
            }
            73..=75 => Op::DeletePrefix(self.rng.pick(PREFIXES)),
            76..=78 => {
                let states = [STATES, &[ABSENT_STATE]].concat();
                Op::DeleteByState(self.rng.pick(&states))
            }
            79 => Op::Crowd((0..CROWD).map(|_| Content::random(&mut self.rng)).collect()),
            80 => Op::CacheOnly(format!("cache/{}", self.rng.below(3))),
            81..=82 => Op::Restart,
            // 83..: and any choice above whose precondition failed
            _ => Op::Flush,
        }
    }

    /// Runs `op` on the engine; returns `set_state`'s answer (1/0) or a range delete's count.
    async fn run_on_engine(&mut self, op: &Op) -> Option<u64> {
        let e = &self.engine;
        match op {
            Op::Put {
                id,
                content,
                state,
                durable,
            } => {
                let options = if *durable {
                    SubmitOptions::durable()
                } else {
                    SubmitOptions::default()
                };
                let (item, options) = match *state {
                    StateVia::Default => (content.item(id), options),
                    StateVia::Item(s) => (content.item(id).with_state(s), options),
                    StateVia::Options(s) => (content.item(id), options.with_state(s)),
                    StateVia::Both { item, options: s } => {
                        (content.item(id).with_state(item), options.with_state(s))
                    }
                };
                e.submit_with(item, options).await.unwrap();
                None
            }
            Op::Crowd(contents) => {
                let items = contents.iter().enumerate();
                let items = items
                    .map(|(k, content)| content.item(&crowd_id(k)))
                    .collect();
                e.submit_many(items).await.unwrap();
                None
            }
            Op::CacheOnly(id) => {
                let item = SyncItem::new(id.clone(), b"cached".to_vec());
                let options = SubmitOptions::cache(sync_engine::CacheTtl::Minute);
                e.submit_with(item, options).await.unwrap();
                None
            }
            Op::SetState(id, state) => Some(e.set_state(id, state).await.unwrap() as u64),
            Op::Delete(id) => {
                e.delete(id).await.unwrap();
                None
            }
            Op::DeleteMany(ids) => {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                e.delete_many(&ids).await.unwrap();
                None
            }
            Op::Replay {
                id,
                version,
                content,
            } => {
                e.submit(content.item(id).with_version(*version))
                    .await
                    .unwrap();
                None
            }
            Op::StaleDelete(id, version) => {
                e.delete_at(id, *version).await.unwrap();
                None
            }
            Op::DeletePrefix(prefix) => Some(e.delete_prefix(prefix).await.unwrap()),
            Op::DeleteByState(state) => Some(e.delete_by_state(state).await.unwrap()),
            Op::Flush | Op::Restart => unreachable!("handled by step"),
        }
    }

    /// Flushes and checks everything against everything: the engine's root and count, our
    /// recomputation from raw SQL, `COUNT(*)`, the stored bucket rows and the model. Returns
    /// the root.
    async fn check(&mut self, why: &str) -> StateRoot {
        self.checks += 1;
        self.engine.flush().await.unwrap();
        let ctx = format!("check {} ({why})", self.checks);
        let got = self.engine.merkle_root(LOCAL).await.unwrap();
        let rows = self.raw.leaves(LOCAL).await;
        let count = self.raw.count(LOCAL).await;
        let stored = stored_buckets(&mut self.raw).await;

        let want = merkle_ref::root(&rows);
        assert_eq!(
            got.root,
            want,
            "{ctx}: engine root vs recomputed from sync_items\n{}",
            self.history()
        );
        assert_eq!(
            (got.item_count, rows.len() as u64),
            (count, count),
            "{ctx}: item_count vs COUNT(*)\n{}",
            self.history()
        );
        let in_sql: BTreeMap<Vec<u8>, String> = rows.iter().cloned().collect();
        assert_eq!(in_sql.len(), rows.len(), "{ctx}: an id twice");
        assert_eq!(
            in_sql,
            leaves_of(&self.model),
            "{ctx}: sync_items vs model\n{}",
            self.history()
        );
        assert_bucket_table(&stored, &rows, &ctx);

        for row in self.raw.rows().await {
            let id = String::from_utf8(row.id).expect("UTF-8 id");
            self.versions.insert(id, row.version as u64);
        }
        got
    }

    async fn restart(&mut self) {
        let before = self.check("before restart").await;
        self.engine.shutdown().await;
        self.engine = self.backend.engine_with(self.config.clone()).await;
        let after = self.check("after restart").await;
        assert_eq!(
            after,
            before,
            "restart changed the root\n{}",
            self.history()
        );
    }

    async fn step(&mut self) {
        let op = self.next_op();
        self.run(op).await
    }

    /// Runs `op` on the engine and the model, checking on the way as described above.
    async fn run(&mut self, op: Op) {
        self.log.push(format!("{:>4}: {op:?}", self.log.len()));
        match op {
            Op::Flush => {
                // (the roots are hashed in debug builds: `merkle_roots` only here, not in
                // every check)
                let got = self.check("flush").await;
                let roots = self.engine.merkle_roots().await.unwrap();
                // every library write is in `local`: the only partition there can be
                assert!(
                    roots.iter().all(|r| *r == got) && (got.item_count == 0 || roots.len() == 1),
                    "merkle_roots {roots:?} vs {got:?}\n{}",
                    self.history()
                );
                return;
            }
            Op::Restart => return self.restart().await,
            _ => {}
        }
        let mut after = self.model.clone();
        let expected = apply_to_model(&mut after, &op);
        // ops that must leave the root alone are fenced by flushes half of the time (the
        // other half they share batches with the ops around them)
        let neutral = leaves_of(&after) == leaves_of(&self.model);
        let fenced = neutral && self.rng.below(2) == 0;
        let before = if fenced {
            Some(self.check("before a root-neutral op").await)
        } else {
            None
        };
        let answer = self.run_on_engine(&op).await;
        assert_eq!(answer, expected, "answer of {op:?}\n{}", self.history());
        self.model = after;
        if let Some(before) = before {
            let now = self.check("after a root-neutral op").await;
            assert_eq!(now, before, "{op:?} changed the root\n{}", self.history());
        }
    }
}

/// Random ops per history (after the first crowd). Every check hashes two full trees, which
/// takes milliseconds in a debug build: this many keeps the test at seconds.
const OPS_PER_HISTORY: usize = 130;

/// Several seeded histories, with the default batches (committed by the flushes, or after
/// 100 ms) and with tiny ones committed along the way; each ends with a restart that must
/// keep the root.
async fn random_histories_match_recomputation(backend: Backend) {
    let tiny_batches = SyncEngineConfig {
        batch_flush_count: 3,
        ..backend.config()
    };
    let cases = [
        (1_u64, backend.config()),
        (0x5eed, tiny_batches),
        (20_240_611, backend.config()),
    ];
    for (seed, config) in cases {
        let mut run = Run::new(&backend, config, seed).await;
        let crowd = (0..CROWD).map(|_| Content::random(&mut run.rng)).collect();
        run.run(Op::Crowd(crowd)).await;
        for _ in 0..OPS_PER_HISTORY {
            run.step().await;
        }
        run.restart().await;
        run.engine.shutdown().await;
        // the next case starts from an empty database again (its model starts empty): deleting
        // everything must give the empty root
        run.engine = backend.engine().await;
        run.engine.delete_prefix("").await.unwrap();
        run.model.clear();
        let empty = run.check("after deleting everything").await;
        assert_eq!(
            (empty.root.as_str(), empty.item_count),
            (merkle_ref::EMPTY_ROOT, 0)
        );
        run.engine.shutdown().await;
    }
}

/// A database with rows and no digests (written before they existed; here, deleted by hand)
/// gets them back from the rows when an engine starts on it.
async fn missing_digests_are_backfilled(backend: Backend) {
    let engine = backend.engine().await;
    for k in 0..40 {
        let item = SyncItem::new(format!("bf/{k}"), format!("[{k}]").into_bytes());
        engine.submit(item).await.unwrap();
    }
    engine.delete("bf/7").await.unwrap();
    engine.flush().await.unwrap();
    let before = engine.merkle_root(LOCAL).await.unwrap();
    engine.shutdown().await;

    let mut raw = backend.raw().await;
    raw.execute("DELETE FROM sync_merkle_buckets").await;
    let engine = backend.engine().await;
    let after = engine.merkle_root(LOCAL).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(after.item_count, 39);
    let rows = raw.leaves(LOCAL).await;
    assert_eq!(after.root, merkle_ref::root(&rows));
    assert_bucket_table(&stored_buckets(&mut raw).await, &rows, "backfilled");
    engine.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Proofs
// ---------------------------------------------------------------------------------------------

/// `n` ids `proof:<k>` (content `v<k>`) whose leaves share bucket `bucket`.
fn ids_in_bucket(bucket: u8, n: usize, skip: &[String]) -> Vec<String> {
    (0..)
        .map(|k| format!("proof:{k}"))
        .filter(|id| !skip.contains(id))
        .filter(|id| bucket_of(id) == bucket)
        .take(n)
        .collect()
}

/// The payload the proof test gives `id`.
fn content_of(id: &str) -> String {
    format!("v{}", id.trim_start_matches("proof:"))
}

/// The bucket of `id` holding its proof-test payload.
fn bucket_of(id: &str) -> u8 {
    merkle_ref::leaf(
        id.as_bytes(),
        &merkle_ref::content_hash(content_of(id).as_bytes()),
    )[0]
}

async fn proofs(backend: Backend) {
    let engine = backend.engine().await;
    // "proof:0" shares its bucket with two more items; twenty others spread elsewhere
    let first = "proof:0".to_string();
    let bucket = bucket_of(&first);
    let mates = ids_in_bucket(bucket, 2, std::slice::from_ref(&first));
    let mut ids = vec![first.clone()];
    ids.extend(mates.iter().cloned());
    let others: Vec<String> = (100..120)
        .map(|k| format!("proof:{k}"))
        .filter(|id| !ids.contains(id))
        .collect();
    ids.extend(others);
    for id in &ids {
        engine
            .submit(SyncItem::new(id.clone(), content_of(id).into_bytes()))
            .await
            .unwrap();
    }
    engine.flush().await.unwrap();
    let root = engine.merkle_root(LOCAL).await.unwrap();

    let proof = engine
        .prove(&first)
        .await
        .unwrap()
        .expect("a proof of a present id");
    assert_eq!(proof.check(), Ok(()));
    assert_eq!(proof.root, root.root);
    assert_eq!(
        (proof.algorithm.as_str(), proof.partition.as_str()),
        ("sync-engine-merkle-v1", LOCAL)
    );
    assert_eq!((proof.id.as_str(), proof.bucket), (first.as_str(), bucket));
    assert_eq!(
        proof.content_hash,
        merkle_ref::content_hash(content_of(&first).as_bytes())
    );
    // the members: exactly the other items of the bucket, as our own computation finds them
    let rows = backend.raw().await.leaves(LOCAL).await;
    let mut members: Vec<(String, String)> = proof
        .bucket_members
        .iter()
        .map(|m| (m.id.clone(), m.content_hash.clone()))
        .collect();
    members.sort();
    let mut want: Vec<(String, String)> = rows
        .iter()
        .filter(|(id, hash)| {
            merkle_ref::leaf(id, hash)[0] == bucket && id.as_slice() != first.as_bytes()
        })
        .map(|(id, hash)| (String::from_utf8(id.clone()).unwrap(), hash.clone()))
        .collect();
    want.sort();
    assert_eq!(members, want);
    assert_eq!(members.len(), 2);
    // the path: the sibling at each level of our tree, leaf level first
    let levels = merkle_ref::levels(&rows);
    let siblings: Vec<String> = (0..8)
        .map(|level| hex::encode(levels[level][(bucket as usize >> level) ^ 1]))
        .collect();
    assert_eq!(proof.path, siblings);

    // a tampered content hash no longer proves anything
    let mut tampered = proof.clone();
    tampered.content_hash = merkle_ref::content_hash(b"something else");
    assert!(tampered.check().is_err(), "a tampered content_hash checks");
    // nor does a proof missing one of the bucket's members
    let mut short = proof.clone();
    short.bucket_members.pop();
    assert!(short.check().is_err(), "a proof without a member checks");

    // one more write: the old proof does not lead to the new root, a new proof does
    engine
        .submit(SyncItem::new("proof:extra".into(), b"more".to_vec()))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    let newer = engine.merkle_root(LOCAL).await.unwrap();
    assert_ne!(newer.root, root.root);
    let mut stale = proof.clone();
    stale.root = newer.root.clone();
    assert!(
        stale.check().is_err(),
        "a proof checks against another state's root"
    );
    let fresh = engine.prove(&first).await.unwrap().unwrap();
    assert_eq!(
        (fresh.check(), fresh.root.as_str()),
        (Ok(()), newer.root.as_str())
    );

    // absent ids have no proof; a deleted member leaves the bucket's proofs
    assert_eq!(engine.prove("proof:never").await.unwrap(), None);
    engine.delete(&mates[0]).await.unwrap();
    engine.flush().await.unwrap();
    assert_eq!(engine.prove(&mates[0]).await.unwrap(), None);
    let after = engine.prove(&first).await.unwrap().unwrap();
    assert_eq!(after.check(), Ok(()));
    assert_eq!(after.root, engine.merkle_root(LOCAL).await.unwrap().root);
    let member_ids: Vec<&str> = after.bucket_members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(member_ids, vec![mates[1].as_str()]);
    engine.shutdown().await;
}

on_both_backends!(
    documented_example,
    random_histories_match_recomputation,
    missing_digests_are_backfilled,
    proofs,
);
