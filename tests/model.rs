//! Model-based property test of the engine on real SQL.
//!
//! Random sequences of puts, deletes, `set_state`, range deletes, reads, flushes, L1 clears and
//! restarts run against the engine and, in parallel, against a `BTreeMap` model. Every reply
//! is checked on the way (`set_state`'s bool, range-delete counts, read-your-writes `get`s);
//! after a final flush the engine (through L1 and through SQL) and the raw `sync_items` table
//! must equal the model exactly: id bytes, payload bytes and column, hash, state, byte order.
//!
//! Ids are built from pieces chosen to collide often and to form tricky prefixes (`%`, `_`,
//! `\`, a trailing space, a non-ASCII letter); contents are JSON with odd whitespace and key
//! order (kept verbatim), binary with NUL bytes, almost-JSON, empty and large payloads.
//!
//! A failure is shrunk by proptest and reported as the numbered op sequence that reproduces
//! it. `PROPTEST_CASES` overrides the number of cases.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use sha2::{Digest, Sha256};
use sqlx::Connection;
use sync_engine::{ContentType, SubmitOptions, SyncEngine, SyncEngineConfig, SyncItem};

use common::{Backend, RawRow};

// ---------------------------------------------------------------------------------------------
// Operations and their generators
// ---------------------------------------------------------------------------------------------

/// Pieces ids are built from (1–3 of them): `a` is a prefix of most, `%` `_` `\` are LIKE
/// metacharacters, `a ` collides with `a` under PAD SPACE collations, `é` is two bytes.
const PIECES: &[&str] = &["a", "A", "a%", "a_", "a\\", "b.", "b:", "é", "a "];
/// States items are given.
const STATES: &[&str] = &["default", "delta", "merged", "x%"];
/// States no item has, some of them LIKE-matching or PAD-SPACE-equal to the real ones.
const ABSENT_STATES: &[&str] = &["x", "x_", "X%", "DEFAULT", "default ", "delt_"];
/// Prefixes every final check scans (plus every prefix the sequence deleted); `è` shares its
/// first UTF-8 byte with `é`.
const CHECK_PREFIXES: &[&str] = &[
    "", "a", "a%", "a_", "a\\", "A", "b", "b.", "é", "è", "a ", "aa", "a%a", "a\\a", "a_a",
];
/// Ids no generated sequence can produce: must read as absent.
const NEVER_IDS: &[&str] = &["zzz", "A A", "a%%%%", "ä"];

#[derive(Clone, PartialEq, Eq)]
enum Content {
    /// Text that parses as JSON; must be stored verbatim in `payload`.
    Json(String),
    /// Anything else; must be stored in `payload_blob`.
    Binary(Vec<u8>),
}

impl Content {
    fn bytes(&self) -> &[u8] {
        match self {
            Content::Json(text) => text.as_bytes(),
            Content::Binary(bytes) => bytes,
        }
    }

    fn is_json(&self) -> bool {
        matches!(self, Content::Json(_))
    }
}

/// Bytes as a Rust byte-string literal, abbreviated when long.
struct Bytes<'a>(&'a [u8]);

impl fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= 160 {
            write!(f, "b\"{}\"", self.0.escape_ascii())
        } else {
            write!(
                f,
                "<{} bytes, sha256 {}…, starting b\"{}\">",
                self.0.len(),
                &sha256_hex(self.0)[..12],
                self.0[..24].escape_ascii()
            )
        }
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Json(text) if text.len() <= 160 => write!(f, "Json({text:?})"),
            Content::Json(text) => write!(f, "Json({:?})", Bytes(text.as_bytes())),
            Content::Binary(bytes) => write!(f, "Binary({:?})", Bytes(bytes)),
        }
    }
}

