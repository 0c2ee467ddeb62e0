//! Redis converges to SQL by itself.
//!
//! Redis is written after SQL commits, so it can fall behind: a write fails, Redis is away
//! (its circuit breaker open), or the process stops before Redis took a batch. The set of ids
//! it may be wrong about is durable — `sync_redis_repairs` in SQL — and written only when that
//! happens, so the happy path pays nothing:
//! - before a batch's transaction while the breaker is open (the batch then skips Redis);
//! - right after the commit when the batch's Redis write failed.
//!
//! Marking waits until SQL takes the marks, like a batch waits for its commit: a flush that
//! returned never leaves an unrecorded stale id behind. Marked ids are also *dirty* in memory,
//! so reads skip Redis for them.
//!
//! The writer task calls [`Repairs::step`] between commands. A step reads a page of marks,
//! rewrites each id from its SQL row (the item with its route and a TTL counted from now, or a
//! removal when SQL has no row or the item is not routed to Redis) and deletes the marks it
//! served, unless they were marked again meanwhile. Because the writer runs it in queue order,
//! a repair never puts back anything older than what a batch wrote after it. At start (before
//! `SyncEngine::start` returns) every mark is read once into the dirty set, so a restarted
//! process never serves an older value than SQL from Redis, even before the repair has
//! reached that id.
//!
//! A write routed to Redis only has no SQL row to repair from: the writer retries it until
//! Redis takes it (see `Writer::flush`), then clears any mark of its id, which would otherwise
//! make a later repair remove it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::item::SyncItem;
use crate::tier::cache::{Cache, CacheWrite};
use crate::tier::{DurableStore, RepairMark, RepairMarks};

/// Marks rewritten per step.
const PAGE: usize = 500;
/// Marks read per query when loading them all at start.
const LOAD_PAGE: usize = 10_000;
/// How often the marks are looked at when there is nothing known to repair (another process
/// may have left some).
const IDLE: Duration = Duration::from_secs(5);
/// How soon a step is tried again after SQL or Redis failed it.
const AGAIN: Duration = Duration::from_millis(500);
const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// The ids whose cached copy may be wrong until a repair rewrites them: reads skip the cache
/// for them. Shared by the writer (which marks and clears) and the engine's reads.
#[derive(Default)]
pub(crate) struct Dirty(Mutex<HashSet<String>>);

impl Dirty {
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.0.lock().expect("lock").contains(id)
    }

    fn mark<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        self.0
            .lock()
            .expect("lock")
            .extend(ids.into_iter().map(str::to_string));
    }

    fn clear<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut dirty = self.0.lock().expect("lock");
        for id in ids {
            dirty.remove(id);
        }
    }
}

pub(crate) struct Repairs {
    dirty: Arc<Dirty>,
    next: Instant,
    /// Every mark has been read into the dirty set once.
    loaded: bool,
    /// Where the next page starts (marks that keep failing do not hold the others back).
    after: Option<String>,
    /// Ids whose marks go whatever their count: a cache-only write set them right since.
    settled: Vec<String>,
}

impl Repairs {
    pub(crate) fn new(dirty: Arc<Dirty>) -> Self {
        Repairs {
            dirty,
            next: Instant::now(),
            loaded: false,
            after: None,
            settled: Vec::new(),
        }
    }

    /// When the next step is due.
    pub(crate) fn next(&self) -> Instant {
        self.next
    }

