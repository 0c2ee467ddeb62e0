//! Engine configuration: defaults, a TOML file, and `SYNC_ENGINE__*` environment overrides.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, SyncError};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SyncEngineConfig {
    /// L2: `redis://host:port[/db]`. `None`: no Redis tier (cache-only items live in L1).
    pub redis_url: Option<String>,
    /// Prepended to every Redis key (`{redis_prefix}{id}`), to share one Redis.
    pub redis_prefix: Option<String>,
    /// `mysql://…` or `sqlite://path?mode=rwc`. `None` keeps L3 in memory (tests only:
    /// nothing survives the process).
    pub sql_url: Option<String>,
    /// Bytes L1 may hold: the evictable cache plus items accepted but not yet durable.
    pub l1_max_bytes: usize,
    /// Largest payload accepted. With MySQL the engine lowers it to fit the server's
    /// `max_allowed_packet` and logs that at start.
    pub max_payload_bytes: usize,
    /// A batch is written when its oldest item has waited this long…
    pub batch_flush_ms: u64,
    /// …or it holds this many items…
    pub batch_flush_count: usize,
    /// …or this many payload bytes.
    pub batch_flush_bytes: usize,
    /// Keep a cuckoo filter of the ids in SQL so reads of absent ids skip SQL. It learns of
    /// this engine's writes only: turn it off when several engines write one SQL table.
    pub l3_filter: bool,
    /// Maintain the Merkle state roots (`sync_merkle_buckets`, schemas/MERKLE.md) in every
    /// batch's transaction. Off only to measure what they cost: roots, checkpoints and
    /// `verify` are then meaningless.
    pub merkle: bool,
    /// `memory_pressure()` at or above this is `BackpressureLevel::Warn`.
    pub backpressure_warn: f64,
    /// Pending (not yet durable) bytes may use this share of `l1_max_bytes`; past it,
    /// `submit` waits until a batch commits. Also the `Critical` pressure level.
    pub backpressure_critical: f64,
}

impl Default for SyncEngineConfig {
    fn default() -> Self {
        SyncEngineConfig {
            redis_url: None,
            redis_prefix: None,
            sql_url: None,
            l1_max_bytes: 256 * 1024 * 1024,
            max_payload_bytes: 16 * 1024 * 1024,
            batch_flush_ms: 100,
            batch_flush_count: 1000,
            batch_flush_bytes: 1024 * 1024,
            l3_filter: true,
            merkle: true,
            backpressure_warn: 0.7,
            backpressure_critical: 0.9,
        }
    }
}

/// Prefix of environment overrides: `SYNC_ENGINE__SQL_URL`, `SYNC_ENGINE__KAFKA__BROKERS`, …
pub const ENV_PREFIX: &str = "SYNC_ENGINE";

impl SyncEngineConfig {
    /// Defaults, then the TOML file (if any), then `SYNC_ENGINE__<KEY>` variables.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let config = builder
            .add_source(env_source())
            .build()
            .map_err(|e| SyncError::Config(e.to_string()))?
            .try_deserialize::<SyncEngineConfig>()
            .map_err(|e| SyncError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |m: &str| Err(SyncError::Config(m.to_string()));
        if self.l1_max_bytes == 0 {
            return fail("l1_max_bytes must be > 0");
        }
        if self.max_payload_bytes == 0 {
            return fail("max_payload_bytes must be > 0");
        }
        if self.batch_flush_count == 0 || self.batch_flush_bytes == 0 {
            return fail("batch_flush_count and batch_flush_bytes must be > 0");
        }
        if !(0.0 < self.backpressure_warn
            && self.backpressure_warn <= self.backpressure_critical
            && self.backpressure_critical <= 1.0)
        {
            return fail("need 0 < backpressure_warn <= backpressure_critical <= 1");
        }
        Ok(())
    }
}

/// `SYNC_ENGINE__A__B=v` sets key `a.b`.
pub fn env_source() -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
}

/// A service URL fit to print: its password (`scheme://user:password@host`) replaced by
/// `***`. Anything else is left as it is.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("mysql://u:secretpw@db:3306/x?ssl-mode=required"),
            "mysql://u:***@db:3306/x?ssl-mode=required"
        );
        assert_eq!(
            redacted("rediss://default:p%40ss@cache:6380/0"),
            "rediss://default:***@cache:6380/0"
        );
        assert_eq!(redacted("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redacted("mysql://root@db/x"), "mysql://root@db/x");
        assert_eq!(
            redacted("sqlite:///tmp/a@b.db?mode=rwc"),
            "sqlite:///tmp/a@b.db?mode=rwc"
        );
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.toml");
        std::fs::write(
            &path,
            "batch_flush_count = 7\nsql_url = \"sqlite://file.db\"\n",
        )
        .unwrap();
        // The only test in this binary that touches SYNC_ENGINE__* variables.
        std::env::set_var("SYNC_ENGINE__BATCH_FLUSH_MS", "250");
        let config = SyncEngineConfig::load(Some(&path)).unwrap();
        std::env::remove_var("SYNC_ENGINE__BATCH_FLUSH_MS");
        assert_eq!(config.batch_flush_count, 7);
        assert_eq!(config.batch_flush_ms, 250);
        assert_eq!(config.sql_url.as_deref(), Some("sqlite://file.db"));
        assert_eq!(config.l1_max_bytes, 256 * 1024 * 1024);
    }

    #[test]
    fn shipped_pipeline_files_load() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines");
        let mut loaded = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let config = if text.contains("[kafka]") {
                crate::sidecar::config::PipelineConfig::load(&path).map(|p| p.engine)
            } else {
                SyncEngineConfig::load(Some(&path))
            }
            .unwrap_or_else(|e| panic!("{path:?}: {e}"));
            assert!(config.sql_url.is_some(), "{path:?}");
            loaded += 1;
        }
        assert!(loaded > 0);
    }

    #[test]
    fn bad_values_are_config_errors() {
        let config = SyncEngineConfig {
            backpressure_warn: 0.95,
            ..Default::default()
        };
        assert!(matches!(config.validate(), Err(SyncError::Config(_))));
    }
}
