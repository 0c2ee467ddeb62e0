//! `SyncEngine`: the library API over L1 and the durable tier.
//!
//! Writes (`submit*`, `delete*`) are validated, stamped with a version, recorded in L1 and
//! queued for the writer task; they return once *accepted*, not once durable. Call
//! [`SyncEngine::flush`] to wait until everything submitted before it is durable;
//! [`SyncEngine::shutdown`] flushes everything. Reads go L1 → L3 and warm L1.
//! Range operations (`set_state`, `delete_prefix`, `delete_by_state`) run in queue order and
//! return when committed; range queries (`scan_prefix`, `get_by_state`, counts) first wait
//! for pending writes, so they see everything submitted before them.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::batch::Entry;
use crate::config::SyncEngineConfig;
use crate::error::{Result, SyncError};
use crate::filter::L3Filter;
use crate::item::{validate_id, validate_state, SyncItem, LOCAL_SOURCE};
use crate::l1::{L1Stats, Lookup, Pending, L1};
use crate::merkle::{Proof, StateRoot};
use crate::options::SubmitOptions;
use crate::repair::Dirty;
use crate::search::{Query, SearchIndex};
use crate::tier::cache::Cache;
use crate::tier::redis::RedisTier;
use crate::tier::{DurableTier, Op};
use crate::verify::{RepairSummary, VerifyReport};
use crate::writer::{Command, Failures, Horizons, Range, SealedState, WriteFailure};

mod start;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineState {
    Created,
    Running,
    Stopped,
}

/// Which executor answers [`SyncEngine::search`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchTier {
    /// RediSearch when available, else (or when it fails) SQL.
    Auto,
    RedisOnly,
    SqlOnly,
}

/// How full L1 is, from [`SyncEngine::pressure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BackpressureLevel {
    Normal,
    /// At or over `backpressure_warn`.
    Warn,
    /// At or over `backpressure_critical`: submits are about to wait.
    Critical,
}

/// Hands out versions and queues commands under one lock, so queue order is version order.
struct Sequencer {
    clock: u64,
    queue: Option<mpsc::UnboundedSender<Command>>,
}

impl Sequencer {
    /// A pinned version is kept (and moves the clock forward); otherwise the next tick of a
    /// microsecond clock that never repeats or goes backwards.
    fn version(&mut self, pinned: u64) -> u64 {
        if pinned > 0 {
            self.clock = self.clock.max(pinned);
            return pinned;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.clock = (self.clock + 1).max(now);
        self.clock
    }

    fn check_open(&self) -> Result<()> {
        self.queue.as_ref().map(|_| ()).ok_or(SyncError::NotRunning)
    }

    fn send(&self, command: Command) -> Result<()> {
        let queue = self.queue.as_ref().ok_or(SyncError::NotRunning)?;
        queue.send(command).map_err(|_| SyncError::NotRunning)
    }
}

pub struct SyncEngine {
    config: SyncEngineConfig,
    config_rx: watch::Receiver<SyncEngineConfig>,
    l1: Arc<L1>,
    tier: Option<Arc<dyn DurableTier>>,
    /// L2 as reads and the writer see it (Redis, or a fake in unit tests).
    cache: Option<Arc<dyn Cache>>,
    /// The ids reads must not take from the cache (see `crate::repair`).
    dirty: Arc<Dirty>,
    /// The same Redis as `cache`, for what only Redis does: search, verify, state sets.
    redis: Option<Arc<RedisTier>>,
    filter: Option<Arc<L3Filter>>,
    sequencer: Mutex<Sequencer>,
    writer: Mutex<Option<JoinHandle<()>>>,
    state: watch::Sender<EngineState>,
    max_payload_bytes: usize,
    source: Arc<str>,
    horizons: Horizons,
    failure: Failures,
}

/// Rows per page when `prove` scans a partition.
const PROOF_PAGE: usize = 10_000;

impl SyncEngine {
    /// A stopped engine; [`SyncEngine::start`] connects. Batch limits are re-read from
    /// `config_rx` while running, so they can be tuned live.
    pub fn new(config: SyncEngineConfig, config_rx: watch::Receiver<SyncEngineConfig>) -> Self {
        let l1 = Arc::new(L1::new(config.l1_max_bytes, config.backpressure_critical));
        SyncEngine {
            max_payload_bytes: config.max_payload_bytes,
            config,
            config_rx,
            l1,
            tier: None,
            cache: None,
            dirty: Arc::default(),
            redis: None,
            filter: None,
            sequencer: Mutex::new(Sequencer {
                clock: 0,
                queue: None,
            }),
            writer: Mutex::new(None),
            state: watch::channel(EngineState::Created).0,
            source: Arc::from(LOCAL_SOURCE),
            horizons: Horizons::default(),
            failure: Failures::default(),
        }
    }

