//! The commit cycle: whether it is due ([`Pipeline::cycle`]), one run of it with its retry
//! or halt, and its five steps in order, numbered as in the module doc.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use super::{halted, Partition, Pipeline, Unpublished};
use crate::error::{ErrorClass, Result, SyncError};
use crate::sidecar::events::{Checkpoint, Confirmation, ConfirmedItem, ConfirmedOp, Outcome};

/// How long a cycle waits for the engine to be durable before it pauses the partitions and
/// lets the poll loop go on (rebalances and heartbeats must not wait for SQL).
pub(super) const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// How long the cycle waits for one SQL read of its own (a partition's root or progress).
const READ_WAIT: Duration = Duration::from_secs(5);
/// While cycles keep failing, at most one WARN about it per this interval.
const FAILURE_REPORT_EVERY: Duration = Duration::from_secs(30);
pub(super) const FIRST_RETRY: Duration = Duration::from_millis(100);
pub(super) const LAST_RETRY: Duration = Duration::from_secs(5);

impl Pipeline {
    /// One turn of the poll loop: the cycle when it is due, checkpoint events when theirs are.
    pub fn cycle<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<()> {
        if self.halted {
            return Err(halted());
        }
        if let Some(live) = self
            .live
            .as_mut()
            .filter(|l| l.has_changed().unwrap_or(false))
        {
            self.config = live.borrow_and_update().clone();
        }
        if self.due() {
            self.run_cycle(consumer, false)?;
        }
        Ok(())
    }

    fn due(&self) -> bool {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let count = self.pending_records();
        let age = Duration::from_millis(self.config.engine.batch_flush_ms);
        let interval = Duration::from_millis(self.config.kafka.checkpoint_interval_ms);
        count >= self.config.engine.batch_flush_count
            || self.pending_since.is_some_and(|t| t.elapsed() >= age)
            || !self.uncommitted.is_empty()
            || self
                .checkpoints
                .values()
                .any(|u| u.since.elapsed() >= interval)
    }

