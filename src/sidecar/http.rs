//! The sidecar's HTTP endpoint: `[http] listen` in the pipeline file (env
//! `SYNC_ENGINE__HTTP__LISTEN`), `0.0.0.0:9464` by default, an empty value turns it off.
//!
//! - `GET /healthz` — 200 while the poll loop has turned within [`LIVE_WITHIN`] (the process
//!   and its consumer thread are alive); 503 otherwise.
//! - `GET /readyz` — 200 once the consumer has joined its group, while no commit cycle
//!   has been failing for longer than `[http] unready_after_ms` (SQL, Redis or Kafka away) and
//!   while the pipeline is not stalled (`[stall]`, `super::stall`); 503 with
//!   `{"ready": false, "reason": "…"}` otherwise.
//! - `GET /metrics` — every `sync_engine_*` metric in the Prometheus text format, with
//!   `sync_engine_ready` saying what `/readyz` would answer.
//!
//! [`Health`] is what the poll loop and the pipeline report to; the metrics themselves are
//! recorded with the `metrics` macros where things happen and rendered by the one process-wide
//! Prometheus recorder ([`prometheus`]), which knows their help texts (`super::metrics`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tracing::{info, warn};

use crate::error::{Result, SyncError};

/// The poll loop turns at least every 100 ms, also while paused; one blocked this long (a
/// synchronous commit or a rebalance callback waiting on a broker) is not alive.
pub const LIVE_WITHIN: Duration = Duration::from_secs(60);

/// Latency buckets, in seconds, for every `_seconds` histogram.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of the one histogram that counts records (per engine batch), not seconds.
const RECORD_BUCKETS: [f64; 12] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// What the poll loop and the pipeline tell the endpoint.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` of the poll loop's last turn.
    polled_ms: AtomicU64,
    joined: AtomicBool,
    /// Since when commit cycles have been failing, and the last reason.
    failing: Mutex<Option<(Instant, String)>>,
    unready_after: Duration,
    /// Why the pipeline is stalled, while it is.
    stalled: Mutex<Option<String>>,
}

impl Health {
    pub fn new(unready_after: Duration) -> Health {
        Health {
            started: Instant::now(),
            polled_ms: AtomicU64::new(0),
            joined: AtomicBool::new(false),
            failing: Mutex::new(None),
            unready_after,
            stalled: Mutex::new(None),
        }
    }

    /// The poll loop turned.
    pub fn polled(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.polled_ms.store(ms, Ordering::Relaxed);
    }

    /// The consumer got its (possibly empty) assignment: it is a member of the group.
    pub fn joined(&self) {
        self.joined.store(true, Ordering::Relaxed);
    }

    /// Whether the consumer has been a member of its group (it may have left since).
    pub fn has_joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    /// A commit cycle failed with something that is retried.
    pub fn cycle_failed(&self, reason: &str) {
        let mut failing = self.failing.lock().expect("health lock");
        let since = failing
            .as_ref()
            .map_or_else(Instant::now, |(since, _)| *since);
        *failing = Some((since, reason.to_string()));
    }

    /// A commit cycle went through.
    pub fn cycle_ok(&self) {
        *self.failing.lock().expect("health lock") = None;
    }

    /// The pipeline is stalled (`Some(reason)`) or no longer is (`None`).
    pub fn stalled(&self, reason: Option<&str>) {
        *self.stalled.lock().expect("health lock") = reason.map(str::to_string);
        metrics::gauge!("sync_engine_stalled").set(if reason.is_some() { 1.0 } else { 0.0 });
    }

    /// How long cycles have been failing (zero while they go through), and why.
    pub fn failing_for(&self) -> Option<(Duration, String)> {
        let failing = self.failing.lock().expect("health lock");
        failing
            .as_ref()
            .map(|(since, reason)| (since.elapsed(), reason.clone()))
    }

    fn live(&self) -> std::result::Result<(), String> {
        let polled = Duration::from_millis(self.polled_ms.load(Ordering::Relaxed));
        let idle = self.started.elapsed().saturating_sub(polled);
        if idle > LIVE_WITHIN {
            return Err(format!(
                "the poll loop has not turned for {} s",
                idle.as_secs()
            ));
        }
        Ok(())
    }

    pub(super) fn ready(&self) -> std::result::Result<(), String> {
        self.live()?;
        if !self.joined.load(Ordering::Relaxed) {
            return Err("not a member of the consumer group yet".into());
        }
        if let Some(reason) = self.stalled.lock().expect("health lock").as_ref() {
            return Err(format!("stalled: {reason}"));
        }
        if let Some((failing, reason)) = self.failing_for() {
            if failing >= self.unready_after {
                return Err(format!(
                    "checkpoints failing for {} s: {reason}",
                    failing.as_secs()
                ));
            }
        }
        Ok(())
    }
}

/// The process-wide Prometheus recorder, installed on first use. If another recorder was
/// installed first (a host application embedding the sidecar), `/metrics` renders an empty
/// page rather than failing the run.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(super::metrics::BATCH_RECORDS.into()),
                    &RECORD_BUCKETS,
                )
            })
            .expect("non-empty buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            warn!("a metrics recorder was already installed: /metrics stays empty");
        }
        super::metrics::describe();
        handle
    })
}

/// Binds `listen` (so a taken or malformed address is a configuration error at start) and
/// serves the endpoint on the current runtime until the process ends.
pub async fn serve(listen: &str, health: Arc<Health>) -> Result<SocketAddr> {
    let prometheus = prometheus();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| SyncError::Config(format!("[http] listen = {listen:?}: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| SyncError::Config(format!("[http] listen = {listen:?}: {e}")))?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(move |State(health): State<Arc<Health>>| async move {
                // readiness is judged when asked, as for /readyz: so is its gauge
                let ready = if health.ready().is_ok() { 1.0 } else { 0.0 };
                metrics::gauge!("sync_engine_ready").set(ready);
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    prometheus.render(),
                )
            }),
        )
        .with_state(health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "the HTTP endpoint stopped");
        }
    });
    info!(%address, "HTTP endpoint: /healthz /readyz /metrics");
    Ok(address)
}

async fn healthz(State(health): State<Arc<Health>>) -> (StatusCode, Json<serde_json::Value>) {
    answer("live", health.live())
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, Json<serde_json::Value>) {
    answer("ready", health.ready())
}

/// 200 `{"<what>": true}`, or 503 `{"<what>": false, "reason": …}`.
fn answer(
    what: &str,
    check: std::result::Result<(), String>,
) -> (StatusCode, Json<serde_json::Value>) {
    match check {
        Ok(()) => (StatusCode::OK, Json(json!({ what: true }))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ what: false, "reason": reason })),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_joined_and_not_failing_for_long() {
        let health = Health::new(Duration::from_millis(50));
        health.polled();
        assert!(health.live().is_ok());
        assert!(health.ready().unwrap_err().contains("consumer group"));
        health.joined();
        assert!(health.ready().is_ok());
        health.cycle_failed("SQL unreachable");
        assert!(health.ready().is_ok(), "a short failure keeps it ready");
        std::thread::sleep(Duration::from_millis(60));
        health.cycle_failed("SQL still unreachable");
        let reason = health.ready().unwrap_err();
        assert!(reason.contains("SQL still unreachable"), "{reason}");
        health.cycle_ok();
        assert!(health.ready().is_ok());
        health.stalled(Some("SQL tier: table gone"));
        assert_eq!(health.ready().unwrap_err(), "stalled: SQL tier: table gone");
        assert!(health.live().is_ok(), "a stalled pipeline is still alive");
        health.stalled(None);
        assert!(health.ready().is_ok());
    }
}
