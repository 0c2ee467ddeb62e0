//! The writer's second stage: a committed batch's Redis write and L1 settle, run as a task of
//! its own so that the next batch's SQL transaction overlaps it.
//!
//! ```text
//! writer:  SQL n ──────► SQL n+1 ─────────────► SQL n+2 ──► …
//!                 └─► stage: Redis n, settle n ─┘└─► stage: Redis n+1, settle n+1
//! ```
//!
//! One batch at a time and in commit order: a batch's Redis write follows its own commit and
//! the previous batch's Redis write and settle, so Redis and L1 never take an older value
//! after a newer one. The writer hands the stage over by value (while busy, [`Stage`] holds the
//! task that owns it) and takes it back before anything else that touches Redis or the repairs
//! (range operations, `set_state`, promotions, repair steps, shutdown). A reply that must not
//! go out before a batch is in Redis (a flush, a seal) waits in the [`Stage`] for its task.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{Failures, WriteFailure, FIRST_RETRY, LAST_RETRY, REPORT_EVERY};
use crate::batch::Entry;
use crate::error::ErrorClass;
use crate::l1::{Settled, Stamp, L1};
use crate::repair::Repairs;
use crate::tier::cache::{Cache, CacheWrite};
use crate::tier::{Applied, DurableTier, Op};

/// What runs once the batch in the stage is settled.
pub(super) type Reply = Box<dyn FnOnce() + Send>;

/// The stage: idle in the writer's hands, or busy with a batch in its own task.
pub(super) struct Stage {
    idle: Option<Box<CacheStage>>,
    busy: Option<JoinHandle<Box<CacheStage>>>,
    /// Replies to send when the busy task is done.
    then: Vec<Reply>,
}

/// A batch SQL has committed, for the stage.
pub(super) struct Committed {
    pub entries: Vec<Entry>,
    /// What the tier did with each durable entry (`entry.sql`), in order.
    pub applied: Vec<Applied>,
    /// Redis was known to be away before the commit: its ids are already marked for repair.
    pub redis_away: bool,
}

pub(crate) struct CacheStage {
    /// L2 (Redis); without it the stage only settles L1.
    pub cache: Option<Arc<dyn Cache>>,
    /// For repair marks.
    pub tier: Arc<dyn DurableTier>,
    pub l1: Arc<L1>,
    pub repairs: Repairs,
    /// Its share of the [`WriteFailure`] (cache-only writes being retried).
    pub reports: Reports,
}

impl Stage {
    pub(super) fn new(stage: CacheStage) -> Self {
        Stage {
            idle: Some(Box::new(stage)),
            busy: None,
            then: Vec::new(),
        }
    }

    /// Waits for the busy task (forever when idle, so that it can sit in a `select!`).
    pub(super) async fn done(&mut self) -> Box<CacheStage> {
        match &mut self.busy {
            Some(task) => task.await.expect("the writer's cache stage panicked"),
            None => std::future::pending().await,
        }
    }

    /// Takes the stage back from its finished task and sends the replies that waited for it.
    pub(super) fn finished(&mut self, stage: Box<CacheStage>) {
        self.busy = None;
        self.idle = Some(stage);
        for reply in self.then.drain(..) {
            reply();
        }
    }

    /// The idle stage, after waiting for its batch if it has one.
    pub(super) async fn idle(&mut self) -> &mut CacheStage {
        if self.busy.is_some() {
            let stage = self.done().await;
            self.finished(stage);
        }
        self.idle.as_mut().expect("idle when not busy")
    }

    /// Hands `batch` to the stage, once the previous batch is settled.
    pub(super) async fn start(&mut self, batch: Committed) {
        self.idle().await;
        let mut stage = self.idle.take().expect("idle");
        self.busy = Some(tokio::spawn(async move {
            stage.apply(batch).await;
            stage
        }));
    }

    /// Runs `reply` once every batch handed over so far is settled.
    pub(super) fn after(&mut self, reply: Reply) {
        match self.busy {
            Some(_) => self.then.push(reply),
            None => reply(),
        }
    }

    /// When the idle stage's next repair step is due (none while busy: it is looked at again
    /// when the batch is done).
    pub(super) fn repair_due(&self) -> Option<Instant> {
        let stage = self.idle.as_ref()?;
        stage.cache.as_ref().map(|_| stage.repairs.next())
    }
}

impl CacheStage {
    /// Writes a committed batch to Redis and settles it in L1.
    async fn apply(&mut self, batch: Committed) {
        let Committed {
            entries,
            applied,
            redis_away,
        } = batch;
        let (durable, cache_only): (Vec<&Entry>, Vec<&Entry>) = entries.iter().partition(|e| e.sql);
        if let Some(redis) = self.cache.clone() {
            // a replay of exactly what SQL holds is written again: the crash it follows may
            // have come between the commit and the Redis write
            let durable_writes: Vec<CacheWrite> = durable
                .iter()
                .zip(&applied)
                .filter(|(entry, a)| a.applied || (a.current && holds_exactly(&entry.op, a)))
                .map(|(entry, _)| cache_write(entry))
                .collect();
            let cache_writes: Vec<CacheWrite> = cache_only.iter().map(|e| cache_write(e)).collect();
            self.write_redis(&*redis, redis_away, durable_writes, cache_writes)
                .await;
        }
        // cache-only entries skip L3 and always "apply"
        let outcomes = durable
            .iter()
            .copied()
            .zip(applied.iter().map(|a| a.applied))
            .chain(cache_only.iter().map(|e| (*e, true)));
        self.l1.settle(outcomes.map(|(entry, applied)| Settled {
            id: entry.op.id(),
            stamp: Stamp {
                source: entry.op.source(),
                version: entry.op.version(),
            },
            item: match (&entry.op, applied) {
                (Op::Put(item), true) => Some((item, entry.ttl)),
                _ => None,
            },
        }));
        debug!(items = entries.len(), "batch settled");
    }