    /// An engine over a tier you built (e.g. [`MemoryTier`](crate::tier::memory::MemoryTier) in tests) instead of `sql_url`.
    pub fn with_tier(
        config: SyncEngineConfig,
        config_rx: watch::Receiver<SyncEngineConfig>,
        tier: Arc<dyn DurableTier>,
    ) -> Self {
        let mut engine = Self::new(config, config_rx);
        engine.tier = Some(tier);
        engine
    }

    /// An engine whose L1 holds pending writes only: nothing committed is cached in memory, so
    /// reads of committed items go to Redis or SQL, and `l1_max_bytes` bounds what is not yet
    /// durable. For a process that writes and serves no reads (`sync-engine run`), where a
    /// read cache only costs memory. Call before [`SyncEngine::start`].
    pub fn without_read_cache(mut self) -> Self {
        self.l1 = Arc::new(
            L1::new(self.config.l1_max_bytes, self.config.backpressure_critical)
                .without_read_cache(),
        );
        self
    }

    /// The engine with `cache` as its L2 instead of a Redis from `redis_url` (unit tests of
    /// the write and repair paths, with `MemoryCache`).
    #[cfg(test)]
    pub(crate) fn with_cache(mut self, cache: Arc<dyn Cache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Stops accepting writes, makes everything accepted durable, and stops the writer.
    pub async fn shutdown(&self) {
        self.sequencer.lock().expect("sequencer lock").queue = None;
        let writer = self.writer.lock().expect("writer lock").take();
        if let Some(writer) = writer {
            if let Err(e) = writer.await {
                warn!(error = %e, "writer task ended abnormally");
            }
        }
        self.state.send_replace(EngineState::Stopped);
    }

    pub fn state(&self) -> EngineState {
        *self.state.borrow()
    }

    /// Submits with the default options (Redis + SQL). Accepted, not yet durable.
    pub async fn submit(&self, item: SyncItem) -> Result<()> {
        self.submit_with(item, SubmitOptions::default()).await
    }

    pub async fn submit_with(&self, item: SyncItem, options: SubmitOptions) -> Result<()> {
        self.submit_from(self.source.clone(), item, options).await
    }

    /// Whether a write of `bytes` would be accepted now without waiting for the pending
    /// budget (the sidecar pauses its partitions instead of blocking in `submit`).
    pub fn has_room(&self, bytes: usize) -> bool {
        self.l1.has_room(bytes)
    }

    /// The largest payload accepted (the configured one, lowered to what SQL accepts).
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// A submit attributed to `source` (the sidecar: `topic/partition`, version = offset + 1).
    pub(crate) async fn submit_from(
        &self,
        source: Arc<str>,
        mut item: SyncItem,
        options: SubmitOptions,
    ) -> Result<()> {
        if let Some(state) = options.state {
            item.set_state(state);
        }
        validate_id(item.id())?;
        validate_state(item.state())?;
        if item.content().len() > self.max_payload_bytes {
            return Err(SyncError::PayloadTooLarge {
                id: item.id().to_string(),
                size: item.content().len(),
                max: self.max_payload_bytes,
            });
        }
        self.tier()?;
        self.l1.wait_for_room(item.mem_size()).await;
        let ttl = options.redis_ttl.map(|t| t.as_duration());
        item.set_redis_ttl_ms(
            options
                .redis
                .then(|| ttl.map_or(0, |t| t.as_millis().max(1) as u64)),
        );
        let mut sequencer = self.sequencer.lock().expect("sequencer lock");
        sequencer.check_open()?;
        let version = sequencer.version(item.version());
        item.set_version(version);
        let item = Arc::new(item.with_source(source));
        // L1 first: once queued, the writer may settle the op at any moment
        self.l1.accept(item.id(), Pending::Put(item.clone()));
        sequencer.send(Command::Write(Entry {
            op: Op::Put(item),
            sql: options.sql,
            redis: options.redis,
            ttl,
        }))
    }

    /// Submits each item in order; stops at the first invalid one (those before it stay
    /// accepted).
    pub async fn submit_many(&self, items: Vec<SyncItem>) -> Result<()> {
        for item in items {
            self.submit(item).await?;
        }
        Ok(())
    }

    /// Deletes `id`. Accepted, not yet durable; ordered after every earlier write.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.delete_at(id, 0).await
    }

