//! L1: what this process holds in memory, in two parts.
//!
//! - **pending**: the latest accepted-but-not-yet-durable op per id (put or delete). Never
//!   evicted; submit waits while pending bytes are over budget, so it cannot grow unbounded.
//! - **cache**: committed items, a moka cache weighed by item bytes and bounded by
//!   `l1_max_bytes` (minus what pending holds). Entries can carry a TTL (cache-only items).
//!
//! Reads look at pending first (read-your-writes), then the cache. Byte accounting is exact:
//! counters move on every insert and, through moka's eviction listener, on every removal
//! (replace, invalidate, size eviction, expiry).
//!
//! Read-through warming races with commits: a reader may fetch a row from L3 just before a
//! commit changes it. Every commit bumps an epoch under a lock; a reader warms L1 only if
//! the epoch it saw before its L3 read is still current, so L1 never goes back in time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use tokio::sync::Notify;

use crate::item::SyncItem;

#[derive(Debug, Clone)]
struct Cached {
    item: Arc<SyncItem>,
    ttl: Option<Duration>,
}

struct TtlExpiry;

impl Expiry<String, Cached> for TtlExpiry {
    fn expire_after_create(&self, _: &String, value: &Cached, _: Instant) -> Option<Duration> {
        value.ttl
    }
    fn expire_after_update(
        &self,
        _: &String,
        value: &Cached,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        value.ttl
    }
}

/// An accepted op waiting for its batch to commit.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Put(Arc<SyncItem>),
    Delete { source: Arc<str>, version: u64 },
}

/// Which write an op is: its source and its version within that source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp<'a> {
    pub source: &'a str,
    pub version: u64,
}

impl Stamp<'_> {
    /// Whether a write stamped `self` replaces one stamped `older`: a newer version of the
    /// same source, or any write of another source (versions of different sidecar partitions
    /// are offsets, not comparable: the one accepted last is the newest).
    pub(crate) fn replaces(&self, older: &Stamp<'_>) -> bool {
        self.source != older.source || self.version > older.version
    }
}

impl Pending {
    fn stamp(&self) -> Stamp<'_> {
        match self {
            Pending::Put(item) => Stamp {
                source: item.source(),
                version: item.version(),
            },
            Pending::Delete { source, version } => Stamp {
                source,
                version: *version,
            },
        }
    }

    fn size(&self, id: &str) -> i64 {
        match self {
            Pending::Put(item) => item.mem_size() as i64,
            Pending::Delete { .. } => id.len() as i64 + 64,
        }
    }
}

pub(crate) enum Lookup {
    Found(Arc<SyncItem>),
    /// A delete is pending: the item is gone even if L3 still has it.
    Deleted,
    Unknown,
}

/// How one op of a committed batch ended, for [`L1::settle`].
pub(crate) struct Settled<'a> {
    pub id: &'a str,
    pub stamp: Stamp<'a>,
    /// The committed item to cache, when the op was an applied put.
    pub item: Option<(&'a Arc<SyncItem>, Option<Duration>)>,
}

/// Byte and item counts of L1 at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1Stats {
    pub cached_items: u64,
    pub cached_bytes: u64,
    pub pending_items: u64,
    pub pending_bytes: u64,
    pub max_bytes: u64,
}

pub(crate) struct L1 {
    cache: Cache<String, Cached>,
    /// False: committed items are not cached (a writer that serves no reads, the sidecar).
    read_cache: bool,
    cached_bytes: Arc<AtomicI64>,
    pending: Mutex<HashMap<String, Pending>>,
    pending_bytes: AtomicI64,
    max_bytes: i64,
    /// Pending bytes past which `submit` waits.
    pending_budget: i64,
    epoch: Mutex<u64>,
    drained: Notify,
}

fn weight(item: &SyncItem) -> i64 {
    item.mem_size() as i64
}