    /// Writes a committed batch to Redis. Durable ids Redis does not take are recorded for
    /// repair (already done when `skip_durable`); cache-only writes, which nothing could
    /// repair, are retried until Redis takes them.
    async fn write_redis(
        &mut self,
        redis: &dyn Cache,
        skip_durable: bool,
        durable: Vec<CacheWrite<'_>>,
        cache_only: Vec<CacheWrite<'_>>,
    ) {
        let mut cache_pending = !cache_only.is_empty();
        if !skip_durable {
            let ids: Vec<&str> = durable.iter().map(CacheWrite::id).collect();
            let mut all = durable.clone();
            all.extend(cache_only.iter().cloned());
            match redis.write(&all).await {
                Ok(()) => cache_pending = false,
                Err(e) => {
                    warn!(error = %e, items = ids.len(), "Redis write failed; those ids are repaired from SQL");
                    self.repairs.mark(&*self.tier, &ids).await;
                }
            }
        }
        let mut delay = FIRST_RETRY;
        while cache_pending {
            match redis.write(&cache_only).await {
                Ok(()) => {
                    cache_pending = false;
                    self.reports.succeeded();
                }
                Err(e) => {
                    let error = format!("Redis tier: {e}");
                    if self.reports.failed(ErrorClass::Retryable, &error) {
                        warn!(error = %e, items = cache_only.len(), retry_in = ?delay,
                            "Redis does not take cache-only writes (they have no SQL copy); retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(LAST_RETRY);
                }
            }
        }
        self.repairs.settle(cache_only.iter().map(CacheWrite::id));
    }

    /// One step of the Redis repairs, when one is due.
    pub(super) async fn repair_if_due(&mut self) {
        if let Some(redis) = &self.cache {
            if Instant::now() >= self.repairs.next() {
                self.repairs.step(&*self.tier, &**redis).await;
            }
        }
    }
}

/// One stage's part in the shared [`WriteFailure`]: the SQL stage reports failing
/// transactions, the cache stage failing cache-only writes. Each clears only its own.
pub(crate) struct Reports {
    tier: &'static str,
    shared: Failures,
    /// When this stage's failure was last logged at WARN.
    reported: Option<Instant>,
}

impl Reports {
    pub(crate) fn new(tier: &'static str, shared: Failures) -> Self {
        Reports {
            tier,
            shared,
            reported: None,
        }
    }

    /// Records a failed attempt; true when it is worth a WARN (the first failure of a streak,
    /// then one per [`REPORT_EVERY`]; the others are logged at debug level).
    pub(super) fn failed(&mut self, class: ErrorClass, error: &str) -> bool {
        let mut failure = self.shared.lock().expect("failure lock");
        if failure.as_ref().is_some_and(|f| f.tier != self.tier) {
            *failure = None; // the latest failing write is the one to report
        }
        let failure = failure.get_or_insert_with(|| WriteFailure {
            tier: self.tier,
            class,
            since: Instant::now(),
            attempts: 0,
            error: String::new(),
        });
        failure.class = class;
        failure.attempts += 1;
        failure.error = error.to_string();
        let report = self.reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY);
        if report {
            self.reported = Some(Instant::now());
        } else {
            debug!(
                tier = self.tier,
                error,
                attempts = failure.attempts,
                "write still failing; retrying"
            );
        }
        report
    }

    /// The write being retried went through.
    pub(super) fn succeeded(&mut self) {
        if self.reported.take().is_none() {
            return; // nothing was failing: no lock on the happy path
        }
        let mut shared = self.shared.lock().expect("failure lock");
        if shared.as_ref().is_some_and(|f| f.tier == self.tier) {
            let failure = shared.take().expect("checked");
            info!(
                tier = failure.tier,
                attempts = failure.attempts,
                after = ?failure.since.elapsed(),
                "write went through after failing"
            );
        }
    }
}

/// The Redis write of a committed entry: its item with its TTL, or a removal (a delete, or
/// an item not routed to Redis).
fn cache_write(entry: &Entry) -> CacheWrite<'_> {
    match &entry.op {
        Op::Put(item) if entry.redis => CacheWrite::Put {
            item,
            ttl: entry.ttl,
            mirrored: entry.sql,
        },
        op => CacheWrite::Remove { id: op.id() },
    }
}

/// Whether the tier's row (or its absence) is what `op` itself wrote — same version and
/// same content — so rewriting Redis from `op` cannot put anything else there.
fn holds_exactly(op: &Op, outcome: &Applied) -> bool {
    match (op, &outcome.prior) {
        (Op::Put(item), Some(prior)) => prior.content_hash == item.content_hash(),
        (Op::Delete { .. }, None) => true,
        _ => false,
    }
}
