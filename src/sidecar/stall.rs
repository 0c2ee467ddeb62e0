//! The stalled-pipeline policy: `[stall]` in the pipeline file (`policy`, `after_ms`).
//!
//! The pipeline is **stalled** when retrying alone will not move it:
//! - at once, on a fatal SQL error — in a batch transaction or in the cycle's own reads
//!   (a dropped table, a revoked grant: [`crate::ErrorClass::Fatal`]);
//! - when commit cycles have been failing for `after_ms` on anything retryable (SQL,
//!   Redis, the DLQ or output topic, refused commits).
//!
//! While stalled, `/readyz` fails with the reason, `sync_engine_stalled` is 1 and the reason
//! is logged at ERROR once per [`REPORT_EVERY`] (the retries themselves are quieter). Then:
//! - `exit` (the default): the sidecar leaves its group and exits with
//!   [`super::EXIT_STALLED`]. An orchestrator restarts it, and meanwhile the group hands its
//!   partitions to members that may be able to move them; a crash-looping pod is visible.
//! - `wait`: it keeps its partitions and keeps retrying, and carries on by itself once the
//!   cause is gone.
//!
//! Either way nothing is lost and nothing is committed past what is durable: an offset is
//! committed only after everything before it is durable and confirmed, and what was consumed
//! but not committed is consumed again by whoever owns the partition next.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::config::{StallConfig, StallPolicy};
use super::http::Health;

/// While stalled (policy `wait`), the reason is logged again this often.
const REPORT_EVERY: Duration = Duration::from_secs(60);

pub(super) struct Stall {
    config: StallConfig,
    health: Arc<Health>,
    /// Since when the pipeline has been stalled.
    since: Option<Instant>,
    reported_at: Option<Instant>,
}

impl Stall {
    pub fn new(config: StallConfig, health: Arc<Health>) -> Stall {
        Stall {
            config,
            health,
            since: None,
            reported_at: None,
        }
    }

    /// Judges the pipeline from a fatal SQL error (if one is failing it) and from how long
    /// cycles have been failing and why; reports what changed to `/readyz`, the gauge and
    /// the log. True when the policy says the process must go.
    pub fn judge(&mut self, fatal: Option<String>, failing: Option<(Duration, String)>) -> bool {
        let after = Duration::from_millis(self.config.after_ms);
        let reason = fatal.or_else(|| {
            failing
                .filter(|(duration, _)| *duration >= after)
                .map(|(duration, why)| {
                    format!("checkpoints failing for {} s: {why}", duration.as_secs())
                })
        });
        let Some(reason) = reason else {
            if let Some(since) = self.since.take() {
                info!(after = ?since.elapsed(), "the pipeline is moving again: no longer stalled");
                self.health.stalled(None);
                self.reported_at = None;
            }
            return false;
        };
        self.since.get_or_insert_with(Instant::now);
        self.health.stalled(Some(&reason));
        let exit = self.config.policy == StallPolicy::Exit;
        if self.reported_at.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            self.reported_at = Some(Instant::now());
            if exit {
                error!(reason, code = super::EXIT_STALLED,
                    "pipeline stalled; [stall] policy = exit: leaving the group and exiting (nothing uncommitted is lost: the partitions' next owner replays it)");
            } else {
                error!(reason,
                    "pipeline stalled; [stall] policy = wait: keeping the partitions and retrying (/readyz fails meanwhile)");
            }
        }
        exit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stall judge with `policy` and a bound of 1 s, on a ready `Health`.
    fn judge_with(policy: StallPolicy) -> (Stall, Arc<Health>) {
        let health = Arc::new(Health::new(Duration::from_secs(30)));
        health.polled();
        health.joined();
        let config = StallConfig {
            policy,
            after_ms: 1000,
        };
        (Stall::new(config, health.clone()), health)
    }

    #[test]
    fn a_fatal_error_stalls_at_once_and_a_retryable_one_after_the_bound() {
        let (mut stall, health) = judge_with(StallPolicy::Wait);
        let short = Some((Duration::from_millis(200), "SQL away".to_string()));
        assert!(!stall.judge(None, short));
        assert!(health.ready().is_ok() && stall.since.is_none());
        let long = Some((Duration::from_millis(1500), "SQL away".to_string()));
        assert!(!stall.judge(None, long), "wait: never exits");
        let reason = health.ready().unwrap_err();
        assert!(
            reason.contains("checkpoints failing for 1 s: SQL away"),
            "{reason}"
        );
        assert!(!stall.judge(None, None));
        assert!(health.ready().is_ok(), "moving again: ready");

        let (mut stall, health) = judge_with(StallPolicy::Exit);
        assert!(stall.judge(Some("no such table".into()), None), "exit");
        assert_eq!(health.ready().unwrap_err(), "stalled: no such table");
    }
}
