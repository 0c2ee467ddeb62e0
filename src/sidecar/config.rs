//! A pipeline file: the engine's settings at the top level, a `[kafka]` section, and the
//! optional `[http]` and `[stall]` sections.
//!
//! ```toml
//! sql_url = "mysql://…"
//! redis_url = "redis://…"
//! [kafka]
//! brokers = "localhost:9092"
//! group_id = "sync-engine"
//! [kafka.consumer]          # any librdkafka property, passed through
//! "session.timeout.ms" = "6000"
//! [stall]
//! policy = "exit"           # or "wait"
//! after_ms = 120000
//! ```
//! Every key can be overridden as `SYNC_ENGINE__<SECTION>__<KEY>`, e.g.
//! `SYNC_ENGINE__KAFKA__BROKERS`, `SYNC_ENGINE__SQL_URL`, `SYNC_ENGINE__STALL__POLICY`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::{env_source, SyncEngineConfig};
use crate::error::{Result, SyncError};

#[derive(Debug, Clone, Deserialize)]
pub struct PipelineConfig {
    #[serde(flatten)]
    pub engine: SyncEngineConfig,
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub http: HttpConfig,
}

/// `[http]`: the health, readiness and metrics endpoint (`sidecar::http`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Address to serve on; empty: no endpoint.
    pub listen: String,
    /// `/readyz` fails once checkpoint cycles have been failing this long.
    pub unready_after_ms: u64,
    /// The file's own `[stall]` section (filled in by [`PipelineConfig::load`]). It travels
    /// here, next to the other readiness setting, so that a `PipelineConfig` written out field
    /// by field (as `dev` does) needs no new field.
    #[serde(skip)]
    pub stall: StallConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:9464".into(),
            unready_after_ms: 30_000,
            stall: StallConfig::default(),
        }
    }
}

/// `[stall]`: what a pipeline that cannot make progress does (`sidecar::stall`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct StallConfig {
    pub policy: StallPolicy,
    /// A retryable failure lasting this long stalls the pipeline (a fatal SQL error at once).
    pub after_ms: u64,
}

impl Default for StallConfig {
    fn default() -> Self {
        StallConfig {
            policy: StallPolicy::Exit,
            // longer than any outage the sidecar rides out by itself (they recover within
            // seconds of the service returning; a database failover takes well under a
            // minute), short enough that partitions do not sit for long on a member that
            // cannot move them
            after_ms: 120_000,
        }
    }
}

/// What a stalled pipeline does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StallPolicy {
    /// Leave the group and exit with [`crate::sidecar::EXIT_STALLED`], so an orchestrator
    /// restarts the process and the group gives its partitions to members that can progress.
    Exit,
    /// Stay, keep retrying, and stay unready until it gets through.
    Wait,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub output_topic: String,
    pub dlq_topic: String,
    /// A checkpoint event per partition after this many confirmations of it…
    pub checkpoint_every_batches: u32,
    /// …or when its last one is this old (and at shutdown and revocation).
    pub checkpoint_interval_ms: u64,
    /// librdkafka consumer properties (SASL/SSL, tuning), applied last.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka producer properties, applied last.
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "localhost:9092".into(),
            group_id: "sync-engine".into(),
            input_topic: "sync.submit".into(),
            output_topic: "sync.confirm".into(),
            dlq_topic: "sync.dlq".into(),
            checkpoint_every_batches: 10,
            checkpoint_interval_ms: 10_000,
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

impl PipelineConfig {
    pub fn load(file: &Path) -> Result<Self> {
        let invalid =
            |e: config::ConfigError| SyncError::Config(format!("{}: {e}", file.display()));
        let sources = config::Config::builder()
            .add_source(config::File::from(file).format(config::FileFormat::Toml))
            .add_source(env_source())
            .build()
            .map_err(invalid)?;
        let mut config: PipelineConfig = sources.clone().try_deserialize().map_err(invalid)?;
        config.http.stall = match sources.get::<StallConfig>("stall") {
            Err(config::ConfigError::NotFound(_)) => StallConfig::default(),
            stall => stall.map_err(invalid)?,
        };
        config.engine.validate()?;
        if config.http.stall.after_ms == 0 {
            return Err(SyncError::Config(format!(
                "{}: [stall] after_ms must be above 0",
                file.display()
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<PipelineConfig> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.toml");
        std::fs::write(&file, text).unwrap();
        PipelineConfig::load(&file)
    }

    #[test]
    fn stall_section_is_read_and_defaults_to_exit() {
        let kafka = "[kafka]\nbrokers = \"b:9092\"\n";
        assert_eq!(load(kafka).unwrap().http.stall, StallConfig::default());
        assert_eq!(StallConfig::default().policy, StallPolicy::Exit);
        let config = load(&format!(
            "{kafka}[stall]\npolicy = \"wait\"\nafter_ms = 5000\n"
        ))
        .unwrap();
        assert_eq!(
            config.http.stall,
            StallConfig {
                policy: StallPolicy::Wait,
                after_ms: 5000
            }
        );
        let wrong = load(&format!("{kafka}[stall]\npolicy = \"retry\"\n")).unwrap_err();
        assert!(wrong.to_string().contains("retry"), "{wrong}");
        assert!(load(&format!("{kafka}[stall]\nafter_ms = 0\n")).is_err());
    }
}
