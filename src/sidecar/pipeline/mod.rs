//! What has been consumed but not yet committed, and the cycle that commits it.
//!
//! The cycle, in [`Pipeline::cycle`] (every `batch_flush_ms` or `batch_flush_count` records):
//! 1. make the engine durable (`flush`, bounded by [`FLUSH_WAIT`]);
//! 2. have every DLQ record acknowledged by the DLQ topic;
//! 3. per partition: read its state root, produce its confirmation (each item with its
//!    outcome), and move it from `pending` to `uncommitted`;
//! 4. produce the checkpoint events that are due;
//! 5. commit `uncommitted` for the partitions still assigned.
//!
//! A retryable failure at any step leaves everything after it for the next attempt (backoff
//! from [`FIRST_RETRY`] to [`LAST_RETRY`]); steps 1–3 failing also pause consumption. A fatal
//! one halts the pipeline: nothing is committed from then on, and the run ends with the error.
//! Fatal SQL errors are the exception: they are retried like the others and stall the
//! pipeline at once (`super::stall` decides what then), since an operator can fix them
//! (restore the table, the grant) without losing anything consumed.
//!
//! Metrics are kept per partition batch and per cycle, never per record: the oldest Kafka
//! timestamp of each partition's pending records gives the produce→confirmation latency once
//! its confirmation is delivered, and the cycle times its confirm-and-commit tail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{debug, error, info, warn};

use super::config::PipelineConfig;
use super::events::{Checkpoint, Confirmation, ConfirmedItem, ConfirmedOp, Outcome, DLQ_HEADERS};
use super::http::Health;
use super::metrics::Memory;
use super::output::{DeadLetter, Output};
use super::record::{self, RawRecord, Rejection, Write};
use super::stall::Stall;
use super::{trace, Summary};
use crate::engine::SyncEngine;
use crate::error::{ErrorClass, Result, SyncError};

/// How long a cycle waits for the engine to be durable before it pauses the partitions and
/// lets the poll loop go on (rebalances and heartbeats must not wait for SQL).
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// How long the cycle waits for one SQL read of its own (a partition's root or progress).
const READ_WAIT: Duration = Duration::from_secs(5);
/// Room the pending budget must have for consumption to go on (one large record).
const BACKPRESSURE_ROOM: usize = 1 << 20;
/// At most one WARN about DLQ records per this interval.
const DLQ_REPORT_EVERY: Duration = Duration::from_secs(10);
/// While cycles keep failing, at most one WARN about it per this interval.
const FAILURE_REPORT_EVERY: Duration = Duration::from_secs(30);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// A (topic, partition) — the record's own topic, so confirmations, commits and DLQ headers
/// always name the same one.
type Partition = (String, i32);

/// The records of one partition consumed since its last confirmation.
#[derive(Default)]
struct Unconfirmed {
    records: Vec<Consumed>,
    /// The oldest Kafka timestamp among them (CreateTime or LogAppendTime), in ms.
    oldest_ms: Option<i64>,
}

/// One consumed record waiting for its confirmation.
struct Consumed {
    item: ConfirmedItem,
    /// Written to SQL (puts routed there, every delete): a replay there changes nothing.
    durable: bool,
}

pub(super) struct Pipeline {
    engine: Arc<SyncEngine>,
    output: Output,
    handle: Handle,
    config: PipelineConfig,
    health: Arc<Health>,
    /// Per partition, the records consumed since its last confirmation, in offset order.
    pending: BTreeMap<Partition, Unconfirmed>,
    pending_since: Option<Instant>,
    /// Bad records not yet acknowledged by the DLQ topic: no confirmation before they are.
    dead_letters: Vec<DeadLetter>,
    /// Per partition, the offset to commit: everything before it is confirmed.
    uncommitted: BTreeMap<Partition, i64>,
    /// Per partition, the state confirmed since its last checkpoint event.
    checkpoints: BTreeMap<Partition, Unpublished>,
    /// The last cycle failed on something consumption must wait for (SQL, Redis, DLQ, the
    /// output topic): partitions stay paused until a cycle gets through.
    waiting: bool,
    /// Partitions are paused for backpressure.
    paused: bool,
    /// After a failed cycle, the next one waits until then.
    retry_at: Option<Instant>,
    retry_delay: Duration,
    /// When the current streak of failed cycles was last logged at WARN.
    failure_reported: Option<Instant>,
    /// The last cycle failed on a fatal SQL error (its message): the pipeline is stalled.
    fatal_sql: Option<String>,
    stall: Stall,
    /// A fatal error happened: nothing is confirmed or committed any more.
    halted: bool,
    pub summary: Summary,
    /// `sync_engine_records_received_total` per partition of the one input topic, looked up
    /// once (a labelled `counter!` allocates its labels and searches the registry each time).
    received: BTreeMap<i32, metrics::Counter>,
    /// DLQ records per code since the last WARN about them (at most one per
    /// [`DLQ_REPORT_EVERY`]: a stream of bad records is not a stream of log lines).
    dlq_unreported: BTreeMap<&'static str, u64>,
    dlq_reported_at: Option<Instant>,
    /// The configuration as hot reload last applied it (`super::reload`).
    live: Option<tokio::sync::watch::Receiver<PipelineConfig>>,
    meters: Meters,
}

