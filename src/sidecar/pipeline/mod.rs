//! What has been consumed but not yet committed, and the cycle that commits it.
//!
//! The cycle, in [`Pipeline::cycle`], overlaps the stores with consumption:
//! 1. **seal**: every `batch_flush_ms` or `batch_flush_count` records, what is `pending` is
//!    handed to the engine to be made durable ([`SyncEngine::seal`]) and moves to `sealed`;
//!    the loop goes on consuming the next batch while the engine writes this one (at most
//!    [`MAX_SEALED`] batches in flight). The engine's answer carries each partition's root and
//!    progress right after the batch, so a confirmation never describes later records.
//! 2. once the oldest sealed batch is durable (its answer came, waited for at most
//!    [`FLUSH_WAIT`](cycle::FLUSH_WAIT)): have every DLQ record acknowledged by the DLQ topic;
//! 3. per partition of it: produce its confirmation (each item with its outcome, the root of
//!    the answer); once Kafka acknowledges it, move the partition's offset to `uncommitted`;
//! 4. produce the checkpoint events that are due;
//! 5. once they are acknowledged, commit `uncommitted` for the partitions still assigned.
//!
//! Steps 3–5 do not wait for Kafka: what was produced is looked at again on the next turns of
//! the poll loop, which goes on consuming meanwhile. They wait only when the loop must not run
//! further ahead (every batch in flight is taken and the next one is due), or for a revocation
//! or a stop, which seal everything and wait for all of it.
//!
//! Batches are confirmed oldest first (one batch's confirmations in flight at a time), so per
//! partition in offset order, and commits follow acknowledged confirmations and checkpoint
//! events.
//!
//! A retryable failure at any step leaves everything after it for the next attempt (backoff
//! from [`FIRST_RETRY`](cycle::FIRST_RETRY) to [`LAST_RETRY`](cycle::LAST_RETRY)); steps 1–3
//! failing also pause consumption. A fatal one halts the pipeline: nothing is committed from
//! then on, and the run ends with the error.
//! Fatal SQL errors are the exception: they are retried like the others and stall the
//! pipeline at once (`super::stall` decides what then), since an operator can fix them
//! (restore the table, the grant) without losing anything consumed.
//!
//! Metrics are kept per partition batch and per cycle, never per record: the oldest Kafka
//! timestamp of each partition's pending records gives the produce→confirmation latency once
//! its confirmation is delivered, and each commit is timed from the moment the oldest batch it
//! commits became durable.
//!
//! A record moves one way through the [`Pipeline`]'s fields: it is `pending` from
//! [`Pipeline::accept`] until it is sealed, `sealed` until its partition's confirmation, then
//! its offset is `uncommitted`
//! until the commit; a bad record also waits in `dead_letters` until the DLQ topic
//! acknowledges it, and a confirmed partition's state waits in `checkpoints` until its
//! checkpoint event goes out. A revoked partition gets one last cycle, then what is left of it
//! in all five is dropped ([`Pipeline::release`]).
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | the [`Pipeline`] and what it holds |
//! | `intake` | a consumed record: decoded, to the engine or the DLQ, pending; backpressure |
//! | `cycle` | when the cycle is due, sealing, its five steps, its retries, halting on a fatal error |
//! | `release` | revoked partitions, draining after a stop, stalls |

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{gauge, histogram};
use tokio::runtime::Handle;

use super::config::PipelineConfig;
use super::events::{Checkpoint, Confirmation, ConfirmedItem};
use super::http::Health;
use super::metrics::Memory;
use super::output::{DeadLetter, InFlight, Output};
use super::stall::Stall;
use super::Summary;
use crate::engine::SyncEngine;
use crate::error::SyncError;
use crate::writer::SealedState;

/// Sealed batches in flight: one being written while the loop fills the next is what lets
/// consumption overlap the stores; more only hold memory.
const MAX_SEALED: usize = 2;

mod cycle;
mod intake;
mod release;

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
    /// Per partition, the records consumed and not sealed yet, in offset order.
    pending: BTreeMap<Partition, Unconfirmed>,
    /// Sealed batches, oldest first: confirmed in this order, so per partition in offset
    /// order. At most [`MAX_SEALED`] unless a revocation or a stop seals everything.
    sealed: VecDeque<Sealed>,
    pending_since: Option<Instant>,
    /// Bad records not yet acknowledged by the DLQ topic: no confirmation before they are.
    dead_letters: Vec<DeadLetter>,
    /// Per partition, the offset to commit: everything before it is confirmed.
    uncommitted: BTreeMap<Partition, i64>,
    /// Per partition, the state confirmed since its last checkpoint event.
    checkpoints: BTreeMap<Partition, Unpublished>,
    /// Checkpoint events on their way; no commit until they are acknowledged.
    publishing: Option<Publishing>,
    /// When the oldest batch of what `uncommitted` holds became durable.
    uncommitted_since: Option<Instant>,
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
    /// [`DLQ_REPORT_EVERY`](intake::DLQ_REPORT_EVERY): a stream of bad records is not a
    /// stream of log lines).
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

/// Records handed over to be made durable ([`SyncEngine::seal`]), waiting for the answer
/// (each partition's root and progress right after them) and then for their confirmations.
/// The poll loop consumes the next batch meanwhile.
struct Sealed {
    records: BTreeMap<Partition, Unconfirmed>,
    answer: tokio::sync::oneshot::Receiver<Vec<SealedState>>,
    /// The answer once it came, by source (`topic/partition`).
    states: Option<BTreeMap<String, SealedState>>,
    since: Instant,
    /// When the answer came.
    durable_at: Option<Instant>,
    /// Per partition, its confirmation once produced, until Kafka acknowledges it (then the
    /// partition's records leave `records`).
    confirming: BTreeMap<Partition, Confirming>,
}

/// A partition's confirmation of a sealed batch, produced and not acknowledged yet.
struct Confirming {
    template: Confirmation,
    items: Vec<ConfirmedItem>,
    flight: InFlight,
}

/// Checkpoint events produced and not acknowledged yet; what they carry goes back to
/// `checkpoints` if their delivery fails.
struct Publishing {
    checkpoints: Vec<(Partition, Unpublished)>,
    flight: InFlight,
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
            sealed: VecDeque::new(),
            pending_since: None,
            dead_letters: Vec::new(),
            uncommitted: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            publishing: None,
            uncommitted_since: None,
            waiting: false,
            paused: false,
            retry_at: None,
            retry_delay: cycle::FIRST_RETRY,
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
}

fn halted() -> SyncError {
    SyncError::Config("the pipeline halted on a fatal error; nothing more is committed".into())
}
