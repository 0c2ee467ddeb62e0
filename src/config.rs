//! Engine configuration: defaults, a TOML file, and `SYNC_ENGINE__*` environment overrides.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, SyncError};

#[derive(Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SyncEngineConfig {
    /// L2: `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS. `None`: no Redis
    /// tier (cache-only items live in L1).
    pub redis_url: Option<String>,
    /// Redis password, overriding the URL's (e.g. `SYNC_ENGINE__REDIS_PASSWORD_FILE`).
    pub redis_password: Option<String>,
    /// `rediss://`: PEM file of the CA that signed the server's certificate (the system's
    /// roots are trusted as well).
    pub redis_ca_file: Option<PathBuf>,
    /// `rediss://`: client certificate (PEM) for servers that require one…
    pub redis_cert_file: Option<PathBuf>,
    /// …and its key (PEM, PKCS#8).
    pub redis_key_file: Option<PathBuf>,
    /// Prepended to every Redis key (`{redis_prefix}{id}`), to share one Redis.
    pub redis_prefix: Option<String>,
    /// `mysql://…` or `sqlite://path?mode=rwc`. `None` keeps L3 in memory (tests only:
    /// nothing survives the process). TLS to MySQL/MariaDB is set in the URL:
    /// `?ssl-mode=required|verify_ca|verify_identity&ssl-ca=/ca.pem` (and `ssl-cert`,
    /// `ssl-key` for a client certificate).
    pub sql_url: Option<String>,
    /// SQL password, overriding the URL's (e.g. `SYNC_ENGINE__SQL_PASSWORD_FILE`).
    pub sql_password: Option<String>,
    /// Bytes L1 may hold: the evictable cache plus items accepted but not yet durable.
    #[serde(deserialize_with = "text_or_value")]
    pub l1_max_bytes: usize,
    /// Largest payload accepted. With MySQL the engine lowers it to fit the server's
    /// `max_allowed_packet` and logs that at start.
    #[serde(deserialize_with = "text_or_value")]
    pub max_payload_bytes: usize,
    /// A batch is written when its oldest item has waited this long…
    #[serde(deserialize_with = "text_or_value")]
    pub batch_flush_ms: u64,
    /// …or it holds this many items…
    #[serde(deserialize_with = "text_or_value")]
    pub batch_flush_count: usize,
    /// …or this many payload bytes.
    #[serde(deserialize_with = "text_or_value")]
    pub batch_flush_bytes: usize,
    /// Keep a cuckoo filter of the ids in SQL so reads of absent ids skip SQL. It learns of
    /// this engine's writes only: turn it off when several engines write one SQL table.
    #[serde(deserialize_with = "text_or_value")]
    pub l3_filter: bool,
    /// Maintain the Merkle state roots (`sync_merkle_buckets`, schemas/MERKLE.md) in every
    /// batch's transaction. Off only to measure what they cost: roots, checkpoints and
    /// `verify` are then meaningless.
    #[serde(deserialize_with = "text_or_value")]
    pub merkle: bool,
    /// `memory_pressure()` at or above this is `BackpressureLevel::Warn`.
    #[serde(deserialize_with = "text_or_value")]
    pub backpressure_warn: f64,
    /// Pending (not yet durable) bytes may use this share of `l1_max_bytes`; past it,
    /// `submit` waits until a batch commits. Also the `Critical` pressure level.
    #[serde(deserialize_with = "text_or_value")]
    pub backpressure_critical: f64,
}

impl Default for SyncEngineConfig {
    fn default() -> Self {
        SyncEngineConfig {
            redis_url: None,
            redis_password: None,
            redis_ca_file: None,
            redis_cert_file: None,
            redis_key_file: None,
            redis_prefix: None,
            sql_url: None,
            sql_password: None,
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

/// A number or a boolean as itself or as text: environment variables are text, and inside
/// the pipeline file's flattened engine settings `config` cannot convert them itself.
/// (Values are not guessed from text up front: a password such as `0012` stays text.)
fn text_or_value<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Value(T),
        Text(String),
    }
    match Either::<T>::deserialize(deserializer)? {
        Either::Value(v) => Ok(v),
        Either::Text(text) => text
            .trim()
            .parse()
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}"))),
    }
}