    /// Deletes `id` at a pinned `version` (0: the engine's clock). A delete older than the
    /// stored item changes nothing.
    pub async fn delete_at(&self, id: &str, version: u64) -> Result<()> {
        self.delete_from(self.source.clone(), id, version).await
    }

    pub(crate) async fn delete_from(&self, source: Arc<str>, id: &str, version: u64) -> Result<()> {
        validate_id(id)?;
        self.tier()?;
        self.l1.wait_for_room(id.len() + 64).await;
        let mut sequencer = self.sequencer.lock().expect("sequencer lock");
        sequencer.check_open()?;
        let version = sequencer.version(version);
        self.l1.accept(
            id,
            Pending::Delete {
                source: source.clone(),
                version,
            },
        );
        let op = Op::Delete {
            id: id.to_string(),
            version,
            source,
        };
        sequencer.send(Command::Write(Entry {
            op,
            sql: true,
            redis: true,
            ttl: None,
        }))
    }

    pub async fn delete_many(&self, ids: &[&str]) -> Result<()> {
        for id in ids {
            self.delete(id).await?;
        }
        Ok(())
    }

    /// Waits until everything submitted before this call is durable.
    pub async fn flush(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.sequencer
            .lock()
            .expect("sequencer lock")
            .send(Command::Flush(reply))?;
        done.await.map_err(|_| SyncError::NotRunning)
    }

    /// Asks for everything submitted so far to become durable, and for each of `sources`'
    /// root and progress right after it (before anything submitted later commits). The
    /// answer comes on the receiver; meanwhile submits go on.
    pub(crate) fn seal(&self, sources: Vec<String>) -> Result<oneshot::Receiver<Vec<SealedState>>> {
        self.tier()?;
        let (reply, done) = oneshot::channel();
        self.sequencer
            .lock()
            .expect("sequencer lock")
            .send(Command::Seal { sources, reply })?;
        Ok(done)
    }

    /// The item as last submitted (pending or durable), from L1, Redis or SQL, in that order.
    /// A Redis failure is not an error: the read goes on to SQL.
    pub async fn get(&self, id: &str) -> Result<Option<SyncItem>> {
        let tier = self.tier()?;
        match self.l1.lookup(id) {
            Lookup::Found(item) => return Ok(Some((*item).clone())),
            Lookup::Deleted => return Ok(None),
            Lookup::Unknown => {}
        }
        let epoch = self.l1.epoch();
        if let Some(cache) = self.cache.as_ref().filter(|_| !self.dirty.contains(id)) {
            match cache.get(id).await {
                Ok(Some((item, ttl))) => {
                    self.l1.warm(item.clone(), ttl, epoch);
                    return Ok(Some(item));
                }
                Ok(None) => {}
                Err(e) => debug!(error = %e, id, "Redis read failed; reading SQL"),
            }
        }
        if !self.might_be_in_sql(id) {
            return Ok(None);
        }
        let found = tier.get(id).await?;
        if let Some(item) = &found {
            self.promote(item, epoch);
        }
        Ok(found)
    }

    /// Like `get`, and checks the content against the stored hash (`SyncError::Corrupt`).
    pub async fn get_verified(&self, id: &str) -> Result<Option<SyncItem>> {
        let item = self.get(id).await?;
        if let Some(item) = &item {
            item.verify()?;
        }
        Ok(item)
    }