    /// Records `ids` as possibly wrong in Redis: dirty now, and in SQL (retried until it is).
    pub(crate) async fn mark(&mut self, tier: &(impl RepairMarks + ?Sized), ids: &[&str]) {
        if ids.is_empty() {
            return;
        }
        self.dirty.mark(ids.iter().copied());
        let mut delay = FIRST_RETRY;
        while let Err(e) = tier.mark_redis_repairs(ids).await {
            warn!(error = %e, ids = ids.len(), retry_in = ?delay,
                "recording Redis repairs in SQL failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(LAST_RETRY);
        }
        self.next = self.next.min(Instant::now() + AGAIN);
    }

    /// `ids` were just written to Redis by cache-only writes, which no repair may undo.
    pub(crate) fn settle<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            if self.dirty.contains(id) {
                self.dirty.clear([id]);
                self.settled.push(id.to_string());
            }
        }
    }

    /// Reads every mark into the dirty set. The engine calls it before `start` returns, so
    /// no read of a restarted process can reach a stale cached copy first.
    pub(crate) async fn load(
        &mut self,
        tier: &(impl RepairMarks + ?Sized),
    ) -> crate::error::Result<()> {
        load(tier, &self.dirty).await?;
        self.loaded = true;
        Ok(())
    }

    /// One step: rewrite a page of marked ids from SQL. Failures leave the marks for later.
    pub(crate) async fn step(
        &mut self,
        tier: &(impl RepairMarks + DurableStore + ?Sized),
        redis: &dyn Cache,
    ) {
        self.next = Instant::now() + AGAIN;
        if !self.loaded {
            if let Err(e) = self.load(tier).await {
                warn!(error = %e, "reading the Redis repair marks failed; retrying");
                return;
            }
        }
        if !redis.available() {
            return;
        }
        if !self.settled.is_empty() {
            let done: Vec<RepairMark> = self
                .settled
                .iter()
                .map(|id| RepairMark {
                    id: id.clone(),
                    marks: None,
                })
                .collect();
            if tier.clear_redis_repairs(&done).await.is_err() {
                return;
            }
            self.settled.clear();
        }
        let marks = match tier.redis_repairs(self.after.as_deref(), PAGE).await {
            Ok(marks) => marks,
            Err(e) => {
                warn!(error = %e, "reading Redis repair marks failed; retrying");
                return;
            }
        };
        let full = marks.len() == PAGE;
        self.after = if full {
            marks.last().map(|m| m.id.clone())
        } else {
            None
        };
        if marks.is_empty() {
            self.next = Instant::now() + IDLE;
            return;
        }
        self.dirty.mark(marks.iter().map(|m| m.id.as_str()));
        let ids: Vec<&str> = marks.iter().map(|m| m.id.as_str()).collect();
        let rows = match tier.get_many(&ids).await {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "reading rows to repair Redis failed; retrying");
                return;
            }
        };
        let done = rewrite(redis, &marks, &rows).await;
        if done.is_empty() {
            return;
        }
        if let Err(e) = tier.clear_redis_repairs(&done).await {
            warn!(error = %e, "clearing Redis repair marks failed; they are repaired again");
            return;
        }
        self.dirty.clear(done.iter().map(|m| m.id.as_str()));
        info!(repaired = done.len(), "Redis rewritten from SQL");
        if full {
            self.next = Instant::now();
        }
    }
}

/// Reads every mark into the dirty set.
async fn load(tier: &(impl RepairMarks + ?Sized), dirty: &Dirty) -> crate::error::Result<()> {
    let mut after: Option<String> = None;
    let mut count = 0;
    loop {
        let page = tier.redis_repairs(after.as_deref(), LOAD_PAGE).await?;
        count += page.len();
        dirty.mark(page.iter().map(|m| m.id.as_str()));
        match page.last() {
            Some(last) if page.len() == LOAD_PAGE => after = Some(last.id.clone()),
            _ => break,
        }
    }
    if count > 0 {
        info!(
            ids = count,
            "Redis may be stale for ids marked before this start; repairing them from SQL"
        );
    }
    Ok(())
}

/// Writes what SQL holds for each marked id to Redis; returns the marks it served. A chunk
/// Redis refuses for what it holds (not for being away) is retried id by id, so one key
/// Redis cannot take does not hold back the others.
async fn rewrite(
    redis: &dyn Cache,
    marks: &[RepairMark],
    rows: &[Option<SyncItem>],
) -> Vec<RepairMark> {
    let writes: Vec<CacheWrite> = marks
        .iter()
        .zip(rows)
        .map(|(mark, row)| CacheWrite::from_row(&mark.id, row.as_ref()))
        .collect();
    match redis.write(&writes).await {
        Ok(()) => return marks.to_vec(),
        Err(e) if !redis.available() => {
            warn!(error = %e, "Redis repair waits for Redis");
            return Vec::new();
        }
        Err(_) => {}
    }
    let mut done = Vec::new();
    for (mark, write) in marks.iter().zip(&writes) {
        match redis.write(std::slice::from_ref(write)).await {
            Ok(()) => done.push(mark.clone()),
            Err(e) => {
                warn!(error = %e, id = mark.id, "Redis refuses the repair of this id; reads of it go to SQL")
            }
        }
    }
    done
}

