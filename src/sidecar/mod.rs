//! The sidecar, top-down: Kafka submit topic → engine → confirmation topic → offset commit.
//!
//! ```text
//! poll ─► decode ─┬─► engine.submit/delete (version = offset + 1, source = topic/partition)
//!                 └─► DLQ record                               ─┐
//!                                                              ├─ pending, per partition
//! every batch_flush_ms / batch_flush_count records:            ─┘
//!   1. seal: engine.seal() (durable in the background; polling goes on, ≤ 2 batches in flight)
//!   once the oldest sealed batch is durable (its roots come with it):
//!   2. DLQ deliveries acknowledged   3. confirmations per partition (delivery awaited)
//!   4. checkpoint events due   5. commit
//! ```
//!
//! **Guarantee**: an offset is committed only after everything it covers is durable (or
//! acknowledged by the DLQ topic) and confirmed. A crash anywhere replays from the last
//! commit; a replayed record changes nothing and its confirmation says `unchanged`.
//!
//! **Faults**: every step of the cycle classifies its error ([`crate::ErrorClass`]). A
//! retryable one (SQL, Redis, broker unreachable or slow) keeps what is pending, pauses the
//! partitions and tries the cycle again with backoff; a refused commit (the group moved on)
//! keeps the offsets for partitions still owned and drops them for partitions revoked. Only a
//! fatal error (a DLQ topic that can never be written, a broken configuration) ends the run,
//! without committing anything past it (exit code 1). A pipeline that cannot move — a fatal
//! SQL error, or failures outlasting `[stall] after_ms` — is *stalled* (`stall`): under
//! `policy = "exit"` the process leaves the group and exits with [`EXIT_STALLED`], under
//! `"wait"` it keeps retrying, unready. When partitions are revoked, the cycle runs inside
//! the rebalance callback before they are released; what it could not commit is left to the
//! next owner, which replays it. The consumer runs on its own thread (librdkafka's callbacks
//! are synchronous) and drives the async engine through a runtime handle.

pub mod checkpoints;
pub mod config;
pub mod events;
pub mod http;
pub(crate) mod metrics;
mod output;
mod pipeline;
pub mod record;
pub mod reload;
mod stall;
pub mod trace;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::engine::SyncEngine;
use crate::error::{ErrorClass, Result, SyncError};
use config::PipelineConfig;
use http::Health;
use output::Output;
use pipeline::Pipeline;

/// The exit code of a sidecar that stalled under `[stall] policy = "exit"` (sysexits'
/// `EX_TEMPFAIL`: a temporary failure, try again). Fatal errors exit with 1.
pub const EXIT_STALLED: i32 = 75;

/// How often librdkafka reports its statistics (the consumer lag), unless
/// `[kafka.consumer] "statistics.interval.ms"` says otherwise (0 turns them off).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// How the poll loop ended.
enum Ending {
    /// A stop signal, and everything consumed was drained.
    Stopped,
    /// Stalled under `policy = "exit"`: the group was left, nothing more is committed.
    Stalled,
}

/// Counts of one run, logged at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub written: u64,
    pub dlq: u64,
    pub confirmations: u64,
    pub checkpoints: u64,
    /// The run ended stalled under `[stall] policy = "exit"`: the binary exits with
    /// [`EXIT_STALLED`]. The engine was not shut down (its writer is still retrying).
    pub stalled: bool,
}

