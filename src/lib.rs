//! # sync-engine
//!
//! A tiered store — L1 memory, L2 Redis, L3 MySQL/MariaDB or SQLite — with one ordered,
//! version-guarded write path, and (in the binary) a sidecar around it.
//!
//! ## Layout
//!
//! | module | role |
//! |---|---|
//! | [`SyncEngine`] (`engine`, `engine::start`) | the library API: submit, get, ranges, search, verify; start-up wiring in its own file |
//! | `writer`, `batch` | the one ordered write path: queue → batch → SQL transaction → Redis → L1 |
//! | `l1` | pending writes and the cache, bounded by bytes |
//! | [`tier`] | L3 behind role traits: [`tier::sql`] (the one home of SQL), [`tier::memory`]; L2 behind `tier::cache::Cache`: [`tier::redis`] (and an in-memory fake for unit tests) |
//! | [`filter`] | the cuckoo filter in front of L3 |
//! | [`merkle`], [`verify`], `repair`, `audit` | state roots, verification, Redis repair, proofs |
//! | [`search`] | the query model (imports no tier) and the reference matcher |
//! | [`sidecar`] | the Kafka binary's loop: decode ([`sidecar::record`]), the commit cycle (`sidecar::pipeline`), events, HTTP, reload, stall |
//! | [`config`], [`options`], [`item`], [`error`] | what callers pass and get back |
//! | [`inspect`], `ops` (binary) | operators' read-only views |
//!
//! ## One write, from record to confirmation
//!
//! A put (or delete) changes type at each hop that adds or drops something; each name is used
//! for that one stage only. The sidecar's hops come first; a library `submit` starts at
//! [`SyncItem`].
//!
//! | stage | type | module | what it is |
//! |---|---|---|---|
//! | consumed | `RawRecord` | [`sidecar::record`] | key, value, headers of a Kafka record, borrowed |
//! | decoded | `record::Write` | [`sidecar::record`] | a valid record: a put (item + options) or a delete; invalid ones get a `DlqCode` |
//! | accepted | `Entry` | `batch` | a queued write: one [`tier::Op`] and where it goes (SQL, Redis, TTL) |
//! | batched | [`tier::Op`] | [`tier`] | one write of a batch as the durable tier sees it; at most one per id |
//! | committed | [`tier::Applied`] | [`tier`] | what the SQL transaction did with that op (applied, a replay, the row before) |
//! | cached | `CacheWrite` | `tier::cache` | the change Redis gets after the commit (put with TTL, or remove) |
//! | settled | `Settled` | `l1` | L1 told how the op ended (cache the committed item, or drop the pending one) |
//! | confirmed | [`sidecar::events::ConfirmedItem`] | [`sidecar::events`] | the record in a confirmation event: offset, id, [`sidecar::events::ConfirmedOp`], outcome |
//!
//! Two words are kept apart in the sidecar: the **commit cycle** is the loop's recurring step
//! (flush the engine, await DLQ acks, produce confirmations, produce the checkpoint events that
//! are due, commit offsets; `sidecar::pipeline`), and a **checkpoint** is only the output event
//! a cycle may produce ([`sidecar::events::Checkpoint`]: a partition's offset and state root).
//! (`/readyz` still reports a failing cycle as "checkpoints failing", a documented string.)
//!
//! ```no_run
//! use sync_engine::{SyncEngine, SyncEngineConfig, SyncItem};
//! use serde_json::json;
//! use tokio::sync::watch;
//!
//! # async fn demo() -> Result<(), sync_engine::SyncError> {
//! let config = SyncEngineConfig {
//!     sql_url: Some("sqlite://items.db?mode=rwc".into()),
//!     ..Default::default()
//! };
//! let (_tx, rx) = watch::channel(config.clone());
//! let mut engine = SyncEngine::new(config, rx);
//! engine.start().await?;
//! engine.submit(SyncItem::from_json("user.1".into(), json!({"name": "Ada"}))).await?;
//! engine.flush().await?; // durable from here on
//! assert!(engine.get("user.1").await?.is_some());
//! engine.shutdown().await;
//! # Ok(()) }
//! ```

mod batch;
pub mod config;
mod engine;
pub mod error;
pub mod filter;
pub mod inspect;
pub mod item;
mod l1;
pub mod merkle;
pub mod options;
mod repair;
pub mod search;
pub mod sidecar;
pub mod tier;
pub mod verify;
mod writer;

pub use config::SyncEngineConfig;
pub use engine::{BackpressureLevel, EngineState, SearchTier, SyncEngine};
pub use error::{ErrorClass, Result, SyncError};
pub use item::{ContentType, SyncItem};
pub use l1::L1Stats;
pub use options::{CacheTtl, SubmitOptions};

/// The README's code blocks compile as doc tests, so its Quick Start cannot drift.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