/// Handles of the pipeline's unlabelled metrics, looked up once.
struct Meters {
    cycle: metrics::Histogram,
    confirm_commit: metrics::Histogram,
    produce_to_confirmation: metrics::Histogram,
    pending_records: metrics::Gauge,
    memory: Memory,
}

/// A partition's newest confirmed state that no checkpoint event carries yet.
struct Unpublished {
    checkpoint: Checkpoint,
    batches: u32,
    since: Instant,
}

impl Pipeline {
    pub fn new(
        engine: Arc<SyncEngine>,
        output: Output,
        handle: Handle,
        config: PipelineConfig,
        health: Arc<Health>,
    ) -> Self {
        let stall = Stall::new(config.stall, health.clone());
        Pipeline {
            engine,
            output,
            handle,
            config,
            health,
            pending: BTreeMap::new(),
            pending_since: None,
            dead_letters: Vec::new(),
            uncommitted: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            waiting: false,
            paused: false,
            retry_at: None,
            retry_delay: FIRST_RETRY,
            failure_reported: None,
            fatal_sql: None,
            stall,
            halted: false,
            summary: Summary::default(),
            received: BTreeMap::new(),
            dlq_unreported: BTreeMap::new(),
            dlq_reported_at: None,
            live: None,
            meters: Meters {
                cycle: histogram!("sync_engine_cycle_duration_seconds"),
                confirm_commit: histogram!("sync_engine_confirm_commit_duration_seconds"),
                produce_to_confirmation: histogram!("sync_engine_produce_to_confirmation_seconds"),
                pending_records: gauge!("sync_engine_pending_records"),
                memory: Memory::new(),
            },
        }
    }

    /// Takes the live settings (batch limits, checkpoint cadence) from `live` from now on.
    pub fn follow(&mut self, live: tokio::sync::watch::Receiver<PipelineConfig>) {
        self.live = Some(live);
    }

    /// Hands one record to the engine, or to the DLQ.
    pub fn accept(&mut self, message: &BorrowedMessage<'_>) -> Result<()> {
        let headers: Vec<(&str, Option<&[u8]>)> = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let (partition, offset) = (message.partition(), message.offset());
        self.received
            .entry(partition)
            .or_insert_with(|| {
                counter!(
                    "sync_engine_records_received_total",
                    "topic" => message.topic().to_string(),
                    "partition" => partition.to_string()
                )
            })
            .increment(1);
        let span = trace::record_span(&headers, message.topic(), partition, offset);
        let _in_span = span.enter();
        let raw = RawRecord {
            key: message.key(),
            value: message.payload(),
            headers,
        };
        let source: Arc<str> = Arc::from(format!("{}/{partition}", message.topic()));
        let version = offset as u64 + 1; // offsets start at 0; version 0 means "unversioned"
        let has_redis = self.config.engine.redis_url.is_some();
        let (item, durable) = match record::decode(&raw, self.engine.max_payload_bytes(), has_redis)
        {
            Ok(Write::Put { item, options }) => {
                let tiers = self.tiers(options.sql, options.redis);
                let confirmed = ConfirmedItem {
                    offset,
                    id: Some(item.id().to_string()),
                    op: ConfirmedOp::Put,
                    outcome: None,
                    content_hash: Some(item.content_hash().to_string()),
                    tiers,
                    error_code: None,
                };
                let durable = options.sql;
                self.handle.block_on(self.engine.submit_from(
                    source,
                    item.with_version(version),
                    options,
                ))?;
                (confirmed, durable)
            }
            Ok(Write::Delete { id }) => {
                self.handle
                    .block_on(self.engine.delete_from(source, &id, version))?;
                let confirmed = ConfirmedItem {
                    offset,
                    id: Some(id),
                    op: ConfirmedOp::Delete,
                    outcome: None,
                    content_hash: None,
                    tiers: self.tiers(true, true),
                    error_code: None,
                };
                (confirmed, true)
            }
            Err(rejection) => {
                self.dead_letter(message, &raw, &rejection);
                let confirmed = ConfirmedItem {
                    offset,
                    id: message
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .map(str::to_string),
                    op: ConfirmedOp::Dlq,
                    outcome: None,
                    content_hash: None,
                    tiers: Vec::new(),
                    error_code: Some(rejection.code.as_str()),
                };
                (confirmed, false)
            }
        };
        match item.op {
            ConfirmedOp::Dlq => self.summary.dlq += 1,
            _ => self.summary.written += 1,
        }
        let unconfirmed = self
            .pending
            .entry((message.topic().to_string(), partition))
            .or_default();
        unconfirmed.records.push(Consumed { item, durable });
        if let Some(ms) = message.timestamp().to_millis() {
            unconfirmed.oldest_ms = Some(unconfirmed.oldest_ms.map_or(ms, |t| t.min(ms)));
        }
        self.pending_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn tiers(&self, sql: bool, redis: bool) -> Vec<&'static str> {
        let mut tiers = Vec::new();
        if sql {
            tiers.push("sql");
        }
        if redis && self.config.engine.redis_url.is_some() {
            tiers.push("redis");
        }
        tiers
    }