/// One step of a sequence; `I` is how it names an id (generated as [`IdChoice`], run as
/// `String`).
#[derive(Clone, Debug)]
enum Op<I = String> {
    /// `submit`/`submit_with`: `item_state` through `SyncItem::with_state`, `opt_state`
    /// through `SubmitOptions::with_state` (which wins); `durable` picks
    /// `SubmitOptions::durable()` over the default options (both reach SQL).
    Put {
        id: I,
        content: Content,
        item_state: Option<&'static str>,
        opt_state: Option<&'static str>,
        durable: bool,
    },
    Delete(I),
    SetState(I, &'static str),
    DeletePrefix(I),
    DeleteByState(&'static str),
    /// `get` mid-sequence: read-your-writes from pending, cache or SQL.
    Get(I),
    Flush,
    ClearL1,
    /// `shutdown` and a new engine on the same database.
    Restart,
}

impl<I> Op<I> {
    fn map_ids(self, f: impl Fn(I) -> String) -> Op {
        match self {
            Op::Put {
                id,
                content,
                item_state,
                opt_state,
                durable,
            } => Op::Put {
                id: f(id),
                content,
                item_state,
                opt_state,
                durable,
            },
            Op::Delete(id) => Op::Delete(f(id)),
            Op::SetState(id, state) => Op::SetState(f(id), state),
            Op::DeletePrefix(prefix) => Op::DeletePrefix(f(prefix)),
            Op::DeleteByState(state) => Op::DeleteByState(state),
            Op::Get(id) => Op::Get(f(id)),
            Op::Flush => Op::Flush,
            Op::ClearL1 => Op::ClearL1,
            Op::Restart => Op::Restart,
        }
    }
}

/// How a generated op picks its id (or prefix): mostly from the case's small pool, so ops
/// collide, sometimes a fresh one; a prefix is often the first characters of a pool id.
#[derive(Clone, Debug)]
enum IdChoice {
    Pool(Index),
    PoolPrefix(Index, Index),
    Fresh(String),
}

impl IdChoice {
    fn resolve(self, pool: &[String]) -> String {
        match self {
            IdChoice::Pool(i) => i.get(pool).clone(),
            IdChoice::PoolPrefix(i, len) => {
                let id = i.get(pool);
                let chars = len.index(id.chars().count() + 1);
                id.chars().take(chars).collect()
            }
            IdChoice::Fresh(id) => id,
        }
    }
}

fn id_choice() -> impl Strategy<Value = IdChoice> {
    prop_oneof![
        5 => any::<Index>().prop_map(IdChoice::Pool),
        1 => id_strategy().prop_map(IdChoice::Fresh),
    ]
}

fn id_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(select(PIECES), 1..=1),
        3 => prop::collection::vec(select(PIECES), 2..=2),
        1 => prop::collection::vec(select(PIECES), 3..=3),
    ]
    .prop_map(|pieces| pieces.concat())
}

fn prefix_choice() -> impl Strategy<Value = IdChoice> {
    prop_oneof![
        1 => Just(IdChoice::Fresh(String::new())),
        4 => (any::<Index>(), any::<Index>()).prop_map(|(i, len)| IdChoice::PoolPrefix(i, len)),
        3 => prop::collection::vec(select(PIECES), 1..=2).prop_map(|p| IdChoice::Fresh(p.concat())),
        2 => select(&["b", "aa", "a%a", "a\\a", "é", "A"][..])
            .prop_map(|p| IdChoice::Fresh(p.to_string())),
    ]
}

fn ws() -> impl Strategy<Value = &'static str> {
    select(&["", "", "", " ", "  ", "\t", "\n", "\r\n", " \n\t "][..])
}

const JSON_SCALARS: &[&str] = &[
    "0",
    "-0",
    "-0.0",
    "1.0e3",
    "1E+2",
    "2.5e-7",
    "-12.50",
    "123456789012345678901234567890",
    "true",
    "false",
    "null",
    r#""""#,
    r#""é""#,
    r#""\u00e9""#,
    r#""a\"b""#,
    r#""\\""#,
    r#""\/""#,
    r#""😀 日本""#,
    r#""\ud83d\ude00""#,
    r#""\u0000""#,
    r#""%_\\%""#,
    r#""  trailing  ""#,
];

const JSON_KEYS: &[&str] = &[
    r#""a""#,
    r#""b""#,
    r#""é""#,
    r#""\u0062""#,
    r#""""#,
    r#""a b""#,
];