    /// One answer per id, in order; SQL is asked once for all L1 misses (one round trip
    /// instead of one per id to Redis), so cache-only items are found only in L1.
    pub async fn get_many(&self, ids: &[&str]) -> Result<Vec<Option<SyncItem>>> {
        let tier = self.tier()?;
        let mut answers: Vec<Option<SyncItem>> = Vec::with_capacity(ids.len());
        let mut misses: Vec<(usize, &str)> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            answers.push(match self.l1.lookup(id) {
                Lookup::Found(item) => Some((*item).clone()),
                Lookup::Deleted => None,
                Lookup::Unknown => {
                    if self.might_be_in_sql(id) {
                        misses.push((i, id));
                    }
                    None
                }
            });
        }
        if !misses.is_empty() {
            let epoch = self.l1.epoch();
            let wanted: Vec<&str> = misses.iter().map(|(_, id)| *id).collect();
            for ((i, _), found) in misses.iter().zip(tier.get_many(&wanted).await?) {
                if let Some(item) = &found {
                    self.promote(item, epoch);
                }
                answers[*i] = found;
            }
        }
        Ok(answers)
    }

    pub async fn contains(&self, id: &str) -> Result<bool> {
        let tier = self.tier()?;
        match self.l1.lookup(id) {
            Lookup::Found(_) => Ok(true),
            Lookup::Deleted => Ok(false),
            Lookup::Unknown if !self.might_be_in_sql(id) => Ok(false),
            Lookup::Unknown => tier.contains(id).await,
        }
    }

    /// Up to `limit` durable items in `state`, by id.
    pub async fn get_by_state(&self, state: &str, limit: usize) -> Result<Vec<SyncItem>> {
        self.flush().await?;
        self.tier()?.get_by_state(state, limit).await
    }

    pub async fn count_by_state(&self, state: &str) -> Result<u64> {
        self.flush().await?;
        self.tier()?.count_by_state(state).await
    }

    /// Changes the state of `id` on every tier; false when there is no such item.
    pub async fn set_state(&self, id: &str, state: &str) -> Result<bool> {
        validate_id(id)?;
        validate_state(state)?;
        self.ranged(|version, reply| Command::SetState {
            id: id.to_string(),
            state: state.to_string(),
            version,
            reply,
        })
        .await
    }

    /// Deletes every item in `state`; returns how many durable items it deleted.
    pub async fn delete_by_state(&self, state: &str) -> Result<u64> {
        validate_state(state)?;
        self.ranged(|version, reply| Command::DeleteRange {
            range: Range::State(state.to_string()),
            version,
            reply,
        })
        .await
    }

    /// Up to `limit` durable items whose id starts with `prefix` (byte-wise; `%`, `_` and `\`
    /// are ordinary characters), by id.
    pub async fn scan_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<SyncItem>> {
        self.flush().await?;
        self.tier()?.scan_prefix(prefix, limit).await
    }

    pub async fn count_prefix(&self, prefix: &str) -> Result<u64> {
        self.flush().await?;
        self.tier()?.count_prefix(prefix).await
    }