impl L1 {
    pub(crate) fn new(max_bytes: usize, pending_share: f64) -> Self {
        let cached_bytes = Arc::new(AtomicI64::new(0));
        let on_removal = cached_bytes.clone();
        let cache = Cache::builder()
            .max_capacity(max_bytes as u64)
            .weigher(|_: &String, v: &Cached| weight(&v.item).min(u32::MAX as i64) as u32)
            .expire_after(TtlExpiry)
            .eviction_listener(move |_, v: Cached, _| {
                on_removal.fetch_sub(weight(&v.item), Ordering::SeqCst);
            })
            .build();
        L1 {
            cache,
            read_cache: true,
            cached_bytes,
            pending: Mutex::new(HashMap::new()),
            pending_bytes: AtomicI64::new(0),
            max_bytes: max_bytes as i64,
            pending_budget: ((max_bytes as f64) * pending_share) as i64,
            epoch: Mutex::new(0),
            drained: Notify::new(),
        }
    }

    /// This L1 holds pending writes only: committed items, and items read from lower tiers,
    /// are never cached.
    pub(crate) fn without_read_cache(mut self) -> Self {
        self.read_cache = false;
        self
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().expect("L1 pending lock poisoned")
    }

    fn epoch_lock(&self) -> MutexGuard<'_, u64> {
        self.epoch.lock().expect("L1 epoch lock poisoned")
    }

    pub(crate) fn lookup(&self, id: &str) -> Lookup {
        match self.pending().get(id) {
            Some(Pending::Put(item)) => return Lookup::Found(item.clone()),
            Some(Pending::Delete { .. }) => return Lookup::Deleted,
            None => {}
        }
        match self.cache.get(id) {
            Some(cached) => Lookup::Found(cached.item),
            None => Lookup::Unknown,
        }
    }

    /// Records an accepted op, unless L1 already knows a newer write of the id (an old
    /// version replayed: it still goes to L3, whose guard ignores it).
    pub(crate) fn accept(&self, id: &str, op: Pending) {
        let mut pending = self.pending();
        let cached = self.cache.get(id);
        let known = match pending.get(id) {
            Some(p) => Some(p.stamp()),
            None => cached.as_ref().map(|c| Stamp {
                source: c.item.source(),
                version: c.item.version(),
            }),
        };
        if known.is_some_and(|k| !op.stamp().replaces(&k)) {
            return;
        }
        let added = op.size(id);
        let removed = pending
            .insert(id.to_string(), op)
            .map_or(0, |old| old.size(id));
        self.pending_bytes
            .fetch_add(added - removed, Ordering::SeqCst);
    }

    /// Waits until `size` more pending bytes fit the budget (always lets one op through when
    /// nothing is pending, so a single huge item cannot wait forever).
    /// Whether `size` more pending bytes fit without waiting.
    pub(crate) fn has_room(&self, size: usize) -> bool {
        let pending = self.pending_bytes.load(Ordering::SeqCst);
        pending == 0 || pending + size as i64 <= self.pending_budget
    }

    pub(crate) async fn wait_for_room(&self, size: usize) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            let pending = self.pending_bytes.load(Ordering::SeqCst);
            if pending == 0 || pending + size as i64 <= self.pending_budget {
                return;
            }
            drained.await;
        }
    }

    /// Applies the outcome of a committed batch: applied puts become cached, everything else
    /// is dropped from the cache (L3 has the truth), and settled pending entries are released.
    pub(crate) fn settle<'a>(&self, outcomes: impl IntoIterator<Item = Settled<'a>>) {
        {
            let mut epoch = self.epoch_lock();
            *epoch += 1;
            let mut pending = self.pending();
            for done in outcomes {
                let current = pending.get(done.id).map(|p| p.stamp() == done.stamp);
                if current == Some(false) {
                    continue; // a newer op is pending and shadows this one
                }
                match done.item {
                    Some((item, ttl)) => self.insert_cached(item.clone(), ttl),
                    None => self.cache.invalidate(done.id),
                }
                if current == Some(true) {
                    if let Some(old) = pending.remove(done.id) {
                        self.pending_bytes
                            .fetch_sub(old.size(done.id), Ordering::SeqCst);
                    }
                }
            }
        }
        self.drained.notify_waiters();
        self.trim();
    }

    pub(crate) fn has_pending(&self, id: &str) -> bool {
        self.pending().contains_key(id)
    }

    /// The epoch to pass to [`L1::warm`], read before fetching from a lower tier.
    pub(crate) fn epoch(&self) -> u64 {
        *self.epoch_lock()
    }

    /// Caches an item read from a lower tier if no commit happened since `seen_epoch` and no
    /// op for it is pending.
    pub(crate) fn warm(&self, item: SyncItem, ttl: Option<Duration>, seen_epoch: u64) {
        let epoch = self.epoch_lock();
        if *epoch != seen_epoch || self.pending().contains_key(item.id()) {
            return;
        }
        self.insert_cached(Arc::new(item), ttl);
        drop(epoch);
        self.trim();
    }

    /// Drops cached items matching `doomed` that are older than `version` (a range delete).
    pub(crate) fn invalidate_where(&self, version: u64, doomed: impl Fn(&SyncItem) -> bool) {
        let mut epoch = self.epoch_lock();
        *epoch += 1;
        for (key, cached) in self.cache.iter() {
            if cached.item.version() < version && doomed(&cached.item) {
                self.cache.invalidate(key.as_str());
            }
        }
    }

    /// Changes the state of a cached item (after `set_state` committed); true if cached.
    pub(crate) fn restate(&self, id: &str, state: &str, version: u64) -> bool {
        let mut epoch = self.epoch_lock();
        *epoch += 1;
        match self.cache.get(id) {
            Some(cached) if cached.item.version() < version => {
                let mut item = (*cached.item).clone();
                item.set_state(state.to_string());
                item.set_version(version);
                self.insert_cached(Arc::new(item), cached.ttl);
                true
            }
            _ => false,
        }
    }

    fn insert_cached(&self, item: Arc<SyncItem>, ttl: Option<Duration>) {
        if !self.read_cache {
            return;
        }
        // count before inserting: the listener may subtract it right away (replaced/too big)
        self.cached_bytes.fetch_add(weight(&item), Ordering::SeqCst);
        self.cache
            .insert(item.id().to_string(), Cached { item, ttl });
    }

    /// Evicts cached items while cache + pending exceed `l1_max_bytes`.
    fn trim(&self) {
        let room = self.max_bytes - self.pending_bytes.load(Ordering::SeqCst);
        if self.cached_bytes.load(Ordering::SeqCst) <= room {
            return;
        }
        for (key, _) in self.cache.iter() {
            if self.cached_bytes.load(Ordering::SeqCst) <= room {
                break;
            }
            self.cache.invalidate(key.as_str());
        }
    }

    /// Cache + pending bytes over `l1_max_bytes`.
    pub(crate) fn memory_pressure(&self) -> f64 {
        let used =
            self.cached_bytes.load(Ordering::SeqCst) + self.pending_bytes.load(Ordering::SeqCst);
        used.max(0) as f64 / self.max_bytes as f64
    }

    pub(crate) fn stats(&self) -> L1Stats {
        self.cache.run_pending_tasks();
        let pending_items = self.pending().len() as u64;
        L1Stats {
            cached_items: self.cache.entry_count(),
            cached_bytes: self.cached_bytes.load(Ordering::SeqCst).max(0) as u64,
            pending_items,
            pending_bytes: self.pending_bytes.load(Ordering::SeqCst).max(0) as u64,
            max_bytes: self.max_bytes as u64,
        }
    }

    /// Forgets every cached (committed) item; pending ops stay.
    pub(crate) fn clear_cache(&self) {
        let mut epoch = self.epoch_lock();
        *epoch += 1;
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, version: u64, len: usize) -> Arc<SyncItem> {
        Arc::new(SyncItem::new(id.into(), vec![b'x'; len]).with_version(version))
    }

    fn settle_put(l1: &L1, it: &Arc<SyncItem>) {
        l1.settle([Settled {
            id: it.id(),
            stamp: Stamp {
                source: it.source(),
                version: it.version(),
            },
            item: Some((it, None)),
        }]);
    }

    #[test]
    fn without_a_read_cache_only_pending_writes_are_held() {
        let l1 = L1::new(1 << 20, 0.9).without_read_cache();
        let it = item("a", 1, 100);
        l1.accept("a", Pending::Put(it.clone()));
        assert!(
            matches!(l1.lookup("a"), Lookup::Found(_)),
            "read-your-writes while pending"
        );
        assert!(l1.stats().pending_bytes > 0);
        settle_put(&l1, &it);
        assert!(
            matches!(l1.lookup("a"), Lookup::Unknown),
            "committed: not cached"
        );
        l1.warm((*it).clone(), None, l1.epoch());
        assert!(
            matches!(l1.lookup("a"), Lookup::Unknown),
            "reads do not warm it either"
        );
        let stats = l1.stats();
        assert_eq!((stats.pending_bytes, stats.cached_bytes), (0, 0));
        assert_eq!(l1.memory_pressure(), 0.0);
    }

    #[test]
    fn pending_shadows_cache_and_accounting_is_exact() {
        let l1 = L1::new(1 << 20, 0.9);
        let a1 = item("a", 1, 100);
        l1.accept("a", Pending::Put(a1.clone()));
        assert_eq!(l1.stats().pending_bytes, a1.mem_size() as u64);
        settle_put(&l1, &a1);
        let s = l1.stats();
        assert_eq!((s.pending_bytes, s.cached_bytes), (0, a1.mem_size() as u64));

        l1.accept(
            "a",
            Pending::Delete {
                source: Arc::from("local"),
                version: 2,
            },
        );
        assert!(matches!(l1.lookup("a"), Lookup::Deleted));
        l1.settle([Settled {
            id: "a",
            stamp: Stamp {
                source: "local",
                version: 2,
            },
            item: None,
        }]);
        assert!(matches!(l1.lookup("a"), Lookup::Unknown));
        let s = l1.stats();
        assert_eq!((s.pending_bytes, s.cached_bytes, s.cached_items), (0, 0, 0));
    }

    #[test]
    fn older_versions_do_not_replace_newer_ones() {
        let l1 = L1::new(1 << 20, 0.9);
        let new = item("a", 5, 10);
        l1.accept("a", Pending::Put(new.clone()));
        l1.accept("a", Pending::Put(item("a", 3, 10)));
        match l1.lookup("a") {
            Lookup::Found(found) => assert_eq!(found.version(), 5),
            _ => panic!("lost the pending put"),
        }
    }

    #[test]
    fn a_write_of_another_partition_replaces_a_higher_offset() {
        let l1 = L1::new(1 << 20, 0.9);
        let from = |source: &str, version: u64, byte: u8| {
            Arc::new(
                SyncItem::new("a".into(), vec![byte; 10])
                    .with_version(version)
                    .with_source(Arc::from(source)),
            )
        };
        l1.accept("a", Pending::Put(from("in/0", 900, b'0')));
        l1.accept("a", Pending::Put(from("in/1", 3, b'1')));
        match l1.lookup("a") {
            Lookup::Found(found) => assert_eq!(found.content(), &[b'1'; 10]),
            _ => panic!("lost the pending put"),
        }
        // the older op settling does not take the newer one's place
        let old = from("in/0", 900, b'0');
        l1.settle([Settled {
            id: "a",
            stamp: Stamp {
                source: "in/0",
                version: 900,
            },
            item: Some((&old, None)),
        }]);
        match l1.lookup("a") {
            Lookup::Found(found) => assert_eq!(found.content(), &[b'1'; 10]),
            _ => panic!("lost the pending put"),
        }
    }

    #[test]
    fn warming_after_a_commit_is_refused() {
        let l1 = L1::new(1 << 20, 0.9);
        let seen = l1.epoch();
        let fresh = item("a", 2, 10);
        settle_put(&l1, &fresh);
        l1.warm((*item("a", 1, 10)).clone(), None, seen);
        match l1.lookup("a") {
            Lookup::Found(found) => assert_eq!(found.version(), 2),
            _ => panic!("expected the committed item"),
        }
    }

    #[test]
    fn cache_stays_within_max_bytes() {
        let l1 = L1::new(10_000, 0.9);
        for i in 0..100 {
            settle_put(&l1, &item(&format!("k{i}"), 1, 500));
        }
        let s = l1.stats();
        assert!(s.cached_bytes <= 10_000, "{s:?}");
        assert!(s.cached_items > 0);
    }
}