/// Runs the sidecar until `stop` becomes true, then drains: everything consumed is made
/// durable, confirmed and committed before it returns. With `file` (the pipeline file
/// `config` was loaded from), its live settings follow the file ([`reload`]). A pipeline
/// stalled under `[stall] policy = "exit"` returns at once with [`Summary::stalled`] (the
/// engine cannot be shut down cleanly: its writer is retrying a batch that does not go through).
pub async fn run(
    config: PipelineConfig,
    file: Option<PathBuf>,
    stop: Arc<AtomicBool>,
) -> Result<Summary> {
    let (engine_tx, rx) = watch::channel(config.engine.clone());
    let (pipeline_tx, pipeline_rx) = watch::channel(config.clone());
    if let Some(level) = &config.log_level {
        reload::apply_log_level(level);
    }
    if let Some(file) = file {
        let live = reload::Live {
            engine: engine_tx,
            pipeline: pipeline_tx,
        };
        reload::spawn(file, config.clone(), live);
    }
    // it serves no reads: L1 holds what is not durable yet, nothing more
    let mut engine = SyncEngine::new(config.engine.clone(), rx).without_read_cache();
    let health = Arc::new(Health::new(Duration::from_millis(
        config.http.unready_after_ms,
    )));
    if !config.http.listen.is_empty() {
        // up before the engine starts: /healthz answers (and /readyz says why not) while
        // SQL is still being waited for
        http::serve(&config.http.listen, health.clone()).await?;
    }
    start(&mut engine, &stop).await?;
    let engine = Arc::new(engine);
    let output = Output::new(&config, Handle::current())?;
    let mut pipeline = Pipeline::new(
        engine.clone(),
        output,
        Handle::current(),
        config.clone(),
        health.clone(),
    );
    pipeline.follow(pipeline_rx);
    let pipeline = Arc::new(Mutex::new(pipeline));
    let consumer_pipeline = pipeline.clone();
    let result =
        tokio::task::spawn_blocking(move || consume(config, consumer_pipeline, health, stop))
            .await
            .map_err(|e| SyncError::Config(format!("consumer thread: {e}")))?;
    if let Ok(Ending::Stalled) = result {
        error!(
            code = EXIT_STALLED,
            "exiting: the pipeline stalled; offsets are committed only up to what is durable"
        );
        // no engine.shutdown(): its writer is retrying a batch that does not go through, and
        // nothing it holds is committed; it ends with the process
        let summary = pipeline.lock().expect("pipeline lock").summary;
        return Ok(Summary {
            stalled: true,
            ..summary
        });
    }
    engine.shutdown().await;
    let summary = pipeline.lock().expect("pipeline lock").summary;
    info!(?summary, "sidecar stopped");
    result.map(|_| summary)
}

