//! L2 as the write and read paths see it: [`Cache`], a cache of whole items by id, written
//! after SQL commits and read before SQL. [`RedisTier`](super::redis::RedisTier) is the
//! implementation; `MemoryCache` (unit tests only) is an in-memory fake that can be sent
//! away and brought back, so the writer's repair logic is tested without a Redis server.
//!
//! The role is small on purpose. The writer needs to apply a batch's writes, change a state,
//! remove ranges and know whether the cache is reachable; the engine's reads need a point
//! lookup with the remaining TTL. Every write replaces a whole item, so a failed call may have
//! applied any subset of its writes and the caller can redo or repair all of them. What only
//! Redis has — search, the Merkle mirror and probes that `verify` reads, key types for
//! `inspect` — stays on `RedisTier`.
//!
//! Which ids the cache may be wrong about is not the cache's business: that is
//! [`crate::repair::Dirty`], shared by the writer and the engine's reads.

use std::time::Duration;

use async_trait::async_trait;
use redis::RedisError;

use crate::item::SyncItem;

/// One change to apply to the cache.
#[derive(Clone)]
pub(crate) enum CacheWrite<'a> {
    Put {
        item: &'a SyncItem,
        ttl: Option<Duration>,
        /// Counted in the Merkle mirror: a durable item cached without TTL.
        mirrored: bool,
    },
    /// The id must not be in the cache (deleted, or now routed past it).
    Remove { id: &'a str },
}

impl<'a> CacheWrite<'a> {
    /// What the cache must hold for `id` when SQL holds `row`: the item, with the TTL its
    /// route gives counted from now; or nothing, when SQL has no row or the item is not
    /// routed to the cache. Repairs and `verify --repair` rewrite the cache from this.
    pub(crate) fn from_row(id: &'a str, row: Option<&'a SyncItem>) -> Self {
        match row {
            Some(item) if item.redis_ttl_ms().is_some() => CacheWrite::Put {
                item,
                ttl: item
                    .redis_ttl_ms()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis),
                mirrored: true,
            },
            _ => CacheWrite::Remove { id },
        }
    }

    pub(crate) fn id(&self) -> &str {
        match self {
            CacheWrite::Put { item, .. } => item.id(),
            CacheWrite::Remove { id } => id,
        }
    }
}

/// The L2 role (see the module doc). Errors are Redis's: a connection-level error means
/// "away, try later", anything else "it answered and refused".
#[async_trait]
pub(crate) trait Cache: Send + Sync {
    /// Whether calls may go to the cache now (false while its circuit breaker is open).
    fn available(&self) -> bool;

    /// Applies `writes` (at most one per id). On failure any subset may have been applied:
    /// the caller repairs every id.
    async fn write(&self, writes: &[CacheWrite<'_>]) -> Result<(), RedisError>;

    /// The item under `id` with its remaining TTL, or `None`; errors mean "ask the next tier".
    async fn get(&self, id: &str) -> Result<Option<(SyncItem, Option<Duration>)>, RedisError>;

    /// Changes the state of a cached item, keeping its TTL; false when the cache lacks it.
    async fn restate(&self, id: &str, state: &str, version: u64) -> Result<bool, RedisError>;

    /// Removes every cached item whose id starts with `id_prefix`.
    async fn remove_prefix(&self, id_prefix: &str) -> Result<(), RedisError>;

    /// Removes every cached item in `state`; returns their ids.
    async fn remove_state(&self, state: &str) -> Result<Vec<String>, RedisError>;
}

#[cfg(test)]
pub(crate) use fake::MemoryCache;

#[cfg(test)]
mod fake {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;
    use redis::RedisError;

    use super::{Cache, CacheWrite};
    use crate::item::SyncItem;

    /// An in-memory [`Cache`]. [`MemoryCache::set_away`] makes it behave like a Redis whose
    /// breaker is open: `available()` is false and every call fails with a connection error,
    /// changing nothing. TTLs are kept as given and never expire.
    #[derive(Default)]
    pub(crate) struct MemoryCache {
        items: Mutex<BTreeMap<String, (SyncItem, Option<Duration>)>>,
        away: AtomicBool,
        /// Calls that changed something (writes, restates, removals).
        applied_calls: AtomicU64,
    }

    impl MemoryCache {
        pub(crate) fn set_away(&self, away: bool) {
            self.away.store(away, Ordering::SeqCst);
        }

        /// What the cache holds under `id`, read without going through the role.
        pub(crate) fn peek(&self, id: &str) -> Option<SyncItem> {
            self.items
                .lock()
                .expect("lock")
                .get(id)
                .map(|(item, _)| item.clone())
        }

        pub(crate) fn applied_calls(&self) -> u64 {
            self.applied_calls.load(Ordering::SeqCst)
        }

        fn reachable(&self) -> Result<(), RedisError> {
            if self.away.load(Ordering::SeqCst) {
                return Err(RedisError::from((
                    redis::ErrorKind::Io,
                    "memory cache sent away",
                )));
            }
            Ok(())
        }

        fn changed(&self) {
            self.applied_calls.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl Cache for MemoryCache {
        fn available(&self) -> bool {
            !self.away.load(Ordering::SeqCst)
        }

        async fn write(&self, writes: &[CacheWrite<'_>]) -> Result<(), RedisError> {
            self.reachable()?;
            let mut items = self.items.lock().expect("lock");
            for write in writes {
                match write {
                    CacheWrite::Put { item, ttl, .. } => {
                        items.insert(item.id().to_string(), ((*item).clone(), *ttl));
                    }
                    CacheWrite::Remove { id } => {
                        items.remove(*id);
                    }
                }
            }
            self.changed();
            Ok(())
        }

        async fn get(&self, id: &str) -> Result<Option<(SyncItem, Option<Duration>)>, RedisError> {
            self.reachable()?;
            Ok(self.items.lock().expect("lock").get(id).cloned())
        }

        async fn restate(&self, id: &str, state: &str, version: u64) -> Result<bool, RedisError> {
            self.reachable()?;
            let mut items = self.items.lock().expect("lock");
            let Some((item, _)) = items.get_mut(id) else {
                return Ok(false);
            };
            item.set_state(state.to_string());
            item.set_version(version);
            self.changed();
            Ok(true)
        }

        async fn remove_prefix(&self, id_prefix: &str) -> Result<(), RedisError> {
            self.reachable()?;
            self.items
                .lock()
                .expect("lock")
                .retain(|id, _| !id.starts_with(id_prefix));
            self.changed();
            Ok(())
        }

        async fn remove_state(&self, state: &str) -> Result<Vec<String>, RedisError> {
            self.reachable()?;
            let mut items = self.items.lock().expect("lock");
            let ids: Vec<String> = items
                .iter()
                .filter(|(_, (item, _))| item.state() == state)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &ids {
                items.remove(id);
            }
            self.changed();
            Ok(ids)
        }
    }
}