/// Passwords never leave the process: URLs are shown with theirs masked, password keys as `***`.
impl fmt::Debug for SyncEngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = |u: &Option<String>| u.as_deref().map(redacted);
        let secret = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("SyncEngineConfig")
            .field("redis_url", &url(&self.redis_url))
            .field("redis_password", &secret(&self.redis_password))
            .field("redis_ca_file", &self.redis_ca_file)
            .field("redis_cert_file", &self.redis_cert_file)
            .field("redis_key_file", &self.redis_key_file)
            .field("redis_prefix", &self.redis_prefix)
            .field("sql_url", &url(&self.sql_url))
            .field("sql_password", &secret(&self.sql_password))
            .field("l1_max_bytes", &self.l1_max_bytes)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("batch_flush_ms", &self.batch_flush_ms)
            .field("batch_flush_count", &self.batch_flush_count)
            .field("batch_flush_bytes", &self.batch_flush_bytes)
            .field("l3_filter", &self.l3_filter)
            .field("merkle", &self.merkle)
            .field("backpressure_warn", &self.backpressure_warn)
            .field("backpressure_critical", &self.backpressure_critical)
            .finish()
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
            .add_source(env_source()?)
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

/// The environment overrides, as a `config` source:
///
/// - `SYNC_ENGINE__A__B=v` sets key `a.b` (each `__` is one level; names are lowercased).
/// - `SYNC_ENGINE__A__B_FILE=/path` sets `a.b` to the file's contents, without its trailing
///   newline: the convention for secrets mounted as files (a Kubernetes Secret volume, Docker
///   secrets). An unreadable file is an error naming the variable.
///
/// Values are kept as text: `config` parses numbers and booleans when a typed key asks for
/// one, and a secret such as `0012` or `TRUE` reaches its service exactly as written.
pub fn env_source() -> Result<config::Environment> {
    let prefix = format!("{ENV_PREFIX}__");
    let mut vars = config::Map::new();
    for (name, value) in std::env::vars_os() {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            continue;
        };
        if !name.starts_with(&prefix) {
            continue;
        }
        match name.strip_suffix("_FILE") {
            Some(key) => {
                if std::env::var_os(key).is_some() {
                    return Err(SyncError::Config(format!(
                        "both {key} and {name} are set: keep one"
                    )));
                }
                let text = std::fs::read_to_string(value).map_err(|e| {
                    SyncError::Config(format!("{name}: cannot read {value:?}: {e}"))
                })?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                vars.insert(key.to_string(), text.to_string());
            }
            None => {
                vars.insert(name.to_string(), value.to_string());
            }
        }
    }
    Ok(config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .source(Some(vars)))
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