/// Starts the engine, waiting for SQL while it is unreachable (a database failing over as the
/// sidecar starts is not a reason to crash-loop); a fatal error, or a stop signal, ends it.
async fn start(engine: &mut SyncEngine, stop: &AtomicBool) -> Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match engine.start().await {
            Ok(()) => return Ok(()),
            Err(e) if e.class() == ErrorClass::Retryable && !stop.load(Ordering::SeqCst) => {
                warn!(error = %e, retry_in = ?delay, "the engine cannot start yet (SQL unreachable?); retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// librdkafka's reconnect backoff grows to 10 s by default: after a broker outage of that
/// length the sidecar would sit idle for up to 10 s more. 1 s costs one connection attempt per
/// second while a broker is away (both clients; `[kafka.consumer]`/`[kafka.producer]` override).
const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

fn consumer_config(config: &PipelineConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    for (k, v) in config.kafka.consumer_properties() {
        c.set(k, v);
    }
    c
}

/// The poll loop (blocking thread).
fn consume(
    config: PipelineConfig,
    pipeline: Arc<Mutex<Pipeline>>,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
) -> Result<Ending> {
    let context = Revocations {
        pipeline: pipeline.clone(),
        health: health.clone(),
        lag: metrics::Lag::new(&config.kafka.input_topic),
        refused: Mutex::new(None),
    };
    let consumer: BaseConsumer<Revocations> =
        consumer_config(&config).create_with_context(context)?;
    consumer.subscribe(&[&config.kafka.input_topic])?;
    info!(
        topic = config.kafka.input_topic,
        group = config.kafka.group_id,
        "consuming"
    );
    while !stop.load(Ordering::SeqCst) {
        if let Some(reason) = consumer.context().refused.lock().expect("lock").take() {
            return Err(SyncError::Config(format!(
                "Kafka ({}) refused the connection: {reason}",
                config.kafka.brokers
            )));
        }
        health.polled();
        pipeline
            .lock()
            .expect("pipeline lock")
            .backpressure(&consumer);
        let wait = pipeline.lock().expect("pipeline lock").poll_wait();
        if let Some(message) = consumer.poll(wait) {
            match message {
                Ok(message) => pipeline.lock().expect("pipeline lock").accept(&message)?,
                Err(e) => warn!(error = %e, "consumer error (librdkafka retries)"),
            }
        }
        let mut pipeline_now = pipeline.lock().expect("pipeline lock");
        pipeline_now.cycle(&consumer)?;
        if pipeline_now.stall_check() {
            return Ok(leave(&consumer, pipeline_now));
        }
    }
    let ending = drain(&consumer, &pipeline, &health)?;
    consumer.unsubscribe();
    Ok(ending)
}

/// Stalled under `policy = "exit"`: nothing more is confirmed or committed, and the group is
/// left now, so the partitions move to another member without waiting for a session timeout
/// (the revocation finds the pipeline halted and commits nothing).
fn leave(
    consumer: &BaseConsumer<Revocations>,
    mut pipeline: std::sync::MutexGuard<'_, Pipeline>,
) -> Ending {
    pipeline.halt();
    drop(pipeline);
    consumer.unsubscribe();
    Ending::Stalled
}

/// After a stop signal: consume nothing more, and run the cycle until everything consumed is
/// committed (or handed to the next owner by a rebalance). Polling goes on meanwhile, so a
/// rebalance that is under way completes.
fn drain(
    consumer: &BaseConsumer<Revocations>,
    pipeline: &Mutex<Pipeline>,
    health: &Health,
) -> Result<Ending> {
    info!("stopping: draining what was consumed");
    let mut warned = false;
    loop {
        health.polled();
        if let Ok(assigned) = consumer.assignment() {
            let _ = consumer.pause(&assigned);
        }
        {
            let mut pipeline = pipeline.lock().expect("pipeline lock");
            pipeline.drain_step(consumer)?;
            if pipeline.is_settled() {
                return Ok(Ending::Stopped);
            }
            if pipeline.stall_check() {
                return Ok(leave(consumer, pipeline));
            }
            if !warned {
                warn!("the last records are not committed yet (SQL, Redis or Kafka unavailable); still draining");
                warned = true;
            }
        }
        // records of partitions assigned meanwhile are not ours to take any more: their
        // offsets are never committed, so the next owner reads them
        let _ = consumer.poll(Duration::from_millis(100));
    }
}

/// Finishes, confirms and commits revoked partitions before librdkafka releases them; turns
/// librdkafka's statistics into the consumer lag gauges.
struct Revocations {
    pipeline: Arc<Mutex<Pipeline>>,
    health: Arc<Health>,
    lag: metrics::Lag,
    /// A TLS or authentication failure before the first assignment: the configuration (a
    /// CA, a password, a protocol) is wrong, and the poll loop ends the run with it.
    refused: Mutex<Option<String>>,
}

impl ClientContext for Revocations {
    fn stats(&self, statistics: Statistics) {
        self.lag.record(&statistics);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as Level;
        // A TLS client at a plaintext listener: the broker waits for a request that never
        // comes and librdkafka times the connection out in the TLS handshake, a failure it
        // reports only here (as a log line) and retries forever. Before the first assignment
        // that is a configuration to fix, not an outage to ride out.
        if fac == "FAIL" && message.contains("in state SSL_HANDSHAKE") && !self.health.has_joined()
        {
            *self.refused.lock().expect("lock") = Some(format!(
                "{message} (the TLS handshake never completed: is this a plaintext listener?)"
            ));
        }
        match level {
            Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            Level::Warning => warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            Level::Notice | Level::Info => {
                info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            Level::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let refusal = matches!(
            error.rdkafka_error_code(),
            Some(Code::SSL | Code::Authentication | Code::SaslAuthenticationFailed)
        );
        if refusal && !self.health.has_joined() {
            *self.refused.lock().expect("lock") = Some(reason.to_string());
        } else {
            // what librdkafka retries by itself (a broker away, a connection reset)
            warn!(error = %error, "librdkafka: {reason}");
        }
    }
}

impl ConsumerContext for Revocations {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                let revoked: Vec<(String, i32)> = partitions
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                info!(
                    count = revoked.len(),
                    lost = consumer.assignment_lost(),
                    "partitions revoked: checkpointing first"
                );
                self.pipeline
                    .lock()
                    .expect("pipeline lock")
                    .release(consumer, &revoked);
            }
            Rebalance::Assign(partitions) => {
                info!(count = partitions.count(), "partitions assigned");
                self.health.joined();
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}
