//! Letting go: of revoked partitions (one last cycle, then what is left is the next owner's
//! to replay), of everything after a stop signal (cycles until settled), and of the whole
//! run when the pipeline is stalled (the stall policy decides) or halts.

use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use tracing::warn;

use super::{halted, Partition, Pipeline};
use crate::error::{ErrorClass, Result};

impl Pipeline {
    /// Partitions are being revoked: one cycle for everything consumed (so what can be
    /// committed is), then everything still held for them is forgotten — the next owner
    /// replays it from the last commit.
    pub fn release<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        revoked: &[Partition],
    ) {
        if !self.halted {
            let _ = self.run_cycle(consumer, true);
        }
        self.dead_letters.retain(|l| !revoked.contains(&l.source));
        for partition in revoked {
            let unsealed = self.pending.remove(partition).into_iter();
            for batch in &mut self.sealed {
                batch.confirming.remove(partition);
            }
            let sealed = self
                .sealed
                .iter_mut()
                .flat_map(|s| s.records.remove(partition));
            let left: usize = unsealed.chain(sealed).map(|p| p.records.len()).sum();
            let uncommitted = self.uncommitted.remove(partition);
            self.checkpoints.remove(partition);
            self.engine
                .forget_horizon(&format!("{}/{}", partition.0, partition.1));
            if left > 0 || uncommitted.is_some() {
                warn!(
                    topic = partition.0,
                    partition = partition.1,
                    left,
                    ?uncommitted,
                    "released a partition with records not committed; its next owner replays them"
                );
            }
        }
        // a batch left with no records needs no answer any more
        self.sealed.retain(|s| !s.records.is_empty());
        if self.pending.is_empty() {
            self.pending_since = None;
        }
    }

    /// One step of draining after a stop signal: like [`Pipeline::cycle`], and every
    /// checkpoint event goes out.
    pub fn drain_step<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<()> {
        if self.halted {
            return Err(halted());
        }
        if self.retry_at.is_none_or(|t| Instant::now() >= t) {
            self.run_cycle(consumer, true)?;
        }
        Ok(())
    }

    /// Nothing consumed is left uncommitted, and no checkpoint event is unpublished.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty()
            && self.sealed.is_empty()
            && self.uncommitted.is_empty()
            && self.checkpoints.is_empty()
            && self.publishing.is_none()
    }

    /// Judges whether the pipeline is stalled (a fatal SQL error in a batch or in the cycle's
    /// own reads, or cycles failing for `[stall] after_ms`); true when the policy says the
    /// process must go.
    pub fn stall_check(&mut self) -> bool {
        let failure = self.engine.write_failure();
        let fatal = match failure.as_ref().filter(|f| f.class == ErrorClass::Fatal) {
            Some(f) => Some(format!("{} writes fail with an error no retry can fix (a dropped table, a revoked grant?): {}", f.tier, f.error)),
            None => self.fatal_sql.clone(),
        };
        self.stall.judge(fatal, self.health.failing_for())
    }

    /// Stops confirming and committing for good (the process is about to exit): what is
    /// pending stays uncommitted, for the partitions' next owner to replay.
    pub fn halt(&mut self) {
        self.halted = true;
    }
}