fn json_value() -> impl Strategy<Value = String> {
    select(JSON_SCALARS)
        .prop_map(String::from)
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                (
                    prop::collection::vec(
                        (ws(), select(JSON_KEYS), ws(), ws(), inner.clone(), ws()),
                        0..4
                    ),
                    ws()
                )
                    .prop_map(|(members, empty_ws)| {
                        if members.is_empty() {
                            return format!("{{{empty_ws}}}");
                        }
                        let members: Vec<String> = members
                            .into_iter()
                            .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }),
                (prop::collection::vec((ws(), inner, ws()), 0..4), ws()).prop_map(
                    |(items, empty_ws)| {
                        if items.is_empty() {
                            return format!("[{empty_ws}]");
                        }
                        let items: Vec<String> = items
                            .into_iter()
                            .map(|(a, v, b)| format!("{a}{v}{b}"))
                            .collect();
                        format!("[{}]", items.join(","))
                    }
                ),
            ]
        })
}

/// Text that is *not* JSON although it looks like it (stored as binary).
const ALMOST_JSON: &[&str] = &[
    "{\"a\":1} x",
    "{\"a\":1",
    "{\"a\":1}{\"b\":2}",
    "[1,]",
    "{a:1}",
    "'a'",
    "NaN",
    "01",
    "plain text ",
    " ",
];

