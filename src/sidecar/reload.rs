//! Hot reload of the pipeline file: what can change while the sidecar runs, and what waits
//! for a restart.
//!
//! The file is read again when its contents change (checked every [`POLL`]) and on `SIGHUP`.
//! Its path is resolved on every check, so a Kubernetes ConfigMap update, which swaps a
//! symlink in the file's directory rather than writing the file, is seen like an edit. (A poll
//! of one small file per second costs nothing and needs no inotify crate; ConfigMap updates
//! take tens of seconds to reach a pod anyway.)
//!
//! - **Live**: `batch_flush_ms`, `batch_flush_count`, `batch_flush_bytes` (the engine's writer
//!   and the commit cycle), `[kafka] checkpoint_every_batches` and
//!   `checkpoint_interval_ms`, and `log_level`.
//! - **After a restart**: everything else (brokers, topics, group, client properties, URLs,
//!   passwords, the HTTP address, memory limits, `[stall]`…). A change to one is logged as a WARN naming
//!   it, once per change, and the running value stays.
//! - A file that no longer loads (bad TOML, an invalid value) changes nothing and is logged.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{info, warn};

use super::config::PipelineConfig;
use crate::config::SyncEngineConfig;

/// How often the file is compared with what was last loaded.
pub const POLL: Duration = Duration::from_secs(1);

/// Sets the process's log filter (a `tracing_subscriber` `EnvFilter` directive such as
/// `info,sync_engine=debug`); the binary installs it, a library user need not.
pub type LogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_FILTER: OnceLock<LogFilter> = OnceLock::new();

/// Installs the function `log_level` is applied with (once per process).
pub fn set_log_filter(filter: LogFilter) {
    let _ = LOG_FILTER.set(filter);
}

/// Applies a `log_level` directive, if the binary installed a way to.
pub fn apply_log_level(level: &str) {
    if let Some(filter) = LOG_FILTER.get() {
        match filter(level) {
            Ok(()) => info!(log_level = level, "log level applied"),
            Err(e) => warn!(log_level = level, error = %e, "log_level not applied"),
        }
    }
}

/// The running configuration: what the engine's writer and the pipeline read.
pub struct Live {
    pub engine: watch::Sender<SyncEngineConfig>,
    pub pipeline: watch::Sender<PipelineConfig>,
}

/// Watches `file` until the process ends.
pub fn spawn(file: PathBuf, running: PipelineConfig, live: Live) {
    tokio::spawn(async move {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(e) => {
                warn!(error = %e, "no SIGHUP handler: the pipeline file is still watched");
                None
            }
        };
        let mut loaded = std::fs::read(&file).ok();
        let mut running = running;
        // the settings that need a restart, as last reported (not again at every check)
        let mut reported: Vec<String> = Vec::new();
        loop {
            let forced = tokio::select! {
                _ = async { hangup.as_mut().expect("some").recv().await }, if hangup.is_some() => true,
                _ = tokio::time::sleep(POLL) => false,
            };
            let text = std::fs::read(&file).ok();
            if !forced && text == loaded {
                continue;
            }
            loaded = text;
            let fresh = match PipelineConfig::load(&file) {
                Ok(fresh) => fresh,
                Err(e) => {
                    warn!(file = %file.display(), error = %e, "pipeline file not reloaded: it does not load; the running configuration stays");
                    continue;
                }
            };
            let (next, changed, pending) = apply(&running, &fresh);
            if !changed.is_empty() {
                info!(settings = ?changed, file = %file.display(), "pipeline file reloaded: applied");
                if next.log_level != running.log_level {
                    apply_log_level(next.log_level.as_deref().unwrap_or("info"));
                }
                let _ = live.engine.send(next.engine.clone());
                let _ = live.pipeline.send(next.clone());
                running = next;
            } else if forced {
                // WARN, so that it is seen whatever `log_level` says
                warn!(file = %file.display(), "pipeline file reloaded (SIGHUP): no live setting changed");
            }
            if pending != reported {
                if !pending.is_empty() {
                    warn!(settings = ?pending, "pipeline file changed settings that apply only after a restart: not applied");
                }
                reported = pending;
            }
        }
    });
}

/// `running` with the live settings of `fresh`; the names of those that changed, and of the
/// settings that differ but need a restart (secrets named, never shown).
pub fn apply(
    running: &PipelineConfig,
    fresh: &PipelineConfig,
) -> (PipelineConfig, Vec<String>, Vec<String>) {
    let mut next = running.clone();
    let mut changed = Vec::new();
    macro_rules! live {
        ($($section:ident).+) => {
            if next.$($section).+ != fresh.$($section).+ {
                next.$($section).+ = fresh.$($section).+.clone();
                changed.push(stringify!($($section).+).replace(' ', ""));
            }
        };
    }
    live!(engine.batch_flush_ms);
    live!(engine.batch_flush_count);
    live!(engine.batch_flush_bytes);
    live!(kafka.checkpoint_every_batches);
    live!(kafka.checkpoint_interval_ms);
    live!(log_level);

    let mut pending = Vec::new();
    macro_rules! restart {
        ($($section:ident).+) => {
            if next.$($section).+ != fresh.$($section).+ {
                pending.push(stringify!($($section).+).replace(' ', ""));
            }
        };
    }
    restart!(engine.redis_url);
    restart!(engine.redis_password);
    restart!(engine.redis_ca_file);
    restart!(engine.redis_cert_file);
    restart!(engine.redis_key_file);
    restart!(engine.redis_prefix);
    restart!(engine.sql_url);
    restart!(engine.sql_password);
    restart!(engine.l1_max_bytes);
    restart!(engine.max_payload_bytes);
    restart!(engine.l3_filter);
    restart!(engine.merkle);
    restart!(engine.backpressure_warn);
    restart!(engine.backpressure_critical);
    restart!(kafka.brokers);
    restart!(kafka.group_id);
    restart!(kafka.input_topic);
    restart!(kafka.output_topic);
    restart!(kafka.dlq_topic);
    restart!(kafka.client);
    restart!(kafka.consumer);
    restart!(kafka.producer);
    restart!(http.listen);
    restart!(http.unready_after_ms);
    restart!(stall);
    (next, changed, pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_settings_apply_and_the_rest_waits_for_a_restart() {
        let running = PipelineConfig::default();
        let mut fresh = running.clone();
        fresh.engine.batch_flush_count = 17;
        fresh.kafka.checkpoint_interval_ms = 99;
        fresh.kafka.brokers = "elsewhere:9092".into();
        fresh.engine.sql_password = Some("new".into());
        let (next, changed, pending) = apply(&running, &fresh);
        assert_eq!(next.engine.batch_flush_count, 17);
        assert_eq!(next.kafka.checkpoint_interval_ms, 99);
        assert_eq!(next.kafka.brokers, running.kafka.brokers);
        assert_eq!(next.engine.sql_password, None);
        assert_eq!(
            changed,
            ["engine.batch_flush_count", "kafka.checkpoint_interval_ms"]
        );
        assert_eq!(pending, ["engine.sql_password", "kafka.brokers"]);
        // nothing differs: nothing to say
        let (_, changed, pending) = apply(&next, &next);
        assert!(changed.is_empty() && pending.is_empty());
    }
}
