//! The write path, top-down. One task owns the ordered queue:
//!
//! ```text
//! submit/delete ─► L1 pending ─► queue ─► Batch (newest op per id)
//!     ─► L3 transaction (retried until it commits) ─► Redis pipeline ─► L1 settle
//!
//! set_state / delete_prefix / delete_by_state / flush:
//!     flush the batch first, then run alone (L3 ─► Redis ─► L1), then reply
//!
//! between commands: Redis repairs (crate::repair)
//! ```
//!
//! Because one task applies everything in queue order, a delete is never overtaken by an
//! earlier put, and a range operation sees every write submitted before it. A failing L3 is
//! retried with backoff, never skipped: the batch stays pending (and submit waits on the
//! pending budget) until it commits. Redis is written after L3 and before L1 settles; ids it
//! did not take are recorded for repair before the batch settles, so a reader that misses L1
//! can never find an older value in Redis than in SQL. Writes routed to Redis only are
//! retried until Redis takes them.
//!
//! A write being retried is published as a [`WriteFailure`] (what fails, its class, since
//! when), so the sidecar can tell a fatal SQL error from an outage and say why it is stuck;
//! the retries log their first failure and then one line per [`REPORT_EVERY`], not one each.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::batch::{Batch, Entry, Limits};
use crate::config::SyncEngineConfig;
use crate::error::{ErrorClass, Result};
use crate::filter::{L3Filter, Rebuild};
use crate::item::SyncItem;
use crate::l1::{Settled, Stamp, L1};
use crate::repair::Repairs;
use crate::tier::cache::{Cache, CacheWrite};
use crate::tier::{DurableTier, Op};

pub(crate) enum Command {
    Write(Entry),
    /// Replies once everything queued before it is durable.
    Flush(oneshot::Sender<()>),
    /// Like `Flush`, and the reply carries each source's state as committed at that point:
    /// read before any write queued after it can commit, so it describes exactly the writes
    /// before it (the sidecar confirms a batch with it while it consumes the next).
    Seal {
        sources: Vec<String>,
        reply: oneshot::Sender<Vec<SealedState>>,
    },
    SetState {
        id: String,
        state: String,
        version: u64,
        reply: oneshot::Sender<Result<bool>>,
    },
    /// `delete_prefix` / `delete_by_state`.
    DeleteRange {
        range: Range,
        version: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Re-cache in Redis an item read from SQL while the L1 epoch was `epoch`.
    Promote {
        item: Arc<SyncItem>,
        epoch: u64,
    },
    /// A filter rebuild has scanned SQL; it is swapped in here, between batches.
    FinishRebuild(Rebuild),
}

/// A source's committed state at a [`Command::Seal`].
#[derive(Debug, Clone)]
pub(crate) struct SealedState {
    pub source: String,
    /// Its state root.
    pub root: crate::merkle::StateRoot,
    /// The highest version SQL has committed for it (offset + 1 for a sidecar partition).
    pub progress: Option<u64>,
}

/// The items a range delete removes.
pub(crate) enum Range {
    Prefix(String),
    State(String),
}

impl Range {
    fn contains(&self, item: &SyncItem) -> bool {
        match self {
            Range::Prefix(prefix) => item.id().starts_with(prefix.as_str()),
            Range::State(state) => item.state() == state,
        }
    }
}

pub(crate) struct Writer {
    pub queue: mpsc::UnboundedReceiver<Command>,
    pub tier: Arc<dyn DurableTier>,
    /// L2 (Redis), written after each commit.
    pub cache: Option<Arc<dyn Cache>>,
    pub l1: Arc<L1>,
    pub filter: Option<Arc<L3Filter>>,
    /// For the filter's rebuild task to hand its result back without keeping the queue open.
    pub queue_handle: mpsc::WeakUnboundedSender<Command>,
    pub rebuilding: bool,
    /// Batch limits are read from here before every step, so they can change at run time.
    pub config: watch::Receiver<SyncEngineConfig>,
    pub horizons: Horizons,
    pub repairs: Repairs,
    /// The write being retried, if any (shared with the engine).
    pub failure: Failures,
    /// When the current failure was last logged at WARN.
    pub failure_reported: Option<Instant>,
    /// `sync_engine_batch_records` (a handle: the writer must not search the registry).
    pub batch_records: metrics::Histogram,
}

/// A write the writer keeps retrying.
#[derive(Debug, Clone)]
pub struct WriteFailure {
    /// `"SQL"` (a batch transaction) or `"Redis"` (cache-only writes, which have no SQL copy
    /// to repair them from).
    pub tier: &'static str,
    pub class: ErrorClass,
    /// When its first attempt failed.
    pub since: Instant,
    pub attempts: u64,
    /// The last attempt's error.
    pub error: String,
}

pub(crate) type Failures = Arc<Mutex<Option<WriteFailure>>>;

/// Records per batch, as a histogram (the sidecar gives it buckets of counts).
pub(crate) const BATCH_RECORDS: &str = "sync_engine_batch_records";

/// While a write keeps failing, at most one WARN about it per this interval.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Per sidecar partition, what SQL had committed for it before this engine's first batch of
/// it (since the partition was last forgotten): records at or below it were replays.
pub(crate) type Horizons = Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>;

const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// Ids per keyset page of a filter rebuild.
const FILTER_PAGE: usize = 10_000;

impl Writer {
    /// Runs until every sender is gone, then flushes what is left and returns.
    pub(crate) async fn run(mut self) {
        let mut batch = Batch::default();
        loop {
            self.rebuild_filter_if_due();
            if let Some(redis) = &self.cache {
                if Instant::now() >= self.repairs.next() {
                    self.repairs.step(&*self.tier, &**redis).await;
                }
            }
            let limits = Limits::from(&*self.config.borrow());
            let deadline = batch.deadline(&limits);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.flush(&mut batch).await;
                continue;
            }
            let repairs = self.cache.as_ref().map(|_| self.repairs.next());
            let command = match deadline.into_iter().chain(repairs).min() {
                None => self.queue.recv().await,
                Some(wake) => tokio::select! {
                    biased;
                    command = self.queue.recv() => command,
                    _ = tokio::time::sleep_until(wake.into()) => continue,
                },
            };
            let Some(command) = command else {
                self.flush(&mut batch).await;
                return;
            };
            match command {
                Command::Write(entry) => {
                    if batch.must_flush_before(&entry) {
                        self.flush(&mut batch).await;
                    }
                    batch.push(entry);
                    if batch.is_full(&limits) {
                        self.flush(&mut batch).await;
                    }
                    continue;
                }
                Command::Promote { item, epoch } => {
                    self.promote(&item, epoch).await;
                    continue;
                }
                Command::FinishRebuild(rebuild) => {
                    // between batches: no write is between its commit and its filter call
                    rebuild.finish();
                    self.rebuilding = false;
                    debug!("L3 filter rebuilt");
                    continue;
                }
                _ => {}
            }
            self.flush(&mut batch).await;
            match command {
                Command::Write(_) | Command::Promote { .. } | Command::FinishRebuild(_) => {
                    unreachable!("handled above")
                }
                Command::Flush(reply) => {
                    let _ = reply.send(());
                }
                Command::Seal { sources, reply } => {
                    let _ = reply.send(self.sealed_states(sources).await);
                }
                Command::SetState {
                    id,
                    state,
                    version,
                    reply,
                } => {
                    let _ = reply.send(self.set_state(&id, &state, version).await);
                }
                Command::DeleteRange {
                    range,
                    version,
                    reply,
                } => {
                    let _ = reply.send(self.delete_range(&range, version).await);
                }
            }
        }
    }

