//! A pipeline file: the engine's settings at the top level and a `[kafka]` section.
//!
//! ```toml
//! sql_url = "mysql://…"
//! redis_url = "redis://…"
//! [kafka]
//! brokers = "localhost:9092"
//! group_id = "sync-engine"
//! [kafka.client]            # any librdkafka property, for every client (security)
//! "security.protocol" = "SASL_SSL"
//! [kafka.consumer]          # …and for the consumer or the producer only
//! "session.timeout.ms" = "6000"
//! [stall]
//! policy = "exit"           # or "wait"
//! after_ms = 120000
//! ```
//! Every key can be overridden as `SYNC_ENGINE__<SECTION>__<KEY>`, e.g.
//! `SYNC_ENGINE__KAFKA__BROKERS`, `SYNC_ENGINE__SQL_URL`, `SYNC_ENGINE__STALL__POLICY`, and read from a file with a `_FILE`
//! suffix (`SYNC_ENGINE__SQL_URL_FILE=/run/secrets/sql-url`, see [`crate::config::env_source`]).
//!
//! **librdkafka properties** have dots in their names. In an environment variable each dot is
//! written `__`, like a section: `SYNC_ENGINE__KAFKA__CONSUMER__SASL__PASSWORD` sets
//! `[kafka.consumer] "sasl.password"`, and `…__SASL__PASSWORD_FILE` reads it from a file. In
//! the file, a property may be quoted (`"sasl.mechanism" = "PLAIN"`) or written as TOML dotted
//! keys (`sasl.mechanism = "PLAIN"`): both are the same property, and an environment variable
//! overrides either.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::{env_source, SyncEngineConfig};
use crate::error::{Result, SyncError};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PipelineConfig {
    #[serde(flatten)]
    pub engine: SyncEngineConfig,
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub stall: StallConfig,
    /// Log filter (`info`, `warn,sync_engine=debug`, …: `RUST_LOG`'s syntax), applied at
    /// start and whenever the file changes. None: `RUST_LOG`, else `info`.
    #[serde(default)]
    pub log_level: Option<String>,
}

/// `[http]`: the health, readiness and metrics endpoint (`sidecar::http`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Address to serve on; empty: no endpoint.
    pub listen: String,
    /// `/readyz` fails once commit cycles have been failing this long.
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

#[derive(Clone, PartialEq, Deserialize)]
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
    /// librdkafka properties of every Kafka client the binary makes (the sidecar's consumer
    /// and producer, `verify`'s and `tail`'s readers): security (SSL, SASL) goes here, once.
    #[serde(deserialize_with = "properties")]
    pub client: BTreeMap<String, String>,
    /// librdkafka consumer properties (tuning), applied after `client`.
    #[serde(deserialize_with = "properties")]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka producer properties, applied after `client`.
    #[serde(deserialize_with = "properties")]
    pub producer: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// `[kafka.client]`, then `[kafka.consumer]`: what a consumer of these brokers is given.
    pub fn consumer_properties(&self) -> impl Iterator<Item = (&String, &String)> {
        self.client.iter().chain(&self.consumer)
    }

    /// `[kafka.client]`, then `[kafka.producer]`.
    pub fn producer_properties(&self) -> impl Iterator<Item = (&String, &String)> {
        self.client.iter().chain(&self.producer)
    }
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
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.client.secret`, `sasl.oauthbearer.config`, …).
pub fn is_secret_property(name: &str) -> bool {
    ["password", "secret", "key.pem", "oauthbearer.config"]
        .iter()
        .any(|s| name.contains(s))
}

/// Secret properties are shown as `***`.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let masked = |p: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            p.iter()
                .map(|(k, v)| {
                    let v = if is_secret_property(k) { "***" } else { v };
                    (k.clone(), v.to_string())
                })
                .collect()
        };
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("input_topic", &self.input_topic)
            .field("output_topic", &self.output_topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("checkpoint_every_batches", &self.checkpoint_every_batches)
            .field("checkpoint_interval_ms", &self.checkpoint_interval_ms)
            .field("client", &masked(&self.client))
            .field("consumer", &masked(&self.consumer))
            .field("producer", &masked(&self.producer))
            .finish()
    }
}

/// A property's value as the file or the environment gives it; tables are dotted names.
#[derive(Deserialize)]
#[serde(untagged)]
enum Property {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Table(BTreeMap<String, Property>),
}

/// librdkafka's only settable properties with `_` in their names; any other `_` is a dot
/// mistyped, most likely in an environment variable (`…__SASL_PASSWORD`).
const UNDERSCORE_PROPERTIES: [&str; 2] = ["log_level", "enabled_events"];

/// A `[kafka.consumer]`/`[kafka.producer]` table as librdkafka's flat `name = value` list:
/// nested tables (TOML dotted keys, `__` in environment variables) are joined with dots. A
/// nested name is set after a quoted one, so the environment overrides the file.
fn properties<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    fn flatten(prefix: &str, table: BTreeMap<String, Property>, out: &mut Vec<(String, String)>) {
        let (tables, values): (Vec<_>, Vec<_>) = table
            .into_iter()
            .partition(|(_, v)| matches!(v, Property::Table(_)));
        for (name, value) in values.into_iter().chain(tables) {
            let name = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                Property::Text(v) => out.push((name, v)),
                Property::Integer(v) => out.push((name, v.to_string())),
                Property::Float(v) => out.push((name, v.to_string())),
                Property::Bool(v) => out.push((name, v.to_string())),
                Property::Table(t) => flatten(&name, t, out),
            }
        }
    }
    let table = BTreeMap::<String, Property>::deserialize(deserializer)?;
    let mut flat = Vec::new();
    flatten("", table, &mut flat);
    let mut properties = BTreeMap::new();
    for (name, value) in flat {
        if name.contains('_') && !UNDERSCORE_PROPERTIES.contains(&name.as_str()) {
            let dotted = name.replace('_', ".");
            return Err(serde::de::Error::custom(format!(
                "{name:?} is not a librdkafka property: did you mean {dotted:?}? In an \
                 environment variable each dot is written `__` (…__{})",
                dotted.to_uppercase().replace('.', "__")
            )));
        }
        properties.insert(name, value);
    }
    Ok(properties)
}

impl PipelineConfig {
    pub fn load(file: &Path) -> Result<Self> {
        let config: PipelineConfig = config::Config::builder()
            .add_source(config::File::from(file).format(config::FileFormat::Toml))
            .add_source(env_source()?)
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| SyncError::Config(format!("{}: {e}", file.display())))?;
        config.engine.validate()?;
        if config.stall.after_ms == 0 {
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
        let _env = crate::config::ENV_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.toml");
        std::fs::write(&file, text).unwrap();
        PipelineConfig::load(&file)
    }

    #[test]
    fn stall_section_is_read_and_defaults_to_exit() {
        let kafka = "[kafka]\nbrokers = \"b:9092\"\n";
        assert_eq!(load(kafka).unwrap().stall, StallConfig::default());
        assert_eq!(StallConfig::default().policy, StallPolicy::Exit);
        let config = load(&format!(
            "{kafka}[stall]\npolicy = \"wait\"\nafter_ms = 5000\n"
        ))
        .unwrap();
        assert_eq!(
            config.stall,
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
