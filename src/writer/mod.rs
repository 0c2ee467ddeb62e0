//! The write path, top-down. One task owns the ordered queue:
//!
//! ```text
//! submit/delete ─► L1 pending ─► queue ─► Batch (newest op per id)
//!     ─► L3 transaction (retried until it commits)
//!     ─► cache stage (its own task, overlapping the next batch's transaction):
//!            Redis pipeline ─► L1 settle ─► replies that waited for it (flush, seal)
//!
//! set_state / delete_prefix / delete_by_state / promotions:
//!     flush the batch first and wait for the cache stage, then run alone (L3 ─► Redis ─► L1)
//!
//! between commands, with the cache stage idle: Redis repairs (crate::repair)
//! ```
//!
//! Because one task applies everything in queue order, a delete is never overtaken by an
//! earlier put, and a range operation sees every write submitted before it. A failing L3 is
//! retried with backoff, never skipped: the batch stays pending (and submit waits on the
//! pending budget) until it commits. Redis is written after L3 and before L1 settles, one
//! batch at a time in commit order ([`stage`]); ids it did not take are recorded for repair
//! before the batch settles, so a reader that misses L1 can never find an older value in
//! Redis than in SQL. Writes routed to Redis only are retried until Redis takes them.
//!
//! A write being retried is published as a [`WriteFailure`] (what fails, its class, since
//! when), so the sidecar can tell a fatal SQL error from an outage and say why it is stuck;
//! the retries log their first failure and then one line per [`REPORT_EVERY`], not one each.

mod stage;

use stage::{CacheStage, Committed, Reports, Stage};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::batch::{Batch, Entry, Limits};
use crate::config::SyncEngineConfig;
use crate::error::{ErrorClass, Result};
use crate::filter::{L3Filter, Rebuild};
use crate::item::SyncItem;
use crate::l1::L1;
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

/// The writer task: the queue's only reader, and the SQL stage of every batch.
pub(crate) struct Writer {
    queue: mpsc::UnboundedReceiver<Command>,
    tier: Arc<dyn DurableTier>,
    /// L2 (Redis), to see whether it is away; the cache stage writes it.
    cache: Option<Arc<dyn Cache>>,
    stage: Stage,
    filter: Option<Arc<L3Filter>>,
    /// For the filter's rebuild task to hand its result back without keeping the queue open.
    queue_handle: mpsc::WeakUnboundedSender<Command>,
    rebuilding: bool,
    /// Batch limits are read from here before every step, so they can change at run time.
    config: watch::Receiver<SyncEngineConfig>,
    horizons: Horizons,
    /// Failing transactions and seal reads, in the shared [`WriteFailure`].
    reports: Reports,
    /// `sync_engine_batch_records` (a handle: the writer must not search the registry).
    batch_records: metrics::Histogram,
}

/// What a writer is given: its tiers and the state it shares with the engine.
pub(crate) struct WriterParts {
    pub tier: Arc<dyn DurableTier>,
    pub cache: Option<Arc<dyn Cache>>,
    pub l1: Arc<L1>,
    pub filter: Option<Arc<L3Filter>>,
    pub config: watch::Receiver<SyncEngineConfig>,
    pub horizons: Horizons,
    /// Loaded already (see [`Repairs::load`]).
    pub repairs: Repairs,
    pub failure: Failures,
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
    /// A writer and the queue that feeds it. Nothing runs until [`Writer::run`] is spawned.
    pub(crate) fn new(parts: WriterParts) -> (Self, mpsc::UnboundedSender<Command>) {
        let (sender, queue) = mpsc::unbounded_channel();
        let writer = Writer {
            queue,
            queue_handle: sender.downgrade(),
            tier: parts.tier.clone(),
            cache: parts.cache.clone(),
            stage: Stage::new(CacheStage {
                cache: parts.cache,
                tier: parts.tier,
                l1: parts.l1,
                repairs: parts.repairs,
                reports: Reports::new("Redis", parts.failure.clone()),
            }),
            filter: parts.filter,
            rebuilding: false,
            config: parts.config,
            horizons: parts.horizons,
            reports: Reports::new("SQL", parts.failure),
            batch_records: metrics::histogram!(BATCH_RECORDS),
        };
        (writer, sender)
    }