    /// Runs the cycle once; a retryable failure schedules the next attempt, a fatal one
    /// halts the pipeline and is returned.
    pub(super) fn run_cycle<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        all: bool,
    ) -> Result<()> {
        let was_failing = self.retry_at.is_some();
        let started = Instant::now();
        let result = self.try_cycle(consumer, all);
        self.meters
            .pending_records
            .set(self.pending_records() as f64);
        match result {
            Ok(()) => {
                self.meters.cycle.record(started.elapsed());
                self.report_dead_letters(all);
                self.health.cycle_ok();
                if was_failing {
                    info!("commit cycle went through again");
                }
                self.waiting = false;
                self.retry_at = None;
                self.retry_delay = FIRST_RETRY;
                self.failure_reported = None;
                self.fatal_sql = None;
                Ok(())
            }
            // a fatal SQL error is retried too: an operator can fix it without losing
            // anything consumed, and the stall policy says whether to wait for that
            Err(e) if e.class() == ErrorClass::Retryable || matches!(e, SyncError::Sql(_)) => {
                counter!("sync_engine_cycle_failures_total", "class" => e.class().as_str())
                    .increment(1);
                self.health.cycle_failed(&e.to_string());
                self.fatal_sql = (e.class() == ErrorClass::Fatal).then(|| e.to_string());
                if self
                    .failure_reported
                    .is_none_or(|t| t.elapsed() >= FAILURE_REPORT_EVERY)
                {
                    warn!(error = %e, retry_in = ?self.retry_delay, "commit cycle incomplete; nothing uncommitted is lost, retrying");
                    self.failure_reported = Some(Instant::now());
                } else {
                    debug!(error = %e, retry_in = ?self.retry_delay, "commit cycle still incomplete; retrying");
                }
                self.retry_at = Some(Instant::now() + self.retry_delay);
                self.retry_delay = (self.retry_delay * 2).min(LAST_RETRY);
                Ok(())
            }
            Err(e) => {
                counter!("sync_engine_cycle_failures_total", "class" => "fatal").increment(1);
                self.health.cycle_failed(&e.to_string());
                error!(error = %e, "fatal: the sidecar stops without committing anything past this point");
                self.halted = true;
                Err(e)
            }
        }
    }

    fn try_cycle<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        all: bool,
    ) -> Result<()> {
        let mut durable_at = None;
        if !self.pending.is_empty() {
            // 1. durable
            self.waiting = true; // until the confirmations are out
            self.wait(
                FLUSH_WAIT,
                "SQL or Redis to take the batch",
                self.engine.flush(),
            )
            .map_err(|e| self.why_not_durable(e))?;
            // 2. DLQ records acknowledged
            self.deliver_dead_letters()?;
            durable_at = Some(Instant::now());
            // 3. confirmations
            let partitions: Vec<Partition> = self.pending.keys().cloned().collect();
            for partition in partitions {
                self.confirm(&partition)?;
            }
            self.pending_since = None;
            self.waiting = false;
        }
        // 4. checkpoint events, before the offsets they describe are committed
        self.publish_checkpoints(all)?;
        // 5. commit
        self.commit(consumer)?;
        if let Some(t) = durable_at {
            self.meters.confirm_commit.record(t.elapsed());
        }
        Ok(())
    }

    /// A flush that timed out says only that it waited; the write the engine is retrying
    /// says what it waits for (for `/readyz` and the stall reason).
    fn why_not_durable(&self, timeout: SyncError) -> SyncError {
        match self.engine.write_failure() {
            Some(failure) => SyncError::Unavailable(format!(
                "{} writes failing for {} s ({} attempts): {}",
                failure.tier,
                failure.since.elapsed().as_secs(),
                failure.attempts,
                failure.error
            )),
            None => timeout,
        }
    }

    fn deliver_dead_letters(&mut self) -> Result<()> {
        while let Some(letter) = self.dead_letters.first_mut() {
            if let Err(e) = self.output.await_dead_letter(letter) {
                error!(error = %e, class = ?e.class(), topic = self.config.kafka.dlq_topic,
                    "a record could not be written to the DLQ; it and everything after it stay uncommitted");
                return Err(e);
            }
            self.dead_letters.remove(0);
        }
        Ok(())
    }

    /// Produces the confirmation of everything pending for `partition` and moves it to
    /// `uncommitted`.
    fn confirm(&mut self, partition: &Partition) -> Result<()> {
        let (topic, number) = partition;
        let source = format!("{topic}/{number}");
        // nothing else writes this partition while we own it: this is the root after
        // exactly these records (or, after a crash, after what SQL already had)
        let root = self.wait(READ_WAIT, "SQL to answer", self.engine.merkle_root(&source))?;
        let sql_offset = self
            .wait(
                READ_WAIT,
                "SQL to answer",
                self.engine.source_version(&source),
            )?
            .map_or(-1, |v| v as i64 - 1);
        let horizon = self.engine.replay_horizon(&source).unwrap_or(0);
        let consumed = &self.pending[partition];
        let oldest_ms = consumed.oldest_ms;
        let items: Vec<ConfirmedItem> = consumed
            .records
            .iter()
            .map(|c| {
                let mut item = c.item.clone();
                if item.op != ConfirmedOp::Dlq {
                    let replay = c.durable && (item.offset as u64) < horizon;
                    item.outcome = Some(if replay {
                        Outcome::Unchanged
                    } else {
                        Outcome::Applied
                    });
                }
                item
            })
            .collect();
        let last_offset = items.last().map_or(0, |i| i.offset);
        let template = Confirmation {
            kind: Confirmation::KIND,
            source_topic: topic.clone(),
            partition: *number,
            first_offset: 0,
            last_offset: 0,
            items: Vec::new(),
            state_root: root.root.clone(),
            item_count: root.item_count,
            state_offset: last_offset.max(sql_offset),
        };
        let events = self.output.confirm(&template, &items)? as u64;
        if let Some(oldest_ms) = oldest_ms {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            // a producer's clock ahead of ours would make it negative
            let age_ms = (now_ms - oldest_ms).max(0);
            self.meters
                .produce_to_confirmation
                .record(age_ms as f64 / 1000.0);
        }
        self.summary.confirmations += events;
        counter!("sync_engine_confirmations_total").increment(events);
        let mut tally: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
        for item in &items {
            let outcome = item.outcome.map_or("none", Outcome::as_str);
            *tally.entry((item.op.as_str(), outcome)).or_default() += 1;
        }
        for ((op, outcome), count) in tally {
            counter!("sync_engine_confirmed_records_total", "op" => op, "outcome" => outcome)
                .increment(count);
        }

        let unpublished = self
            .checkpoints
            .entry(partition.clone())
            .or_insert_with(|| Unpublished {
                checkpoint: Checkpoint {
                    kind: Checkpoint::KIND.to_string(),
                    source_topic: topic.clone(),
                    partition: *number,
                    offset: 0,
                    state_root: String::new(),
                    item_count: 0,
                    algorithm: crate::merkle::ALGORITHM.to_string(),
                },
                batches: 0,
                since: Instant::now(),
            });
        unpublished.checkpoint.offset = template.state_offset;
        unpublished.checkpoint.state_root = root.root;
        unpublished.checkpoint.item_count = root.item_count;
        unpublished.batches += 1;
        self.uncommitted.insert(partition.clone(), last_offset + 1);
        self.pending.remove(partition);
        Ok(())
    }

    /// Sends the checkpoint events that are due (all of them with `all`), delivery awaited.
    fn publish_checkpoints(&mut self, all: bool) -> Result<()> {
        let every = self.config.kafka.checkpoint_every_batches.max(1);
        let interval = Duration::from_millis(self.config.kafka.checkpoint_interval_ms);
        let due: Vec<Partition> = self
            .checkpoints
            .iter()
            .filter(|(_, u)| all || u.batches >= every || u.since.elapsed() >= interval)
            .map(|(k, _)| k.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let events: Vec<&Checkpoint> = due
            .iter()
            .map(|k| &self.checkpoints[k].checkpoint)
            .collect();
        self.output.publish(&events)?;
        self.summary.checkpoints += due.len() as u64;
        counter!("sync_engine_checkpoints_total").increment(due.len() as u64);
        for key in due {
            self.checkpoints.remove(&key);
        }
        Ok(())
    }

    /// Commits the confirmed offsets of the partitions this consumer still owns. A refused
    /// commit keeps them for the next cycle; those of partitions given up meanwhile are
    /// dropped by [`Pipeline::release`] (the next owner replays from the last commit).
    fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<()> {
        if self.uncommitted.is_empty() {
            return Ok(());
        }
        let assigned = consumer.assignment()?;
        let mut offsets = TopicPartitionList::new();
        let mut committing = Vec::new();
        for ((topic, partition), offset) in &self.uncommitted {
            if assigned.find_partition(topic, *partition).is_some() {
                offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
                committing.push((topic.clone(), *partition));
            }
        }
        if committing.is_empty() {
            return Ok(());
        }
        match consumer.commit(&offsets, CommitMode::Sync) {
            Ok(()) => {
                for key in committing {
                    self.uncommitted.remove(&key);
                }
                counter!("sync_engine_commits_total").increment(1);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                gauge!("sync_engine_last_commit_timestamp_seconds").set(now.as_secs_f64());
                Ok(())
            }
            Err(e) => {
                // e.g. the group is rebalancing or moved on (IllegalGeneration,
                // UnknownMemberId, RebalanceInProgress): after the rebalance the offsets are
                // committed again if the partitions are still ours, dropped if not. (The
                // commit is synchronous: asynchronous ones, sent while a cooperative rebalance
                // was under way, left tansu's group without an assignment for minutes in
                // tests/sidecar_faults.rs, and rust-rdkafka does not report their results,
                // fede1024/rust-rdkafka#856.)
                warn!(error = %e, "offset commit refused; retried while the partitions are ours");
                Err(SyncError::Unavailable(format!(
                    "offset commit refused: {e}"
                )))
            }
        }
    }

    fn pending_records(&self) -> usize {
        self.pending.values().map(|u| u.records.len()).sum()
    }

    /// Runs an engine call on the runtime, bounded by `limit`.
    fn wait<T>(
        &self,
        limit: Duration,
        what: &str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.handle.block_on(tokio::time::timeout(limit, call)) {
            Ok(result) => result,
            Err(_) => Err(SyncError::Unavailable(format!(
                "waited {limit:?} for {what}"
            ))),
        }
    }
}