fn content_strategy() -> impl Strategy<Value = Content> {
    prop_oneof![
        10 => (ws(), json_value(), ws()).prop_map(|(a, v, b)| Content::Json(format!("{a}{v}{b}"))),
        8 => (prop::collection::vec(any::<u8>(), 0..40), any::<Index>()).prop_map(|(mut b, at)| {
            b.insert(at.index(b.len() + 1), 0);
            Content::Binary(b)
        }),
        2 => select(ALMOST_JSON).prop_map(|s| Content::Binary(s.as_bytes().to_vec())),
        1 => Just(Content::Binary(Vec::new())),
        // past 64 KiB: a BLOB/TEXT (rather than LONG*) column would truncate or reject these
        1 => (any::<u8>(), 66_000usize..70_000).prop_map(|(seed, len)| {
            Content::Binary((0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect())
        }),
        1 => (select(&["a", "é", " "][..]), 66_000usize..70_000)
            .prop_map(|(c, n)| Content::Json(format!("{{ \"k\" : \"{}\" }}", c.repeat(n / c.len())))),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op<IdChoice>> {
    let put = (
        id_choice(),
        content_strategy(),
        prop::option::weighted(0.3, select(STATES)),
        prop::option::weighted(0.5, select(STATES)),
        any::<bool>(),
    )
        .prop_map(|(id, content, item_state, opt_state, durable)| Op::Put {
            id,
            content,
            item_state,
            opt_state,
            durable,
        });
    prop_oneof![
        14 => put,
        4 => id_choice().prop_map(Op::Delete),
        3 => (id_choice(), select(STATES)).prop_map(|(id, s)| Op::SetState(id, s)),
        3 => id_choice().prop_map(Op::Get),
        1 => prefix_choice().prop_map(Op::DeletePrefix),
        1 => prop_oneof![4 => select(STATES), 1 => select(ABSENT_STATES)].prop_map(Op::DeleteByState),
        2 => Just(Op::Flush),
        1 => Just(Op::ClearL1),
        1 => Just(Op::Restart),
    ]
}

/// Engine limits a case runs with: tiny batches and a tiny L1 make the writer commit on its
/// own timer while the sequence goes on, and make L1 evict and `submit` wait for room.
#[derive(Clone, Debug)]
struct Settings {
    batch_flush_ms: u64,
    batch_flush_count: usize,
    l1_max_bytes: usize,
}

impl Settings {
    fn config(&self, backend: &Backend) -> SyncEngineConfig {
        SyncEngineConfig {
            batch_flush_ms: self.batch_flush_ms,
            batch_flush_count: self.batch_flush_count,
            l1_max_bytes: self.l1_max_bytes,
            ..backend.config()
        }
    }
}

fn settings_strategy() -> impl Strategy<Value = Settings> {
    let defaults = SyncEngineConfig::default();
    prop_oneof![
        2 => Just(Settings {
            batch_flush_ms: defaults.batch_flush_ms,
            batch_flush_count: defaults.batch_flush_count,
            l1_max_bytes: defaults.l1_max_bytes,
        }),
        3 => (
            select(&[1u64, 3, 20][..]),
            select(&[1usize, 2, 5, 1000][..]),
            select(vec![6_000usize, 100_000, defaults.l1_max_bytes]),
        )
            .prop_map(|(batch_flush_ms, batch_flush_count, l1_max_bytes)| Settings {
                batch_flush_ms,
                batch_flush_count,
                l1_max_bytes,
            }),
    ]
}

fn case_strategy() -> impl Strategy<Value = (Settings, Vec<Op>)> {
    (
        settings_strategy(),
        prop::collection::vec(id_strategy(), 1..10),
        prop::collection::vec(op_strategy(), 1..60),
    )
        .prop_map(|(settings, pool, ops)| {
            let ops = ops
                .into_iter()
                .map(|op| op.map_ids(|choice| choice.resolve(&pool)))
                .collect();
            (settings, ops)
        })
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    content: Vec<u8>,
    json: bool,
    state: String,
}

type Model = BTreeMap<String, Stored>;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Removes every model item matching `doomed`; returns how many.
fn remove_where(model: &mut Model, doomed: impl Fn(&str, &Stored) -> bool) -> u64 {
    let before = model.len();
    model.retain(|id, stored| !doomed(id, stored));
    (before - model.len()) as u64
}

// ---------------------------------------------------------------------------------------------
// Running a sequence
// ---------------------------------------------------------------------------------------------

/// Awaits one engine call: an error or no answer within [`STEP_TIMEOUT`] fails the case.
async fn call<T>(
    future: impl Future<Output = sync_engine::Result<T>>,
    ctx: &str,
) -> Result<T, TestCaseError> {
    within(future, ctx)
        .await?
        .map_err(|e| TestCaseError::fail(format!("{ctx}: engine error: {e}")))
}

async fn within<T>(future: impl Future<Output = T>, ctx: &str) -> Result<T, TestCaseError> {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .map_err(|_| {
            TestCaseError::fail(format!("{ctx}: no answer within {STEP_TIMEOUT:?} (hung)"))
        })
}

/// One item as the engine returned it against the model's entry for `id`.
fn check_item(
    got: Option<&SyncItem>,
    want: Option<&Stored>,
    id: &str,
    ctx: &str,
) -> Result<(), TestCaseError> {
    match (got, want) {
        (None, None) => Ok(()),
        (Some(got), Some(want)) => {
            prop_assert_eq!(got.id(), id, "{}: wrong id", ctx);
            prop_assert!(
                got.content() == want.content.as_slice(),
                "{}: {:?}: content {:?}, model {:?}",
                ctx,
                id,
                Bytes(got.content()),
                Bytes(&want.content)
            );
            prop_assert_eq!(got.state(), want.state.as_str(), "{}: {:?}: state", ctx, id);
            let kind = if want.json {
                ContentType::Json
            } else {
                ContentType::Binary
            };
            prop_assert_eq!(got.content_type(), kind, "{}: {:?}: content type", ctx, id);
            let hash = sha256_hex(&want.content);
            prop_assert_eq!(
                got.content_hash(),
                hash.as_str(),
                "{}: {:?}: content hash",
                ctx,
                id
            );
            prop_assert!(got.version() > 0, "{}: {:?}: version 0", ctx, id);
            Ok(())
        }
        (got, want) => Err(TestCaseError::fail(format!(
            "{ctx}: {id:?}: engine has {}, model has {}",
            match got {
                Some(item) => format!("{:?} state {:?}", Bytes(item.content()), item.state()),
                None => "nothing".into(),
            },
            match want {
                Some(stored) => format!("{:?} state {:?}", Bytes(&stored.content), stored.state),
                None => "nothing".into(),
            },
        ))),
    }
}

fn ids_of(items: &[SyncItem]) -> Vec<&str> {
    items.iter().map(SyncItem::id).collect()
}

/// Longest any single engine call may take before the case fails as hung.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

async fn run_sequence(
    backend: &Backend,
    settings: &Settings,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let config = settings.config(backend);
    let mut engine = backend.engine_with(config.clone()).await;
    let mut model = Model::new();
    let mut touched: BTreeSet<String> = NEVER_IDS.iter().map(|s| s.to_string()).collect();
    let mut prefixes: BTreeSet<String> = CHECK_PREFIXES.iter().map(|s| s.to_string()).collect();

    for (step, op) in ops.iter().enumerate() {
        let ctx = format!("step {step} {op:?}");
        match op {
            Op::Put {
                id,
                content,
                item_state,
                opt_state,
                durable,
            } => {
                touched.insert(id.clone());
                let mut item = SyncItem::new(id.clone(), content.bytes().to_vec());
                prop_assert_eq!(
                    item.content_type() == ContentType::Json,
                    content.is_json(),
                    "generator bug: {:?} is misclassified",
                    content
                );
                if let Some(state) = item_state {
                    item = item.with_state(*state);
                }
                let options = match (durable, opt_state) {
                    (false, None) => None,
                    (false, Some(state)) => Some(SubmitOptions::default().with_state(*state)),
                    (true, None) => Some(SubmitOptions::durable()),
                    (true, Some(state)) => Some(SubmitOptions::durable().with_state(*state)),
                };
                match options {
                    None => call(engine.submit(item), &ctx).await?,
                    Some(options) => call(engine.submit_with(item, options), &ctx).await?,
                }
                // the options' state replaces the item's own; neither: "default"
                let state = opt_state.or(*item_state).unwrap_or("default");
                model.insert(
                    id.clone(),
                    Stored {
                        content: content.bytes().to_vec(),
                        json: content.is_json(),
                        state: state.to_string(),
                    },
                );
            }
            Op::Delete(id) => {
                touched.insert(id.clone());
                call(engine.delete(id), &ctx).await?;
                model.remove(id);
            }
            Op::SetState(id, state) => {
                touched.insert(id.clone());
                let changed = call(engine.set_state(id, state), &ctx).await?;
                let present = match model.get_mut(id) {
                    Some(stored) => {
                        stored.state = state.to_string();
                        true
                    }
                    None => false,
                };
                prop_assert_eq!(changed, present, "{}: set_state reply", ctx);
            }
            Op::DeletePrefix(prefix) => {
                prefixes.insert(prefix.clone());
                let deleted = call(engine.delete_prefix(prefix), &ctx).await?;
                let expected = remove_where(&mut model, |id, _| id.starts_with(prefix.as_str()));
                prop_assert_eq!(deleted, expected, "{}: delete_prefix count", ctx);
            }
            Op::DeleteByState(state) => {
                let deleted = call(engine.delete_by_state(state), &ctx).await?;
                let expected = remove_where(&mut model, |_, stored| stored.state == *state);
                prop_assert_eq!(deleted, expected, "{}: delete_by_state count", ctx);
            }
            Op::Get(id) => {
                touched.insert(id.clone());
                let got = call(engine.get(id), &ctx).await?;
                check_item(got.as_ref(), model.get(id), id, &ctx)?;
            }
            Op::Flush => call(engine.flush(), &ctx).await?,
            Op::ClearL1 => engine.clear_l1(),
            Op::Restart => {
                within(engine.shutdown(), &ctx).await?;
                drop(engine);
                engine = within(backend.engine_with(config.clone()), &ctx).await?;
            }
        }
    }

    call(engine.flush(), "final flush").await?;
    check_everything(&engine, backend, &model, &touched, &prefixes).await?;
    within(engine.shutdown(), "final shutdown").await?;
    Ok(())
}

/// After a flush: engine reads (through L1, then through SQL), range queries and the raw
/// table all equal the model.
async fn check_everything(
    engine: &SyncEngine,
    backend: &Backend,
    model: &Model,
    touched: &BTreeSet<String>,
    prefixes: &BTreeSet<String>,
) -> Result<(), TestCaseError> {
    // point reads, first from whatever L1 holds, then from SQL; both must agree on versions
    let mut versions: BTreeMap<&str, u64> = BTreeMap::new();
    for id in touched {
        let ctx = "final get (L1)";
        let got = call(engine.get(id), ctx).await?;
        check_item(got.as_ref(), model.get(id), id, ctx)?;
        if let Some(item) = got {
            versions.insert(id, item.version());
        }
    }
    engine.clear_l1();
    for id in touched {
        let ctx = "final get (SQL, L1 cleared)";
        let got = call(engine.get(id), ctx).await?;
        check_item(got.as_ref(), model.get(id), id, ctx)?;
        if let Some(item) = &got {
            prop_assert_eq!(
                Some(&item.version()),
                versions.get(id.as_str()),
                "{}: {:?}: L1 and SQL disagree on the version",
                ctx,
                id
            );
        }
        let contains = call(engine.contains(id), "final contains").await?;
        prop_assert_eq!(contains, model.contains_key(id), "final contains {:?}", id);
    }
    engine.clear_l1();
    let all: Vec<&str> = touched.iter().map(String::as_str).collect();
    let many = call(engine.get_many(&all), "final get_many").await?;
    prop_assert_eq!(many.len(), all.len(), "final get_many: answer count");
    for (id, got) in all.iter().zip(&many) {
        check_item(got.as_ref(), model.get(*id), id, "final get_many")?;
    }

    // prefix scans and counts: exactly the model's ids with that byte prefix, in byte order
    for prefix in prefixes {
        let ctx = format!("final scan_prefix({prefix:?})");
        let want: Vec<(&String, &Stored)> = model
            .iter()
            .filter(|(id, _)| id.starts_with(prefix.as_str()))
            .collect();
        let want_ids: Vec<&str> = want.iter().map(|(id, _)| id.as_str()).collect();
        let got = call(engine.scan_prefix(prefix, usize::MAX), &ctx).await?;
        prop_assert_eq!(ids_of(&got), want_ids.clone(), "{}: ids", ctx);
        for (item, (id, stored)) in got.iter().zip(&want) {
            check_item(Some(item), Some(stored), id, &ctx)?;
        }
        let limited = call(engine.scan_prefix(prefix, 2), &ctx).await?;
        prop_assert_eq!(
            ids_of(&limited),
            want_ids[..want_ids.len().min(2)].to_vec(),
            "{} limit 2",
            ctx
        );
        let count = call(engine.count_prefix(prefix), &ctx).await?;
        prop_assert_eq!(count, want.len() as u64, "final count_prefix({:?})", prefix);
    }

    // by state
    for state in STATES.iter().chain(ABSENT_STATES) {
        let ctx = format!("final get_by_state({state:?})");
        let want: Vec<(&String, &Stored)> = model
            .iter()
            .filter(|(_, stored)| stored.state == *state)
            .collect();
        let want_ids: Vec<&str> = want.iter().map(|(id, _)| id.as_str()).collect();
        let got = call(engine.get_by_state(state, usize::MAX), &ctx).await?;
        prop_assert_eq!(ids_of(&got), want_ids, "{}: ids", ctx);
        for (item, (id, stored)) in got.iter().zip(&want) {
            check_item(Some(item), Some(stored), id, &ctx)?;
        }
        let count = call(engine.count_by_state(state), &ctx).await?;
        prop_assert_eq!(
            count,
            want.len() as u64,
            "final count_by_state({:?})",
            state
        );
    }

    // the table itself
    let rows = backend.raw().await.rows().await;
    let row_ids: Vec<String> = rows.iter().map(|r| format!("{:?}", Bytes(&r.id))).collect();
    let model_ids: Vec<String> = model
        .keys()
        .map(|id| format!("{:?}", Bytes(id.as_bytes())))
        .collect();
    prop_assert_eq!(
        row_ids,
        model_ids,
        "raw sync_items: ids (in ORDER BY id order)"
    );
    for (row, (id, stored)) in rows.iter().zip(model) {
        let want = RawRow {
            id: id.as_bytes().to_vec(),
            payload: stored
                .json
                .then(|| String::from_utf8(stored.content.clone()).expect("JSON is UTF-8")),
            payload_blob: (!stored.json).then(|| stored.content.clone()),
            content_hash: sha256_hex(&stored.content),
            state: stored.state.as_bytes().to_vec(),
            version: versions[id.as_str()] as i64,
        };
        if *row != want {
            return Err(TestCaseError::fail(format!(
                "raw sync_items row {:?}:\n  table: payload {:?} payload_blob {:?} hash {} \
                 state {:?} version {}\n  model: payload {:?} payload_blob {:?} hash {} state \
                 {:?} version {} (as the engine reads it)",
                id,
                row.payload.as_ref().map(|p| Bytes(p.as_bytes())),
                row.payload_blob.as_ref().map(|b| Bytes(b)),
                row.content_hash,
                Bytes(&row.state),
                row.version,
                want.payload.as_ref().map(|p| Bytes(p.as_bytes())),
                want.payload_blob.as_ref().map(|b| Bytes(b)),
                want.content_hash,
                Bytes(&want.state),
                want.version,
            )));
        }
    }

    // a tombstone may outlive a revived id, but never at a version above the live row's
    for (id, version) in tombstones(backend).await {
        if let Some(live) = rows.iter().find(|r| r.id == id) {
            prop_assert!(
                version < live.version,
                "tombstone of live id {:?} at version {} >= row version {}",
                Bytes(&id),
                version,
                live.version
            );
        }
    }
    Ok(())
}

async fn tombstones(backend: &Backend) -> Vec<(Vec<u8>, i64)> {
    let sql = "SELECT id, version FROM sync_tombstones ORDER BY id";
    if backend.name == "sqlite" {
        let mut conn = sqlx::SqliteConnection::connect(&backend.url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
    } else {
        let mut conn = sqlx::MySqlConnection::connect(&backend.url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Kind {
    Sqlite,
    MariaDb,
}

/// Drops the per-case MariaDB database (cases and shrink steps each create one).
async fn drop_database(backend: &Backend) {
    let Some((_, db)) = backend.url.rsplit_once('/') else {
        return;
    };
    let base = common::mysql_url();
    if let Ok(mut conn) = sqlx::MySqlConnection::connect(&base).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
            .execute(&mut conn)
            .await;
    }
}

fn run_model(kind: Kind, default_cases: u32) {
    let name = match kind {
        Kind::Sqlite => "sqlite",
        Kind::MariaDb => "mariadb",
    };
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut runner = TestRunner::new(Config {
        cases,
        // only this file may be written: no regression files next to it
        failure_persistence: None,
        max_shrink_iters: 2048,
        max_shrink_time: 300_000,
        ..Config::default()
    });
    let started = Instant::now();
    let result = runner.run(&case_strategy(), |(settings, ops)| {
        runtime.block_on(async {
            let backend = match kind {
                Kind::Sqlite => Backend::sqlite(),
                Kind::MariaDb => Backend::mariadb().await,
            };
            let outcome = run_sequence(&backend, &settings, &ops).await;
            if let Kind::MariaDb = kind {
                drop_database(&backend).await;
            }
            outcome
        })
    });
    match result {
        Ok(()) => eprintln!(
            "model/{name}: {cases} cases passed in {:.1?}",
            started.elapsed()
        ),
        Err(TestError::Fail(reason, (settings, ops))) => {
            let listing: Vec<String> = ops
                .iter()
                .enumerate()
                .map(|(i, op)| format!("  {i:>2}: {op:?}"))
                .collect();
            panic!(
                "model/{name}: minimal failing sequence ({} ops) with {settings:?}:\n{}\nfailure: {reason}",
                ops.len(),
                listing.join("\n")
            );
        }
        Err(TestError::Abort(reason)) => panic!("model/{name}: aborted: {reason}"),
    }
}

/// About 10 s here (2 cores).
#[test]
fn model_sqlite() {
    run_model(Kind::Sqlite, 96);
}

/// About 10 s here; every case (and shrink step) runs on a fresh database.
#[test]
fn model_mariadb() {
    // fail once, clearly, rather than in every case and shrink step
    common::mysql_url();
    run_model(Kind::MariaDb, 32);
}
