//! An in-memory durable tier with the same semantics as the SQL one (version guard,
//! tombstones, byte-ordered prefix scans). For fast tests and `sql_url = None`; it keeps
//! nothing across restarts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    decide, is_partition, merkle_delta, prefix_upper_bound, Applied, DurableStore, LeafRow, Op,
    Prior, RangeStore, Removed, RepairMark, RepairMarks, SearchCandidates, StateRootStore, Stored,
};
use crate::error::Result;
use crate::item::{content_hash, SyncItem};
use crate::merkle::{Delta, PartitionDigest};

#[derive(Default)]
struct Tables {
    items: BTreeMap<Vec<u8>, Arc<SyncItem>>,
    /// Deleted ids: (source, version) of the delete.
    tombstones: BTreeMap<Vec<u8>, (Arc<str>, u64)>,
    /// The highest version applied per source (a sidecar partition's progress).
    progress: BTreeMap<String, u64>,
    /// Ids Redis may be wrong about, with how often each was marked.
    repairs: BTreeMap<String, u64>,
    /// Merkle digests per partition, moved by every change as the SQL tier's are.
    digests: BTreeMap<String, PartitionDigest>,
}

fn prior(item: &SyncItem) -> Prior {
    Prior {
        source: item.source().to_string(),
        content_hash: item.content_hash().to_string(),
        redis_ttl_ms: item.redis_ttl_ms(),
    }
}

fn leaf_row(item: &SyncItem) -> LeafRow {
    LeafRow {
        id: item.id().to_string(),
        source: item.source().to_string(),
        content_hash: item.content_hash().to_string(),
        payload_ok: content_hash(item.content()) == item.content_hash(),
        redis_ttl_ms: item.redis_ttl_ms(),
    }
}

impl Tables {
    fn stored(&self, id: &[u8]) -> Option<Stored<'_>> {
        let live = self.items.get(id).map(|i| Stored {
            source: i.source(),
            version: i.version(),
        });
        let dead = self.tombstones.get(id).map(|(source, version)| Stored {
            source,
            version: *version,
        });
        match (live, dead) {
            (Some(l), Some(d)) => Some(if d.version > l.version { d } else { l }),
            (l, d) => l.or(d),
        }
    }

    fn advance(&mut self, source: &str, version: u64) {
        let p = self.progress.entry(source.to_string()).or_default();
        *p = (*p).max(version);
    }

    fn under_prefix<'a>(&'a self, prefix: &str) -> impl Iterator<Item = &'a Arc<SyncItem>> + 'a {
        let start = prefix.as_bytes().to_vec();
        let end = prefix_upper_bound(prefix.as_bytes());
        self.items
            .range(start..)
            .take_while(move |(k, _)| end.as_ref().is_none_or(|e| k.as_slice() < e.as_slice()))
            .map(|(_, v)| v)
    }

    fn store(&mut self, delta: &Delta) {
        for (partition, bucket, count, xor) in delta.changes() {
            let digest = self.digests.entry(partition.to_string()).or_default();
            digest.set_bucket(bucket, Delta::apply_to(digest.bucket(bucket), count, xor));
        }
    }

    fn tombstone_where(&mut self, version: u64, keep: impl Fn(&SyncItem) -> bool) -> Vec<Removed> {
        let doomed: Vec<Vec<u8>> = self
            .items
            .iter()
            .filter(|(_, item)| !keep(item) && item.version() < version)
            .map(|(k, _)| k.clone())
            .collect();
        let mut removed = Vec::with_capacity(doomed.len());
        let mut delta = Delta::default();
        for key in doomed {
            if let Some(item) = self.items.remove(&key) {
                delta.remove(item.source(), item.id(), item.content_hash());
                removed.push(Removed {
                    id: item.id().to_string(),
                    prior: prior(&item),
                });
            }
            let t = self
                .tombstones
                .entry(key)
                .or_insert((Arc::from(crate::item::LOCAL_SOURCE), 0));
            t.1 = t.1.max(version);
        }
        self.store(&delta);
        self.advance(crate::item::LOCAL_SOURCE, version);
        removed
    }
}

#[derive(Default)]
pub struct MemoryTier {
    tables: Mutex<Tables>,
}

impl MemoryTier {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().expect("memory tier lock poisoned")
    }
}

#[async_trait]
impl DurableStore for MemoryTier {
    async fn apply(&self, ops: &[Op]) -> Result<Vec<Applied>> {
        let mut t = self.lock();
        // decided against the state before the batch, as the SQL tier does
        let applied: Vec<Applied> = ops
            .iter()
            .map(|op| {
                let key = op.id().as_bytes();
                let progress = is_partition(op.source())
                    .then(|| t.progress.get(&**op.source()).copied())
                    .flatten();
                decide(
                    op,
                    t.stored(key),
                    progress,
                    t.items.get(key).map(|i| prior(i)),
                )
            })
            .collect();
        for (op, _) in ops.iter().zip(&applied).filter(|(_, a)| a.applied) {
            let key = op.id().as_bytes().to_vec();
            match op {
                Op::Put(item) => {
                    t.tombstones.remove(&key);
                    t.items.insert(key, item.clone());
                }
                Op::Delete {
                    version, source, ..
                } => {
                    t.items.remove(&key);
                    t.tombstones.insert(key, (source.clone(), *version));
                }
            }
            t.advance(op.source(), op.version());
        }
        t.store(&merkle_delta(ops, &applied));
        Ok(applied)
    }

    async fn get(&self, id: &str) -> Result<Option<SyncItem>> {
        Ok(self.lock().items.get(id.as_bytes()).map(|i| (**i).clone()))
    }

