//! # sync-engine
//!
//! A tiered store — L1 memory, L3 MySQL/MariaDB or SQLite — with one ordered, version-guarded
//! write path, and (in the binary) a sidecar around it.
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
