//! A pipeline file: the engine's settings at the top level and a `[kafka]` section.
//!
//! ```toml
//! sql_url = "mysql://…"
//! redis_url = "redis://…"
//! [kafka]
//! brokers = "localhost:9092"
//! group_id = "sync-engine"
//! [kafka.consumer]          # any librdkafka property, passed through
//! "session.timeout.ms" = "6000"
//! ```
//! Every key can be overridden as `SYNC_ENGINE__<SECTION>__<KEY>`, e.g.
//! `SYNC_ENGINE__KAFKA__BROKERS`, `SYNC_ENGINE__SQL_URL`.

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
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:9464".into(),
            unready_after_ms: 30_000,
        }
    }
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
        let config: PipelineConfig = config::Config::builder()
            .add_source(config::File::from(file).format(config::FileFormat::Toml))
            .add_source(env_source())
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| SyncError::Config(format!("{}: {e}", file.display())))?;
        config.engine.validate()?;
        Ok(config)
    }
}