    async fn get_many(&self, ids: &[&str]) -> Result<Vec<Option<SyncItem>>> {
        let t = self.lock();
        Ok(ids
            .iter()
            .map(|id| t.items.get(id.as_bytes()).map(|i| (**i).clone()))
            .collect())
    }

    async fn contains(&self, id: &str) -> Result<bool> {
        Ok(self.lock().items.contains_key(id.as_bytes()))
    }

    async fn ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let t = self.lock();
        let start = after.map_or(Unbounded, |a| Excluded(a.as_bytes().to_vec()));
        Ok(t.items
            .range((start, Unbounded))
            .take(limit)
            .map(|(_, item)| item.id().to_string())
            .collect())
    }

    async fn max_version(&self) -> Result<u64> {
        let t = self.lock();
        let live = t.items.values().map(|i| i.version()).max().unwrap_or(0);
        let dead = t.tombstones.values().map(|(_, v)| *v).max().unwrap_or(0);
        Ok(live.max(dead))
    }

    async fn source_version(&self, source: &str) -> Result<Option<u64>> {
        Ok(self.lock().progress.get(source).copied())
    }

    fn payload_limit(&self) -> Option<usize> {
        None
    }
}

#[async_trait]
impl RangeStore for MemoryTier {
    async fn scan_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<SyncItem>> {
        let t = self.lock();
        Ok(t.under_prefix(prefix)
            .take(limit)
            .map(|i| (**i).clone())
            .collect())
    }

    async fn count_prefix(&self, prefix: &str) -> Result<u64> {
        Ok(self.lock().under_prefix(prefix).count() as u64)
    }

    async fn delete_prefix(&self, prefix: &str, version: u64) -> Result<Vec<Removed>> {
        let prefix = prefix.to_string();
        Ok(self
            .lock()
            .tombstone_where(version, |item| !item.id().starts_with(&prefix)))
    }

    async fn get_by_state(&self, state: &str, limit: usize) -> Result<Vec<SyncItem>> {
        let t = self.lock();
        Ok(t.items
            .values()
            .filter(|i| i.state() == state)
            .take(limit)
            .map(|i| (**i).clone())
            .collect())
    }

    async fn count_by_state(&self, state: &str) -> Result<u64> {
        Ok(self
            .lock()
            .items
            .values()
            .filter(|i| i.state() == state)
            .count() as u64)
    }

    async fn delete_by_state(&self, state: &str, version: u64) -> Result<Vec<Removed>> {
        Ok(self
            .lock()
            .tombstone_where(version, |item| item.state() != state))
    }

    async fn set_state(&self, id: &str, state: &str, version: u64) -> Result<bool> {
        let mut t = self.lock();
        t.advance(crate::item::LOCAL_SOURCE, version);
        match t.items.get_mut(id.as_bytes()) {
            Some(item) if item.version() < version => {
                let mut updated = (**item).clone();
                updated.set_state(state.to_string());
                updated.set_version(version);
                *item = Arc::new(updated);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl SearchCandidates for MemoryTier {
    async fn search_candidates(&self, query: &crate::search::Query) -> Result<Vec<SyncItem>> {
        let t = self.lock();
        Ok(t.items
            .values()
            .filter(|i| query.matches(i))
            .map(|i| (**i).clone())
            .collect())
    }
}

#[async_trait]
impl StateRootStore for MemoryTier {
    async fn merkle_partitions(&self) -> Result<Vec<String>> {
        Ok(self.lock().digests.keys().cloned().collect())
    }

    async fn merkle_digest(&self, partition: &str) -> Result<PartitionDigest> {
        Ok(self
            .lock()
            .digests
            .get(partition)
            .cloned()
            .unwrap_or_default())
    }

    async fn replace_merkle_digest(&self, partition: &str, digest: &PartitionDigest) -> Result<()> {
        self.lock()
            .digests
            .insert(partition.to_string(), digest.clone());
        Ok(())
    }

    async fn leaves_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<LeafRow>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let t = self.lock();
        let start = after.map_or(Unbounded, |a| Excluded(a.as_bytes().to_vec()));
        Ok(t.items
            .range((start, Unbounded))
            .take(limit)
            .map(|(_, item)| leaf_row(item))
            .collect())
    }

    async fn leaf_row(&self, id: &str) -> Result<Option<LeafRow>> {
        Ok(self.lock().items.get(id.as_bytes()).map(|i| leaf_row(i)))
    }
}

#[async_trait]
impl RepairMarks for MemoryTier {
    async fn mark_redis_repairs(&self, ids: &[&str]) -> Result<()> {
        let mut t = self.lock();
        for id in ids {
            *t.repairs.entry(id.to_string()).or_default() += 1;
        }
        Ok(())
    }

    async fn redis_repairs(&self, after: Option<&str>, limit: usize) -> Result<Vec<RepairMark>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let t = self.lock();
        let start = after.map_or(Unbounded, |a| Excluded(a.to_string()));
        Ok(t.repairs
            .range((start, Unbounded))
            .take(limit)
            .map(|(id, marks)| RepairMark {
                id: id.clone(),
                marks: Some(*marks),
            })
            .collect())
    }

    async fn clear_redis_repairs(&self, done: &[RepairMark]) -> Result<()> {
        let mut t = self.lock();
        for mark in done {
            if mark.marks.is_none() || t.repairs.get(&mark.id) == mark.marks.as_ref() {
                t.repairs.remove(&mark.id);
            }
        }
        Ok(())
    }
}