/// The repair path against an in-memory durable tier and [`MemoryCache`], on a paused clock:
/// deterministic, and fast enough to cover what the fault tests on real services show slowly.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::config::SyncEngineConfig;
    use crate::options::{CacheTtl, SubmitOptions};
    use crate::tier::cache::MemoryCache;
    use crate::tier::memory::MemoryTier;
    use crate::tier::{DurableStore, RepairMarks};
    use crate::{SyncEngine, SyncItem};

    fn stores() -> (Arc<MemoryTier>, Arc<MemoryCache>) {
        (Arc::default(), Arc::default())
    }

    async fn engine(tier: &Arc<MemoryTier>, cache: &Arc<MemoryCache>) -> SyncEngine {
        let config = SyncEngineConfig::default();
        let (_tx, rx) = tokio::sync::watch::channel(config.clone());
        let mut engine = SyncEngine::with_tier(config, rx, tier.clone()).with_cache(cache.clone());
        engine.start().await.expect("starts");
        engine
    }

    fn item(id: &str, n: u32) -> SyncItem {
        SyncItem::new(id.into(), format!("{{\"n\":{n}}}").into_bytes())
    }

    /// The content `item(_, v)` has.
    fn n(v: u32) -> Option<Vec<u8>> {
        Some(format!("{{\"n\":{v}}}").into_bytes())
    }

    /// `a` = 1 written everywhere, then `a` = 2 submitted while the cache is away.
    async fn miss_a_write(engine: &SyncEngine, cache: &MemoryCache) {
        engine.submit(item("a", 1)).await.unwrap();
        engine.flush().await.unwrap();
        assert_eq!(content(cache.peek("a")), n(1));
        cache.set_away(true);
        engine.submit(item("a", 2)).await.unwrap();
    }

    /// Within two (paused-clock) seconds the repair puts `a` = 2 back and clears its mark.
    async fn repaired(tier: &MemoryTier, cache: &MemoryCache) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(content(cache.peek("a")), n(2), "repaired");
        assert!(marks(tier).await.is_empty(), "its mark is cleared");
    }

    fn content(item: Option<SyncItem>) -> Option<Vec<u8>> {
        item.map(|i| i.content().to_vec())
    }

    async fn marks(tier: &MemoryTier) -> Vec<String> {
        let marks = tier.redis_repairs(None, 100).await.expect("reads marks");
        marks.into_iter().map(|m| m.id).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_the_cache_missed_is_never_read_from_it_and_is_repaired_on_its_return() {
        let (tier, cache) = stores();
        let engine = engine(&tier, &cache).await;
        miss_a_write(&engine, &cache).await;
        engine.flush().await.unwrap();
        assert_eq!(content(tier.get("a").await.unwrap()), n(2));
        assert_eq!(content(cache.peek("a")), n(1), "the cache missed it");
        assert_eq!(marks(&tier).await, ["a"], "the miss is recorded durably");

        // back, before any repair ran (the clock is paused): reads must skip the stale copy
        cache.set_away(false);
        engine.clear_l1();
        assert_eq!(content(engine.get("a").await.unwrap()), n(2));

        repaired(&tier, &cache).await;
        engine.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_engine_never_serves_what_a_mark_says_is_stale() {
        let (tier, cache) = stores();
        let first = engine(&tier, &cache).await;
        miss_a_write(&first, &cache).await;
        first.shutdown().await;
        assert_eq!(marks(&tier).await, ["a"]);

        cache.set_away(false);
        let second = engine(&tier, &cache).await;
        // the first read after start, before the writer task ever ran
        assert_eq!(content(second.get("a").await.unwrap()), n(2));
        repaired(&tier, &cache).await;
        second.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn cache_only_writes_wait_for_the_cache_instead_of_being_dropped() {
        let (tier, cache) = stores();
        let engine = engine(&tier, &cache).await;
        cache.set_away(true);
        let options = SubmitOptions::cache(CacheTtl::Hour);
        engine.submit_with(item("c", 1), options).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(60), engine.flush()).await;
        assert!(
            waited.is_err(),
            "a flush cannot return while the only copy is unwritten"
        );
        assert!(engine.write_failure().is_some_and(|f| f.tier == "Redis"));

        cache.set_away(false);
        engine.flush().await.unwrap();
        assert_eq!(content(cache.peek("c")), n(1));
        assert_eq!(tier.get("c").await.unwrap(), None, "never in SQL");
        assert!(marks(&tier).await.is_empty(), "nothing to repair from");
        assert!(cache.applied_calls() >= 1);
        engine.shutdown().await;
    }
}
