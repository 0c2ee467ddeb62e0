//! The commit cycle: whether it is due ([`Pipeline::cycle`]), one run of it with its retry
//! or halt, and its five steps in order, numbered as in the module doc.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use tokio::sync::oneshot::error::TryRecvError;

use super::{halted, Confirming, Partition, Pipeline, Publishing, Sealed, Unpublished};
use crate::error::{ErrorClass, Result, SyncError};
use crate::sidecar::events::{Checkpoint, Confirmation, ConfirmedItem, ConfirmedOp, Outcome};

/// How long a sealed batch may wait to be durable before the cycle fails and pauses the
/// partitions (a revocation or a stop waits that long per attempt; rebalances and heartbeats
/// must not wait for SQL).
pub(super) const FLUSH_WAIT: Duration = Duration::from_secs(2);
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
        let interval = Duration::from_millis(self.config.kafka.checkpoint_interval_ms);
        self.seal_due()
            || !self.sealed.is_empty()
            || !self.uncommitted.is_empty()
            || self.publishing.is_some()
            || self
                .checkpoints
                .values()
                .any(|u| u.since.elapsed() >= interval)
    }

    /// `pending` holds a batch: `batch_flush_count` records, or records `batch_flush_ms` old.
    fn seal_due(&self) -> bool {
        let age = Duration::from_millis(self.config.engine.batch_flush_ms);
        self.unsealed_records() >= self.config.engine.batch_flush_count
            || self.pending_since.is_some_and(|t| t.elapsed() >= age)
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
            Ok(worked) => {
                if worked {
                    self.meters.cycle.record(started.elapsed());
                }
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

    /// One pass; `Ok(true)` when it did something (sealed, confirmed, published or
    /// committed), `Ok(false)` when it only found the oldest sealed batch still being written
    /// or acknowledged. With `all`, waits for every step; otherwise only when every batch in
    /// flight is taken and the next is due.
    fn try_cycle<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        all: bool,
    ) -> Result<bool> {
        let (published, uncommitted) = (self.summary.checkpoints, self.uncommitted.len());
        // 1. with `all`, seal everything and wait for all of it below
        let mut sealing = all && !self.pending.is_empty();
        if sealing {
            self.seal()?;
        }
        // every batch in flight is taken and the next one is due: wait for the oldest, so
        // the next seal is on time (and the loop never runs further ahead of the stores)
        let mut wait = all || (self.sealed.len() >= super::MAX_SEALED && self.seal_due());
        let mut confirmed = false;
        // 2–3. the oldest batch durable, its DLQ records acknowledged, its confirmations out
        while self.confirm_oldest(wait)? {
            self.sealed.pop_front();
            confirmed = true;
            wait = all;
            // 4. the checkpoint events this batch made due, before the next batch moves
            // them on (one per confirmation with `checkpoint_every_batches = 1`)
            self.publish_checkpoints(false, false)?;
        }
        // 1. seal, when due and a batch in flight has room
        if !all && self.seal_due() && self.sealed.len() < super::MAX_SEALED {
            sealing = true;
            self.seal()?;
        }
        // 4. checkpoint events due by age (all of them with `all`), acknowledged before the
        // offsets they describe are committed
        self.publish_checkpoints(all, all)?;
        // 5. commit
        self.commit(consumer)?;
        Ok(sealing
            || confirmed
            || self.summary.checkpoints > published
            || self.uncommitted.len() < uncommitted)
    }

    /// Hands everything pending to the engine to be made durable; the loop goes on consuming.
    fn seal(&mut self) -> Result<()> {
        let sources = self
            .pending
            .keys()
            .map(|(topic, partition)| format!("{topic}/{partition}"))
            .collect();
        let answer = self.engine.seal(sources)?;
        self.sealed.push_back(Sealed {
            records: std::mem::take(&mut self.pending),
            answer,
            states: None,
            since: Instant::now(),
            durable_at: None,
            confirming: BTreeMap::new(),
        });
        self.pending_since = None;
        Ok(())
    }

    /// Whether the oldest sealed batch is durable (its answer came); with `block`, waits for
    /// it up to [`FLUSH_WAIT`]. One that has waited that long fails the cycle and pauses
    /// consumption until it is durable.
    fn oldest_sealed_is_durable(&mut self, block: bool) -> Result<bool> {
        let Some(oldest) = self.sealed.front_mut() else {
            return Ok(false);
        };
        if oldest.states.is_some() {
            return Ok(true);
        }
        let answer = if block {
            match self
                .handle
                .block_on(tokio::time::timeout(FLUSH_WAIT, &mut oldest.answer))
            {
                Ok(answer) => Some(answer.map_err(|_| ())),
                Err(_) => None,
            }
        } else {
            match oldest.answer.try_recv() {
                Ok(states) => Some(Ok(states)),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Closed) => Some(Err(())),
            }
        };
        let overdue = block || oldest.since.elapsed() >= FLUSH_WAIT;
        match answer {
            Some(Ok(states)) => {
                let states = states.into_iter().map(|s| (s.source.clone(), s));
                oldest.states = Some(states.collect());
                oldest.durable_at = Some(Instant::now());
                Ok(true)
            }
            Some(Err(())) => Err(SyncError::NotRunning),
            None if overdue => {
                self.waiting = true;
                Err(self.why_not_durable(SyncError::Unavailable(format!(
                    "waited {FLUSH_WAIT:?} for SQL or Redis to take the batch"
                ))))
            }
            None => Ok(false),
        }
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

    /// Steps 2–3 for the oldest sealed batch: once it is durable, its DLQ records
    /// acknowledged, produces the confirmation of each of its partitions not produced yet, and
    /// moves each acknowledged one to `uncommitted`. True when all of them are; with `wait`,
    /// waits for that. A partition whose confirmation failed is produced again by the next
    /// attempt (the first failure is returned); the others are done, so nothing is confirmed
    /// twice.
    fn confirm_oldest(&mut self, wait: bool) -> Result<bool> {
        if !self.oldest_sealed_is_durable(wait)? {
            return Ok(false);
        }
        self.waiting = true; // until the confirmations are out
        self.deliver_dead_letters()?;
        let unsent: Vec<Partition> = self.sealed[0]
            .records
            .keys()
            .filter(|p| !self.sealed[0].confirming.contains_key(*p))
            .cloned()
            .collect();
        for partition in unsent {
            let (template, items) = self.confirmation(&partition)?;
            let flight = self.output.send_confirmation(&template, &items)?;
            let confirming = Confirming {
                template,
                items,
                flight,
            };
            self.sealed[0].confirming.insert(partition, confirming);
        }
        let mut failed = None;
        let partitions: Vec<Partition> = self.sealed[0].confirming.keys().cloned().collect();
        for partition in partitions {
            let confirming = self.sealed[0]
                .confirming
                .get_mut(&partition)
                .expect("listed above");
            match self.output.delivered(&mut confirming.flight, wait) {
                None => {}
                Some(result) => {
                    let confirming = self.sealed[0]
                        .confirming
                        .remove(&partition)
                        .expect("listed above");
                    match result {
                        Ok(events) => self.confirmed(
                            &partition,
                            confirming.template,
                            &confirming.items,
                            events as u64,
                        ),
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.waiting = false;
        Ok(self.sealed[0].records.is_empty())
    }

    /// The confirmation of everything the oldest sealed batch holds for `partition`.
    fn confirmation(&self, partition: &Partition) -> Result<(Confirmation, Vec<ConfirmedItem>)> {
        let (topic, number) = partition;
        let source = format!("{topic}/{number}");
        let sealed = &self.sealed[0];
        // nothing else writes this partition while we own it, and the engine read this right
        // after the batch: the root after exactly these records (or, after a crash, after
        // what SQL already had)
        let state = sealed
            .states
            .as_ref()
            .and_then(|states| states.get(&source))
            .cloned()
            .ok_or_else(|| SyncError::Unavailable(format!("no sealed state for {source}")))?;
        let (root, sql_offset) = (state.root, state.progress.map_or(-1, |v| v as i64 - 1));
        let horizon = self.engine.replay_horizon(&source).unwrap_or(0);
        let consumed = &sealed.records[partition];
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
        Ok((template, items))
    }

    /// A partition's confirmation was delivered: its metrics, its checkpoint, its offset to
    /// commit.
    fn confirmed(
        &mut self,
        partition: &Partition,
        template: Confirmation,
        items: &[ConfirmedItem],
        events: u64,
    ) {
        let (topic, number) = partition;
        let last_offset = items.last().map_or(0, |i| i.offset);
        let oldest_ms = self.sealed[0].records[partition].oldest_ms;
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
        for item in items {
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
        unpublished.checkpoint.state_root = template.state_root;
        unpublished.checkpoint.item_count = template.item_count;
        unpublished.batches += 1;
        self.uncommitted.insert(partition.clone(), last_offset + 1);
        if let Some(t) = self.sealed[0].durable_at {
            self.uncommitted_since.get_or_insert(t);
        }
        self.sealed[0].records.remove(partition);
    }

    /// Step 4: once the checkpoint events in flight are acknowledged, produces those now due
    /// (all of them with `all`); with `wait`, waits for their acknowledgement. Events whose
    /// delivery failed go back to `checkpoints` (unless a newer state of their partition is
    /// there), to be produced again.
    fn publish_checkpoints(&mut self, all: bool, wait: bool) -> Result<()> {
        if !self.checkpoints_delivered(wait)? {
            return Ok(());
        }
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
        let checkpoints: Vec<(Partition, Unpublished)> = due
            .into_iter()
            .map(|k| {
                let unpublished = self.checkpoints.remove(&k).expect("listed above");
                (k, unpublished)
            })
            .collect();
        match self
            .output
            .send_checkpoints(checkpoints.iter().map(|(_, u)| &u.checkpoint))
        {
            Ok(flight) => {
                self.publishing = Some(Publishing {
                    checkpoints,
                    flight,
                });
                self.checkpoints_delivered(wait).map(|_| ())
            }
            Err(e) => {
                self.unpublish(checkpoints);
                Err(e)
            }
        }
    }

    /// Whether no checkpoint event is in flight any more (with `wait`, waits for that).
    fn checkpoints_delivered(&mut self, wait: bool) -> Result<bool> {
        let Some(publishing) = self.publishing.as_mut() else {
            return Ok(true);
        };
        match self.output.delivered(&mut publishing.flight, wait) {
            None => Ok(false),
            Some(result) => {
                let publishing = self.publishing.take().expect("looked at above");
                match result {
                    Ok(events) => {
                        self.summary.checkpoints += events as u64;
                        counter!("sync_engine_checkpoints_total").increment(events as u64);
                        Ok(true)
                    }
                    Err(e) => {
                        self.unpublish(publishing.checkpoints);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Puts checkpoints whose events were not delivered back, unless a newer state of their
    /// partition is waiting already.
    fn unpublish(&mut self, checkpoints: Vec<(Partition, Unpublished)>) {
        for (partition, unpublished) in checkpoints {
            self.checkpoints.entry(partition).or_insert(unpublished);
        }
    }

    /// Commits the confirmed offsets of the partitions this consumer still owns. A refused
    /// commit keeps them for the next cycle; those of partitions given up meanwhile are
    /// dropped by [`Pipeline::release`] (the next owner replays from the last commit).
    fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<()> {
        if self.uncommitted.is_empty() || self.publishing.is_some() {
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
                if let Some(t) = self.uncommitted_since.take() {
                    self.meters.confirm_commit.record(t.elapsed());
                }
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

    /// How long the poll loop may wait for a message: briefly while a sealed batch is being
    /// written or its confirmations acknowledged, or checkpoint events are, so the next step
    /// follows as soon as it can rather than after the next fetch (librdkafka's `fetch.wait.max.ms` can hold a poll for 500 ms).
    pub fn poll_wait(&self) -> Duration {
        if self.sealed.is_empty() && self.publishing.is_none() {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(2)
        }
    }

    /// Records consumed and not confirmed yet (sealed or not).
    pub(super) fn pending_records(&self) -> usize {
        let sealed = self.sealed.iter().flat_map(|s| s.records.values());
        sealed
            .chain(self.pending.values())
            .map(|u| u.records.len())
            .sum()
    }

    /// Records consumed and not sealed yet.
    pub(super) fn unsealed_records(&self) -> usize {
        self.pending.values().map(|u| u.records.len()).sum()
    }
}