/// Tests that set `SYNC_ENGINE__*` variables, or load configuration (which reads them), hold
/// this: the environment is one per process, and tests run on parallel threads.
#[cfg(test)]
pub(crate) static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.toml");
        std::fs::write(
            &path,
            "batch_flush_count = 7\nsql_url = \"sqlite://file.db\"\n",
        )
        .unwrap();
        // The only test in this binary that touches SYNC_ENGINE__* variables (they are
        // process-wide): the pipeline file's overrides are checked here too.
        std::env::set_var("SYNC_ENGINE__BATCH_FLUSH_MS", "250");
        let config = SyncEngineConfig::load(Some(&path)).unwrap();
        std::env::remove_var("SYNC_ENGINE__BATCH_FLUSH_MS");
        assert_eq!(config.batch_flush_count, 7);
        assert_eq!(config.batch_flush_ms, 250);
        assert_eq!(config.sql_url.as_deref(), Some("sqlite://file.db"));
        assert_eq!(config.l1_max_bytes, 256 * 1024 * 1024);

        // librdkafka's dotted names: quoted or TOML-dotted in the file, `__` for each dot in
        // the environment (which wins), secrets from `_FILE`s exactly as written
        let pipeline = dir.path().join("pipeline.toml");
        std::fs::write(
            &pipeline,
            "[kafka]\nbrokers = \"b:9093\"\n[kafka.consumer]\n\"security.protocol\" = \"SASL_SSL\"\n\
             sasl.mechanism = \"PLAIN\"\n\"session.timeout.ms\" = 6000\n\"sasl.username\" = \"file\"\n",
        )
        .unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "0012 TRUE\n").unwrap();
        let sql = dir.path().join("sql-url");
        std::fs::write(&sql, "mysql://u:p%40ss@db/x").unwrap();
        std::env::set_var("SYNC_ENGINE__KAFKA__CONSUMER__SASL__USERNAME", "env");
        std::env::set_var("SYNC_ENGINE__KAFKA__CONSUMER__SASL__PASSWORD_FILE", &secret);
        std::env::set_var("SYNC_ENGINE__KAFKA__PRODUCER__LINGER__MS", "7");
        std::env::set_var("SYNC_ENGINE__SQL_URL_FILE", &sql);
        std::env::set_var("SYNC_ENGINE__REDIS_PASSWORD", "007");
        std::env::set_var("SYNC_ENGINE__BATCH_FLUSH_COUNT", "33");
        std::env::set_var("SYNC_ENGINE__MERKLE", "false");
        std::env::set_var("SYNC_ENGINE__KAFKA__CHECKPOINT_INTERVAL_MS", "600000");
        let loaded = crate::sidecar::config::PipelineConfig::load(&pipeline);
        std::env::set_var("SYNC_ENGINE__KAFKA__CONSUMER__SASL_PASSWORD", "x");
        let underscored = crate::sidecar::config::PipelineConfig::load(&pipeline);
        std::env::remove_var("SYNC_ENGINE__KAFKA__CONSUMER__SASL_PASSWORD");
        std::env::set_var("SYNC_ENGINE__SQL_URL", "mysql://other");
        let both = crate::sidecar::config::PipelineConfig::load(&pipeline);
        for name in [
            "SYNC_ENGINE__KAFKA__CONSUMER__SASL__USERNAME",
            "SYNC_ENGINE__KAFKA__CONSUMER__SASL__PASSWORD_FILE",
            "SYNC_ENGINE__KAFKA__PRODUCER__LINGER__MS",
            "SYNC_ENGINE__SQL_URL_FILE",
            "SYNC_ENGINE__SQL_URL",
            "SYNC_ENGINE__REDIS_PASSWORD",
            "SYNC_ENGINE__BATCH_FLUSH_COUNT",
            "SYNC_ENGINE__MERKLE",
            "SYNC_ENGINE__KAFKA__CHECKPOINT_INTERVAL_MS",
        ] {
            std::env::remove_var(name);
        }
        let loaded = loaded.unwrap();
        assert_eq!(loaded.engine.batch_flush_count, 33);
        assert!(!loaded.engine.merkle);
        assert_eq!(loaded.kafka.checkpoint_interval_ms, 600_000);
        let consumer = &loaded.kafka.consumer;
        assert_eq!(consumer["security.protocol"], "SASL_SSL");
        assert_eq!(consumer["sasl.mechanism"], "PLAIN");
        assert_eq!(consumer["session.timeout.ms"], "6000");
        assert_eq!(consumer["sasl.username"], "env");
        assert_eq!(consumer["sasl.password"], "0012 TRUE");
        assert_eq!(consumer.len(), 5, "{consumer:?}");
        assert_eq!(loaded.kafka.producer["linger.ms"], "7");
        assert_eq!(
            loaded.engine.sql_url.as_deref(),
            Some("mysql://u:p%40ss@db/x")
        );
        assert_eq!(loaded.engine.redis_password.as_deref(), Some("007"));
        // and none of it is printed
        let shown = format!("{loaded:?}");
        for secret in ["0012 TRUE", "p%40ss", "007"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let error = underscored.unwrap_err().to_string();
        assert!(
            error.contains("sasl_password") && error.contains("SASL__PASSWORD"),
            "{error}"
        );
        let error = both.unwrap_err().to_string();
        assert!(error.contains("SYNC_ENGINE__SQL_URL_FILE"), "{error}");
    }

    #[test]
    fn shipped_pipeline_files_load() {
        let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
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