    /// Deletes every item whose id starts with `prefix`; returns how many durable items it
    /// deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.ranged(|version, reply| Command::DeleteRange {
            range: Range::Prefix(prefix.to_string()),
            version,
            reply,
        })
        .await
    }

    /// Creates `index` in RediSearch (when Redis has the module; an existing index of that
    /// name is kept). The SQL executor needs no index.
    pub async fn create_search_index(&self, index: &SearchIndex) -> Result<()> {
        index.validate()?;
        self.tier()?;
        match &self.redis {
            Some(redis) if self.redisearch_available().await => {
                Ok(redis.create_index(index).await?)
            }
            _ => Ok(()),
        }
    }

    pub async fn drop_search_index(&self, name: &str) -> Result<()> {
        self.tier()?;
        match &self.redis {
            Some(redis) if self.redisearch_available().await => Ok(redis.drop_index(name).await?),
            _ => Ok(()),
        }
    }

    /// Up to `limit` JSON items matching `query`, by id; see [`crate::search`] for what each
    /// query means. `SearchTier::Auto` asks RediSearch when the module is there and falls
    /// back to SQL if it fails. Waits for pending writes first, like the range queries.
    /// RediSearch sees items in Redis (so also cache-only ones); SQL sees durable ones.
    pub async fn search(
        &self,
        index: &SearchIndex,
        query: &Query,
        limit: usize,
        tier: SearchTier,
    ) -> Result<Vec<SyncItem>> {
        index.validate()?;
        query.validate(index)?;
        self.flush().await?;
        let from_redis = match (&self.redis, tier) {
            (_, SearchTier::SqlOnly) => None,
            (Some(redis), _) if self.redisearch_available().await => {
                match redis.search(&index.name, &query.redisearch()).await {
                    Ok(items) => Some(items),
                    Err(e) if tier == SearchTier::Auto => {
                        warn!(error = %e, "RediSearch failed; searching SQL");
                        None
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            (_, SearchTier::RedisOnly) => {
                return Err(SyncError::Config(
                    "no Redis with RediSearch to search".into(),
                ))
            }
            _ => None,
        };
        let mut items = match from_redis {
            Some(items) => items,
            None => self.tier()?.search_candidates(query).await?,
        };
        items.retain(|item| query.matches(item));
        items.sort_by(|a, b| a.id().cmp(b.id()));
        items.truncate(limit);
        Ok(items)
    }

    async fn redisearch_available(&self) -> bool {
        match &self.redis {
            Some(redis) => {
                if redis.has_redisearch().is_none() {
                    let _ = redis.connect().await;
                }
                redis.has_redisearch() == Some(true)
            }
            None => false,
        }
    }

    /// The ids Redis holds in `state` (its state set; members whose key expired are pruned
    /// from the set by this call). Cache-only items are here but not in `get_by_state`.
    pub async fn redis_state_members(&self, state: &str) -> Result<Vec<String>> {
        self.tier()?;
        let redis = self
            .redis
            .as_ref()
            .ok_or_else(|| SyncError::Config("no redis_url".into()))?;
        Ok(redis.state_members(state).await?)
    }

    /// The state root of `partition` (`"local"` for library writes, `<topic>/<partition>` for
    /// the sidecar's) as committed in SQL: everything flushed so far, nothing pending.
    pub async fn merkle_root(&self, partition: &str) -> Result<StateRoot> {
        let digest = self.tier()?.merkle_digest(partition).await?;
        Ok(StateRoot::of(partition, &digest))
    }

    /// The roots of every partition with stored digests.
    pub async fn merkle_roots(&self) -> Result<Vec<StateRoot>> {
        let tier = self.tier()?;
        let mut roots = Vec::new();
        for partition in tier.merkle_partitions().await? {
            roots.push(StateRoot::of(
                &partition,
                &tier.merkle_digest(&partition).await?,
            ));
        }
        Ok(roots)
    }

    /// An inclusion proof of `id`'s committed `(id, content_hash)` in its partition's root,
    /// built from the SQL rows (a scan of the table); `None` when SQL does not hold `id`.
    /// Check it with [`Proof::check`](crate::merkle::Proof::check) and compare its root with
    /// a trusted one (a checkpoint's).
    pub async fn prove(&self, id: &str) -> Result<Option<Proof>> {
        let tier = self.tier()?;
        let Some(row) = tier.leaf_row(id).await? else {
            return Ok(None);
        };
        let mut members: Vec<(String, String)> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = tier.leaves_after(after.as_deref(), PROOF_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            members.extend(
                page.into_iter()
                    .filter(|r| r.source == row.source)
                    .map(|r| (r.id, r.content_hash)),
            );
        }
        Ok(Proof::build(
            &row.source,
            id,
            members.iter().map(|(i, h)| (i.as_str(), h.as_str())),
        ))
    }

    /// What SQL had committed for the sidecar partition `source` (last offset + 1) before this
    /// engine first wrote it — since [`SyncEngine::forget_horizon`] — or `None` if it has not
    /// written it yet. A record of the partition with `offset + 1` at or below it was a
    /// replay: it changed nothing.
    pub fn replay_horizon(&self, source: &str) -> Option<u64> {
        self.horizons
            .lock()
            .expect("horizons lock")
            .get(source)
            .copied()
    }

    /// Forgets `source`'s horizon (the sidecar gave the partition up: another process may
    /// write it before this one gets it back).
    pub fn forget_horizon(&self, source: &str) {
        self.horizons.lock().expect("horizons lock").remove(source);
    }

    /// The highest version SQL holds from `source` (the sidecar's: last offset + 1).
    pub async fn source_version(&self, source: &str) -> Result<Option<u64>> {
        self.tier()?.source_version(source).await
    }

    /// Recomputes every partition's root from the SQL rows and compares it with the stored
    /// digests and with Redis (each row probed, the mirror compared, keys SQL lacks found by
    /// SCAN); `progress` is called with the rows read so far. Flush first for a quiet view:
    /// writes racing with it can show up as divergences.
    pub async fn verify(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<VerifyReport> {
        crate::verify::verify(&**self.tier()?, self.redis.as_deref(), progress).await
    }

    /// Makes Redis equal SQL for every id `report` names, resets the Redis mirror, and
    /// re-anchors the stored digests of partitions whose rows changed outside the engine.
    /// Rows whose payload no longer matches their hash are left for an operator.
    pub async fn repair(&self, report: &VerifyReport) -> Result<RepairSummary> {
        crate::verify::repair(&**self.tier()?, self.redis.as_deref(), report).await
    }

    /// The write the writer is retrying (an SQL batch, or cache-only writes Redis refuses),
    /// if any: pending writes wait behind it.
    pub(crate) fn write_failure(&self) -> Option<WriteFailure> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// Cached plus pending bytes over `l1_max_bytes` (0.0 = empty).
    pub fn memory_pressure(&self) -> f64 {
        self.l1.memory_pressure()
    }

    pub fn pressure(&self) -> BackpressureLevel {
        let p = self.memory_pressure();
        if p >= self.config.backpressure_critical {
            BackpressureLevel::Critical
        } else if p >= self.config.backpressure_warn {
            BackpressureLevel::Warn
        } else {
            BackpressureLevel::Normal
        }
    }

    pub fn l1_stats(&self) -> L1Stats {
        self.l1.stats()
    }

    /// Drops every committed item from L1 (pending writes stay), so reads go to lower tiers.
    pub fn clear_l1(&self) {
        self.l1.clear_cache();
    }

    /// Re-caches an item read from SQL: in L1 unless memory is critical, and in Redis if it
    /// was routed there. The Redis copy is written by the writer (in queue order), and only
    /// if nothing committed since the read — otherwise it could be older than SQL.
    fn promote(&self, item: &SyncItem, epoch: u64) {
        if self.pressure() < BackpressureLevel::Critical {
            self.l1.warm(item.clone(), None, epoch);
        }
        if self.cache.is_some() && item.redis_ttl_ms().is_some() {
            let promote = Command::Promote {
                item: Arc::new(item.clone()),
                epoch,
            };
            // a stopped queue only means nothing gets cached
            let _ = self.sequencer.lock().expect("sequencer lock").send(promote);
        }
    }

    /// False when the L3 filter is sure SQL does not hold `id` (the query can be skipped).
    fn might_be_in_sql(&self, id: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| f.might_contain(id))
    }

    /// Whether the L3 filter is built and trusted (so misses skip SQL).
    pub fn l3_filter_ready(&self) -> bool {
        self.filter.as_ref().is_some_and(|f| f.is_trusted())
    }

    fn tier(&self) -> Result<&Arc<dyn DurableTier>> {
        match (&self.tier, self.state()) {
            (Some(tier), EngineState::Running) => Ok(tier),
            _ => Err(SyncError::NotRunning),
        }
    }

    /// Queues a range command with a fresh version and waits for its reply.
    async fn ranged<T>(
        &self,
        command: impl FnOnce(u64, oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        self.tier()?;
        let (reply, done) = oneshot::channel();
        {
            let mut sequencer = self.sequencer.lock().expect("sequencer lock");
            let version = sequencer.version(0);
            sequencer.send(command(version, reply))?;
        }
        done.await.map_err(|_| SyncError::NotRunning)?
    }
}