    /// Queues a bad record for the DLQ with its reason. It is sent now; the cycle waits for
    /// its acknowledgement (sending it again if needed) before any confirmation.
    fn dead_letter(&mut self, message: &BorrowedMessage<'_>, raw: &RawRecord<'_>, why: &Rejection) {
        let mut headers: Vec<(String, Option<Vec<u8>>)> = raw
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
            .collect();
        let (partition, offset) = (
            message.partition().to_string(),
            message.offset().to_string(),
        );
        for (key, value) in DLQ_HEADERS.iter().zip([
            why.code.as_str(),
            why.message.as_str(),
            message.topic(),
            partition.as_str(),
            offset.as_str(),
        ]) {
            headers.push((key.to_string(), Some(value.as_bytes().to_vec())));
        }
        debug!(
            code = why.code.as_str(),
            partition, offset, "record sent to the DLQ"
        );
        counter!("sync_engine_dlq_records_total", "code" => why.code.as_str()).increment(1);
        *self.dlq_unreported.entry(why.code.as_str()).or_default() += 1;
        let mut letter = DeadLetter {
            source: (message.topic().to_string(), message.partition()),
            key: raw.key.map(<[u8]>::to_vec),
            value: raw.value.map(<[u8]>::to_vec),
            headers,
            delivery: None,
        };
        if let Err(e) = self.output.send_dead_letter(&mut letter) {
            debug!(error = %e, "DLQ send refused for now; retried by the next cycle");
        }
        self.dead_letters.push(letter);
    }

    /// Pauses every assigned partition while the engine cannot take more (pending budget full)
    /// or a cycle is stuck on something (SQL, Redis, the DLQ or output topic); resumes when
    /// both clear. Paused, the loop keeps polling, so group membership and rebalances carry on.
    pub fn backpressure<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.meters.memory.sample(&self.engine);
        let blocked = self.halted || self.waiting || !self.engine.has_room(BACKPRESSURE_ROOM);
        if !blocked && !self.paused {
            return;
        }
        let Ok(assigned) = consumer.assignment() else {
            return;
        };
        if blocked {
            if !self.paused {
                warn!(
                    waiting = self.waiting,
                    "pausing partitions: the engine is full or a checkpoint is waiting on SQL, Redis or Kafka"
                );
            }
            // every time: a rebalance may have assigned partitions since
            let _ = consumer.pause(&assigned);
        } else if self.paused {
            info!("resuming partitions");
            let _ = consumer.resume(&assigned);
        }
        self.paused = blocked;
        gauge!("sync_engine_paused").set(if blocked { 1.0 } else { 0.0 });
    }

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
        self.pending.is_empty() && self.uncommitted.is_empty() && self.checkpoints.is_empty()
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
    fn run_cycle<C: ConsumerContext>(
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

    fn pending_records(&self) -> usize {
        self.pending.values().map(|u| u.records.len()).sum()
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

    /// One WARN with the DLQ records per code since the last one, if any, and if the last one
    /// is at least [`DLQ_REPORT_EVERY`] old (`now`: in any case, e.g. when draining).
    fn report_dead_letters(&mut self, now: bool) {
        if self.dlq_unreported.is_empty()
            || !now
                && self
                    .dlq_reported_at
                    .is_some_and(|t| t.elapsed() < DLQ_REPORT_EVERY)
        {
            return;
        }
        let codes = std::mem::take(&mut self.dlq_unreported);
        let total: u64 = codes.values().sum();
        warn!(total, ?codes, "records sent to the DLQ (the codes are in schemas/README.md; each record at debug level)");
        self.dlq_reported_at = Some(Instant::now());
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
            let left = self
                .pending
                .remove(partition)
                .map_or(0, |p| p.records.len());
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
        if self.pending.is_empty() {
            self.pending_since = None;
        }
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

fn halted() -> SyncError {
    SyncError::Config("the pipeline halted on a fatal error; nothing more is committed".into())
}