    /// Runs until every sender is gone, then flushes what is left and returns.
    pub(crate) async fn run(mut self) {
        let mut batch = Batch::default();
        loop {
            self.rebuild_filter_if_due();
            if self.stage.repair_due().is_some() {
                self.stage.idle().await.repair_if_due().await;
            }
            let limits = Limits::from(&*self.config.borrow());
            let deadline = batch.deadline(&limits);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.flush(&mut batch).await;
                continue;
            }
            let wake = deadline.into_iter().chain(self.stage.repair_due()).min();
            let command = tokio::select! {
                biased;
                stage = self.stage.done() => {
                    self.stage.finished(stage);
                    continue;
                }
                command = self.queue.recv() => command,
                _ = sleep_until(wake) => continue,
            };
            let Some(command) = command else {
                self.flush(&mut batch).await;
                self.stage.idle().await;
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
                Command::FinishRebuild(rebuild) => {
                    // between batches: no write is between its commit and its filter call
                    // (the SQL stage makes the filter calls right after each commit)
                    rebuild.finish();
                    self.rebuilding = false;
                    debug!("L3 filter rebuilt");
                    continue;
                }
                _ => {}
            }
            self.flush(&mut batch).await;
            match command {
                Command::Write(_) | Command::FinishRebuild(_) => unreachable!("handled above"),
                Command::Flush(reply) => self.stage.after(Box::new(move || {
                    let _ = reply.send(());
                })),
                Command::Seal { sources, reply } => {
                    // read while the cache stage writes the last batch; sent once it is done
                    let states = self.sealed_states(sources).await;
                    self.stage.after(Box::new(move || {
                        let _ = reply.send(states);
                    }));
                }
                Command::Promote { item, epoch } => self.promote(&item, epoch).await,
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
    /// Two reads for all the sources (digests, then progress).
    async fn sealed_states(&mut self, sources: Vec<String>) -> Vec<SealedState> {
        let mut delay = FIRST_RETRY;
        let (digests, progress) = loop {
            let read = async {
                let digests = self.tier.merkle_digests(&sources).await?;
                let progress = self.tier.source_versions(&sources).await?;
                Ok::<_, crate::error::SyncError>((digests, progress))
            };
            match read.await {
                Ok(read) => break read,
                Err(e) => {
                    if self.reports.failed(e.class(), &e.to_string()) {
                        warn!(error = %e, sources = sources.len(), retry_in = ?delay,
                            "reading the sealed partitions' state roots failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(LAST_RETRY);
                }
            }
        };
        self.reports.succeeded();
        sources
            .into_iter()
            .zip(digests.iter().zip(progress))
            .map(|(source, (digest, progress))| SealedState {
                root: crate::merkle::StateRoot::of(&source, digest),
                source,
                progress,
            })
            .collect()
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
        let stage = self.stage.idle().await;
        if let (Ok(ids), Some(redis)) = (&deleted, &stage.cache) {
            let writes: Vec<CacheWrite> = ids.iter().map(|id| CacheWrite::Remove { id }).collect();
            if let Err(e) = redis.write(&writes).await {
                warn!(error = %e, items = ids.len(), "Redis write failed; those ids are repaired from SQL");
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                stage.repairs.mark(&*stage.tier, &ids).await;
            }
            let cache_only = match range {
                Range::Prefix(prefix) => redis.remove_prefix(prefix).await,
                Range::State(state) => redis.remove_state(state).await.map(|_| ()),
            };
            if let Err(e) = cache_only {
                warn!(error = %e, "Redis range delete failed; cache-only copies expire by TTL");
            }
        }
        stage
            .l1
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
    async fn promote(&mut self, item: &SyncItem, epoch: u64) {
        let stage = self.stage.idle().await;
        let Some(redis) = &stage.cache else { return };
        if stage.l1.epoch() != epoch || stage.l1.has_pending(item.id()) {
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
        let stage = self.stage.idle().await;
        let mut in_redis = false;
        if let Some(redis) = &stage.cache {
            match redis.restate(id, state, version).await {
                Ok(found) => in_redis = found,
                Err(e) => {
                    warn!(error = %e, id, "Redis set_state failed; the id is repaired from SQL");
                    stage.repairs.mark(&*stage.tier, &[id]).await;
                }
            }
        }
        // a cache-only item may live in L1 and Redis alone
        let in_l1 = stage.l1.restate(id, state, version);
        Ok(in_l3 || in_redis || in_l1)
    }

    /// Makes the batch durable (retrying until it is), then hands it to the cache stage,
    /// which writes Redis and settles L1 while the next batch goes to SQL.
    async fn flush(&mut self, batch: &mut Batch) {
        if batch.is_empty() {
            return;
        }
        let entries = batch.take();
        let ops: Vec<Op> = entries
            .iter()
            .filter(|e| e.sql)
            .map(|e| e.op.clone())
            .collect();
        // Redis is known to be away: record the repairs first and leave Redis alone
        let redis_away = self.cache.as_ref().is_some_and(|r| !r.available());
        if redis_away {
            let ids: Vec<&str> = ops.iter().map(Op::id).collect();
            let stage = self.stage.idle().await;
            stage.repairs.mark(&*stage.tier, &ids).await;
        }
        self.batch_records.record(entries.len() as f64);
        let mut delay = FIRST_RETRY;
        let applied = loop {
            match self.tier.apply(&ops).await {
                Ok(applied) => break applied,
                Err(e) => {
                    if self.reports.failed(e.class(), &e.to_string()) {
                        warn!(error = %e, class = ?e.class(), items = ops.len(), retry_in = ?delay,
                            "L3 batch failed; it stays pending and is retried");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(LAST_RETRY);
                }
            }
        };
        self.reports.succeeded();
        {
            let mut horizons = self.horizons.lock().expect("horizons lock");
            for (op, outcome) in ops.iter().zip(&applied) {
                if let Some(before) = outcome.progress_before {
                    horizons.entry(op.source().to_string()).or_insert(before);
                }
            }
        }
        // L3 liveness changes reach the filter before L1 settles: a reader that misses L1
        // after this point must not be told "absent" for an item just written
        if let Some(filter) = &self.filter {
            for (op, outcome) in ops.iter().zip(&applied) {
                match (op, outcome.applied, outcome.was_live()) {
                    (Op::Put(_), true, false) => filter.insert(op.id()),
                    (Op::Delete { .. }, true, true) => filter.remove(op.id()),
                    _ => {}
                }
            }
        }
        debug!(items = entries.len(), "batch committed");
        self.stage
            .start(Committed {
                entries,
                applied,
                redis_away,
            })
            .await;
    }
}

/// Sleeps until `wake`, or forever.
async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(wake) => tokio::time::sleep_until(wake.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use redis::RedisError;

    use crate::tier::cache::{Cache, CacheWrite};
    use crate::tier::DurableStore;

    use crate::config::SyncEngineConfig;
    use crate::options::SubmitOptions;
    use crate::tier::memory::MemoryTier;
    use crate::{SyncEngine, SyncItem};

    /// A cache whose writes wait for a permit, recording the ids of each write call.
    struct GatedCache {
        inner: crate::tier::cache::MemoryCache,
        gate: tokio::sync::Semaphore,
        calls: std::sync::Mutex<Vec<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl Cache for GatedCache {
        fn available(&self) -> bool {
            self.inner.available()
        }
        async fn write(&self, writes: &[CacheWrite<'_>]) -> std::result::Result<(), RedisError> {
            self.gate.acquire().await.expect("gate open").forget();
            let ids = writes.iter().map(|w| w.id().to_string()).collect();
            self.calls.lock().unwrap().push(ids);
            self.inner.write(writes).await
        }
        async fn get(&self, id: &str) -> CacheResult<Option<(SyncItem, Option<Duration>)>> {
            self.inner.get(id).await
        }
        async fn restate(&self, id: &str, state: &str, version: u64) -> CacheResult<bool> {
            self.inner.restate(id, state, version).await
        }
        async fn remove_prefix(&self, prefix: &str) -> CacheResult<()> {
            self.inner.remove_prefix(prefix).await
        }
        async fn remove_state(&self, state: &str) -> CacheResult<Vec<String>> {
            self.inner.remove_state(state).await
        }
    }

    impl Default for GatedCache {
        fn default() -> Self {
            GatedCache {
                inner: Default::default(),
                gate: tokio::sync::Semaphore::new(0),
                calls: Default::default(),
            }
        }
    }

    type CacheResult<T> = std::result::Result<T, RedisError>;

    fn payload(item: Option<SyncItem>) -> Option<Vec<u8>> {
        item.map(|i| i.content().to_vec())
    }

    /// The next batch commits to SQL while the cache stage still writes the one before; the
    /// cache takes the batches in commit order, and `flush` answers only once it has both.
    #[tokio::test]
    async fn the_next_batch_commits_while_the_cache_stage_writes_the_one_before() {
        let config = SyncEngineConfig {
            batch_flush_count: 2,
            ..Default::default()
        };
        let (_tx, rx) = tokio::sync::watch::channel(config.clone());
        let tier = Arc::new(MemoryTier::new());
        let cache = Arc::new(GatedCache::default());
        let mut engine = SyncEngine::with_tier(config, rx, tier.clone()).with_cache(cache.clone());
        engine.start().await.unwrap();
        let item =
            |id: &str, n: u32| SyncItem::new(id.into(), format!("{{\"n\":{n}}}").into_bytes());

        for n in [1, 2] {
            engine.submit(item("a", n)).await.unwrap();
            engine.submit(item("b", n)).await.unwrap();
        }
        // batch 2 reaches SQL although the cache has not been let to take batch 1
        let deadline = Instant::now() + Duration::from_secs(10);
        while payload(tier.get("a").await.unwrap()) != Some(b"{\"n\":2}".to_vec()) {
            assert!(Instant::now() < deadline, "batch 2 never committed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(cache.calls.lock().unwrap().is_empty());
        assert_eq!(cache.inner.peek("a"), None);

        let flushed = engine.flush();
        tokio::pin!(flushed);
        cache.gate.add_permits(1);
        tokio::select! {
            _ = &mut flushed => panic!("flush answered before the cache took batch 2"),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        cache.gate.add_permits(1);
        flushed.await.unwrap();
        assert_eq!(
            *cache.calls.lock().unwrap(),
            [vec!["a", "b"], vec!["a", "b"]],
            "one write per batch, in commit order"
        );
        assert_eq!(payload(cache.inner.peek("a")), Some(b"{\"n\":2}".to_vec()));
        assert_eq!(
            payload(engine.get("b").await.unwrap()),
            Some(b"{\"n\":2}".to_vec())
        );
        engine.shutdown().await;
    }

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