    /// Each source's root and progress, read between batches (retried until SQL answers,
    /// as a batch is: nothing can commit meanwhile, so they describe one point in the queue).
    async fn sealed_states(&mut self, sources: Vec<String>) -> Vec<SealedState> {
        let mut states = Vec::with_capacity(sources.len());
        for source in sources {
            let mut delay = FIRST_RETRY;
            loop {
                let read = async {
                    let digest = self.tier.merkle_digest(&source).await?;
                    let progress = self.tier.source_version(&source).await?;
                    Ok::<_, crate::error::SyncError>((digest, progress))
                };
                match read.await {
                    Ok((digest, progress)) => {
                        states.push(SealedState {
                            root: crate::merkle::StateRoot::of(&source, &digest),
                            source,
                            progress,
                        });
                        break;
                    }
                    Err(e) => {
                        if self.failed("SQL", e.class(), &e.to_string()) {
                            warn!(error = %e, source, retry_in = ?delay,
                                "reading a partition's state root failed; retrying");
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(LAST_RETRY);
                    }
                }
            }
        }
        self.succeeded();
        states
    }

    /// L3 first (tombstones), then the filter, Redis (also cache-only items, which SQL never
    /// had) and L1.
    async fn delete_range(&mut self, range: &Range, version: u64) -> Result<u64> {
        let deleted = match range {
            Range::Prefix(prefix) => self.tier.delete_prefix(prefix, version).await,
            Range::State(state) => self.tier.delete_by_state(state, version).await,
        };
        let deleted: Result<Vec<String>> =
            deleted.map(|removed| removed.into_iter().map(|r| r.id).collect());
        self.forget(&deleted);
        if let (Ok(ids), Some(redis)) = (&deleted, &self.cache) {
            let writes: Vec<CacheWrite> = ids.iter().map(|id| CacheWrite::Remove { id }).collect();
            if let Err(e) = redis.write(&writes).await {
                warn!(error = %e, items = ids.len(), "Redis write failed; those ids are repaired from SQL");
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                self.repairs.mark(&*self.tier, &ids).await;
            }
            let cache_only = match range {
                Range::Prefix(prefix) => redis.remove_prefix(prefix).await,
                Range::State(state) => redis.remove_state(state).await.map(|_| ()),
            };
            if let Err(e) = cache_only {
                warn!(error = %e, "Redis range delete failed; cache-only copies expire by TTL");
            }
        }
        self.l1
            .invalidate_where(version, |item| range.contains(item));
        deleted.map(|ids| ids.len() as u64)
    }

    /// Ids a range delete removed from L3 leave the filter.
    fn forget(&self, deleted: &Result<Vec<String>>) {
        if let (Some(filter), Ok(ids)) = (&self.filter, deleted) {
            for id in ids {
                filter.remove(id);
            }
        }
    }

    /// Starts a background rebuild of the filter from SQL when it asks for one (before its
    /// first build, when untrusted, or nearly full).
    fn rebuild_filter_if_due(&mut self) {
        let Some(filter) = &self.filter else { return };
        if self.rebuilding || !filter.needs_rebuild() {
            return;
        }
        self.rebuilding = true;
        let (filter, tier, queue) = (filter.clone(), self.tier.clone(), self.queue_handle.clone());
        tokio::spawn(async move {
            let mut delay = FIRST_RETRY;
            let expected = loop {
                match tier.count_prefix("").await {
                    Ok(n) => break n as usize,
                    Err(e) => {
                        warn!(error = %e, "L3 filter rebuild: count failed, retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(LAST_RETRY);
                    }
                }
            };
            let Some(mut rebuild) = filter.begin_rebuild(expected) else {
                return;
            };
            let mut after: Option<String> = None;
            loop {
                if queue.strong_count() == 0 {
                    return; // shutting down
                }
                match tier.ids_after(after.as_deref(), FILTER_PAGE).await {
                    Ok(ids) if ids.is_empty() => break,
                    Ok(ids) => {
                        rebuild.add_page(&ids);
                        after = ids.last().cloned();
                    }
                    Err(e) => {
                        warn!(error = %e, "L3 filter rebuild: page failed, retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(LAST_RETRY);
                    }
                }
            }
            if let Some(queue) = queue.upgrade() {
                let _ = queue.send(Command::FinishRebuild(rebuild));
            }
        });
    }

    /// Writes a promoted item to Redis if it is still current: no commit since it was read
    /// (the L1 epoch is unchanged) and no newer op pending for it.
    async fn promote(&self, item: &SyncItem, epoch: u64) {
        let Some(redis) = &self.cache else { return };
        if self.l1.epoch() != epoch || self.l1.has_pending(item.id()) {
            return;
        }
        let ttl = item
            .redis_ttl_ms()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        let _ = redis
            .write(&[CacheWrite::Put {
                item,
                ttl,
                mirrored: true,
            }])
            .await;
    }

    async fn set_state(&mut self, id: &str, state: &str, version: u64) -> Result<bool> {
        let in_l3 = self.tier.set_state(id, state, version).await?;
        let mut in_redis = false;
        if let Some(redis) = &self.cache {
            match redis.restate(id, state, version).await {
                Ok(found) => in_redis = found,
                Err(e) => {
                    warn!(error = %e, id, "Redis set_state failed; the id is repaired from SQL");
                    self.repairs.mark(&*self.tier, &[id]).await;
                }
            }
        }
        // a cache-only item may live in L1 and Redis alone
        let in_l1 = self.l1.restate(id, state, version);
        Ok(in_l3 || in_redis || in_l1)
    }

    /// Makes the batch durable (retrying until it is), mirrors it to Redis, settles L1.
    async fn flush(&mut self, batch: &mut Batch) {
        if batch.is_empty() {
            return;
        }
        let entries = batch.take();
        let (durable, cache_only): (Vec<&Entry>, Vec<&Entry>) = entries.iter().partition(|e| e.sql);
        let ops: Vec<Op> = durable.iter().map(|e| e.op.clone()).collect();
        // Redis is known to be away: record the repairs first and leave Redis alone
        let redis_away = self.cache.as_ref().is_some_and(|r| !r.available());
        if redis_away {
            let ids: Vec<&str> = ops.iter().map(Op::id).collect();
            self.repairs.mark(&*self.tier, &ids).await;
        }
        self.batch_records.record(entries.len() as f64);
        let mut delay = FIRST_RETRY;
        let applied = loop {
            match self.tier.apply(&ops).await {
                Ok(applied) => break applied,
                Err(e) => {
                    if self.failed("SQL", e.class(), &e.to_string()) {
                        warn!(error = %e, class = ?e.class(), items = ops.len(), retry_in = ?delay,
                            "L3 batch failed; it stays pending and is retried");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(LAST_RETRY);
                }
            }
        };
        self.succeeded();
        {
            let mut horizons = self.horizons.lock().expect("horizons lock");
            for (entry, outcome) in durable.iter().zip(&applied) {
                if let Some(before) = outcome.progress_before {
                    horizons
                        .entry(entry.op.source().to_string())
                        .or_insert(before);
                }
            }
        }
        // L3 liveness changes reach the filter before L1 settles: a reader that misses L1
        // after this point must not be told "absent" for an item just written
        if let Some(filter) = &self.filter {
            for (entry, outcome) in durable.iter().zip(&applied) {
                match (&entry.op, outcome.applied, outcome.was_live()) {
                    (Op::Put(_), true, false) => filter.insert(entry.op.id()),
                    (Op::Delete { .. }, true, true) => filter.remove(entry.op.id()),
                    _ => {}
                }
            }
        }
        // cache-only entries skip L3 and always "apply"
        let outcomes: Vec<(&Entry, bool)> = durable
            .iter()
            .copied()
            .zip(applied.iter().map(|a| a.applied))
            .chain(cache_only.iter().map(|e| (*e, true)))
            .collect();

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

        self.l1
            .settle(outcomes.iter().map(|(entry, applied)| Settled {
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
        debug!(items = outcomes.len(), "batch committed");
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
                    self.succeeded();
                }
                Err(e) => {
                    let error = format!("Redis tier: {e}");
                    if self.failed("Redis", ErrorClass::Retryable, &error) {
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
}

impl Writer {
    /// Records a failed attempt; true when it is worth a WARN (the first failure of a streak,
    /// then one per [`REPORT_EVERY`]; the others are logged at debug level).
    fn failed(&mut self, tier: &'static str, class: ErrorClass, error: &str) -> bool {
        let mut failure = self.failure.lock().expect("failure lock");
        let failure = failure.get_or_insert_with(|| WriteFailure {
            tier,
            class,
            since: Instant::now(),
            attempts: 0,
            error: String::new(),
        });
        (failure.tier, failure.class) = (tier, class);
        failure.attempts += 1;
        failure.error = error.to_string();
        let report = self
            .failure_reported
            .is_none_or(|t| t.elapsed() >= REPORT_EVERY);
        if report {
            self.failure_reported = Some(Instant::now());
        } else {
            debug!(
                tier,
                error,
                attempts = failure.attempts,
                "write still failing; retrying"
            );
        }
        report
    }

    /// The write being retried went through.
    fn succeeded(&mut self) {
        if self.failure_reported.take().is_none() {
            return; // nothing was failing: no lock on the happy path
        }
        if let Some(failure) = self.failure.lock().expect("failure lock").take() {
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
fn holds_exactly(op: &Op, outcome: &crate::tier::Applied) -> bool {
    match (op, &outcome.prior) {
        (Op::Put(item), Some(prior)) => prior.content_hash == item.content_hash(),
        (Op::Delete { .. }, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::SyncEngineConfig;
    use crate::options::SubmitOptions;
    use crate::tier::memory::MemoryTier;
    use crate::{SyncEngine, SyncItem};

    /// A seal's answer describes exactly the writes queued before it, even when writes queued
    /// after it are already waiting (the sidecar consumes the next batch meanwhile).
    #[tokio::test]
    async fn a_seal_states_the_partition_as_of_the_writes_before_it() {
        let config = SyncEngineConfig::default();
        let (_tx, rx) = tokio::sync::watch::channel(config.clone());
        let tier = Arc::new(MemoryTier::new());
        let mut engine = SyncEngine::with_tier(config, rx, tier);
        engine.start().await.unwrap();
        let source: Arc<str> = Arc::from("t/0");
        let put = |id: &str, offset: u64| {
            let item = SyncItem::new(id.into(), b"{}".to_vec()).with_version(offset + 1);
            engine.submit_from(source.clone(), item, SubmitOptions::default())
        };

        put("a", 0).await.unwrap();
        put("b", 1).await.unwrap();
        let answer = engine.seal(vec!["t/0".into()]).unwrap();
        put("c", 2).await.unwrap();
        let states = answer.await.unwrap();
        engine.flush().await.unwrap();

        assert_eq!(states.len(), 1);
        assert_eq!(states[0].source, "t/0");
        assert_eq!(states[0].progress, Some(2), "offset 1 + 1: b, not c");
        assert_eq!(states[0].root.item_count, 2);
        let now = engine.merkle_root("t/0").await.unwrap();
        assert_eq!(now.item_count, 3, "c committed after the seal");
        assert_ne!(now.root, states[0].root.root);
        engine.shutdown().await;
    }
}
