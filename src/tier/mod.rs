//! The durable tier (L3) behind small role traits — [`DurableStore`] (batch writes, point reads,
//! the clock), [`RangeStore`] (prefixes and states), [`SearchCandidates`], [`StateRootStore`]
//! (Merkle digests and the rows `verify` reads) and [`RepairMarks`] — whose sum is
//! [`DurableTier`], with a SQL implementation (MySQL/MariaDB and SQLite, [`sql`]) and an
//! in-memory one for fast tests ([`memory`]). L2 is a smaller role, `cache::Cache` (writes of
//! whole items, point reads, states, range removals), implemented by Redis ([`redis`]).
//!
//! Every write carries a source and a version, and replaying an old write is a no-op, so state
//! never goes backwards. What "old" means depends on the source (see [`decide`]):
//! - **library writes** (source `local`, versions from the engine's clock or pinned by the
//!   caller) apply only when newer than what the tier holds for that id — the live row, or the
//!   tombstone a delete leaves behind;
//! - **sidecar writes** (source `<topic>/<partition>`, version = offset + 1) apply unless their
//!   partition has already committed that offset (`sync_sources`, written in the same
//!   transaction as the rows). Offsets of different partitions are not comparable, so a record
//!   that is not a replay applies whatever another partition wrote before: the newest record
//!   processed wins, also when an id moves to another partition.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::item::{SyncItem, LOCAL_SOURCE};
use crate::merkle::{Delta, PartitionDigest};

pub(crate) mod cache;
pub mod memory;
pub mod redis;
pub mod sql;

/// One write of a batch. A batch holds at most one op per id.
#[derive(Debug, Clone)]
pub enum Op {
    Put(Arc<SyncItem>),
    Delete {
        id: String,
        version: u64,
        source: Arc<str>,
    },
}

impl Op {
    pub fn id(&self) -> &str {
        match self {
            Op::Put(item) => item.id(),
            Op::Delete { id, .. } => id,
        }
    }

    pub fn version(&self) -> u64 {
        match self {
            Op::Put(item) => item.version(),
            Op::Delete { version, .. } => *version,
        }
    }

    pub fn source(&self) -> &Arc<str> {
        match self {
            Op::Put(item) => item.source(),
            Op::Delete { source, .. } => source,
        }
    }

    /// Payload bytes this op writes (0 for a delete), for batch sizing.
    pub fn payload_len(&self) -> usize {
        match self {
            Op::Put(item) => item.content().len(),
            Op::Delete { .. } => 0,
        }
    }
}

/// What a live row held before a write replaced or removed it: what the Merkle digests
/// (and Redis's mirror of them) must take out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prior {
    pub source: String,
    pub content_hash: String,
    pub redis_ttl_ms: Option<u64>,
}

/// What became of one op of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// It was not a replay (see [`decide`]), so it changed the tier.
    pub applied: bool,
    /// It did not apply because the tier already holds exactly this write (same source and
    /// version): a replay after a crash that came between the commit and the Redis write.
    /// Redis is written again for it.
    pub current: bool,
    /// The live row before the batch, if there was one.
    pub prior: Option<Prior>,
    /// For a sidecar write: what its partition had committed before this batch (0: nothing).
    /// Every op of that partition at or below it was a replay.
    pub progress_before: Option<u64>,
}

/// The newest version the tier holds for an id: its live row or its tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<'a> {
    pub source: &'a str,
    pub version: u64,
}

/// Whether `op` applies, given what the tier holds for its id and, for a sidecar write, what
/// its partition has committed (`progress`). The one place the replay rule lives; both tiers
/// call it inside their transaction.
pub fn decide(
    op: &Op,
    stored: Option<Stored<'_>>,
    progress: Option<u64>,
    prior: Option<Prior>,
) -> Applied {
    let source: &str = op.source();
    let current = stored
        == Some(Stored {
            source,
            version: op.version(),
        });
    if source == LOCAL_SOURCE {
        return Applied {
            applied: stored.is_none_or(|s| op.version() > s.version),
            current,
            prior,
            progress_before: None,
        };
    }
    // a row of the same partition newer than its progress row can only come from a database
    // written before progress rows existed: count it as committed too
    let same_source = stored
        .filter(|s| s.source == source)
        .map_or(0, |s| s.version);
    let committed = progress.unwrap_or(0).max(same_source);
    Applied {
        applied: op.version() > committed,
        current,
        prior,
        progress_before: Some(progress.unwrap_or(0)),
    }
}

/// Whether `source` is a sidecar partition (progress-ordered) rather than the library.
pub fn is_partition(source: &str) -> bool {
    source != LOCAL_SOURCE
}

impl Applied {
    pub fn was_live(&self) -> bool {
        self.prior.is_some()
    }
}

/// A row a range delete removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub id: String,
    pub prior: Prior,
}

/// One row as `verify` and `prove` read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRow {
    pub id: String,
    pub source: String,
    pub content_hash: String,
    /// The stored payload still hashes to `content_hash`.
    pub payload_ok: bool,
    pub redis_ttl_ms: Option<u64>,
}

/// How a batch's outcome moves the Merkle digests: every applied op takes its prior leaf
/// out, every applied put adds its new one. (A replay applies nothing; a delete of an absent
/// id has no prior: both leave the digests alone.)
pub fn merkle_delta(ops: &[Op], applied: &[Applied]) -> Delta {
    let mut delta = Delta::default();
    for (op, outcome) in ops.iter().zip(applied).filter(|(_, a)| a.applied) {
        if let Some(prior) = &outcome.prior {
            delta.remove(&prior.source, op.id(), &prior.content_hash);
        }
        if let Op::Put(item) = op {
            delta.add(item.source(), item.id(), item.content_hash());
        }
    }
    delta
}

/// The durable store itself: the batch write, point reads, keyset pagination and the clock.
/// A write-ahead log in front of SQL, or another SQL dialect, starts here.
#[async_trait]
pub trait DurableStore: Send + Sync {
    /// Applies `ops` (distinct ids) in one transaction and returns, per op, what happened.
    async fn apply(&self, ops: &[Op]) -> Result<Vec<Applied>>;

    /// Up to `limit` live ids after `after`, in id order (keyset pagination).
    async fn ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>>;

    async fn get(&self, id: &str) -> Result<Option<SyncItem>>;

    /// One answer per id, in order.
    async fn get_many(&self, ids: &[&str]) -> Result<Vec<Option<SyncItem>>>;

    async fn contains(&self, id: &str) -> Result<bool>;

    /// The highest version stored (rows and tombstones), so the engine's clock never goes
    /// behind what is already written.
    async fn max_version(&self) -> Result<u64>;

    /// The highest version written by `source` (for the sidecar: last offset + 1).
    async fn source_version(&self, source: &str) -> Result<Option<u64>>;

    /// [`DurableStore::source_version`] of each of `sources`, in order (the SQL tier reads
    /// them in one query: a checkpoint reads every partition it seals).
    async fn source_versions(&self, sources: &[String]) -> Result<Vec<Option<u64>>> {
        let mut versions = Vec::with_capacity(sources.len());
        for source in sources {
            versions.push(self.source_version(source).await?);
        }
        Ok(versions)
    }

    /// The largest payload the backend accepts in one row, if it has a limit.
    fn payload_limit(&self) -> Option<usize>;
}

/// Reads and deletes by id prefix and by state, and state changes.
#[async_trait]
pub trait RangeStore: Send + Sync {
    /// Items whose id starts with `prefix` (byte-wise, `%` `_` `\` are plain bytes), by id.
    async fn scan_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<SyncItem>>;

    async fn count_prefix(&self, prefix: &str) -> Result<u64>;

    /// Deletes (tombstones) every item under `prefix` older than `version`; returns them.
    async fn delete_prefix(&self, prefix: &str, version: u64) -> Result<Vec<Removed>>;

    async fn get_by_state(&self, state: &str, limit: usize) -> Result<Vec<SyncItem>>;

    async fn count_by_state(&self, state: &str) -> Result<u64>;

    /// Deletes (tombstones) every item in `state` older than `version`; returns them.
    async fn delete_by_state(&self, state: &str, version: u64) -> Result<Vec<Removed>>;

    /// Sets the state of a live item older than `version`; false when there is none.
    async fn set_state(&self, id: &str, state: &str, version: u64) -> Result<bool>;
}

/// Search's executor on this tier (`crate::search`): a superset of the matches.
#[async_trait]
pub trait SearchCandidates: Send + Sync {
    /// JSON items that may match `query` (a superset: the caller applies `Query::matches`).
    async fn search_candidates(&self, query: &crate::search::Query) -> Result<Vec<SyncItem>>;
}

/// The Merkle digests committed with the rows, and the rows `verify` and `prove` read.
#[async_trait]
pub trait StateRootStore: Send + Sync {
    /// The partitions that have Merkle digests stored.
    async fn merkle_partitions(&self) -> Result<Vec<String>>;

    /// The digests stored for `partition` (committed with the rows; empty if none).
    async fn merkle_digest(&self, partition: &str) -> Result<PartitionDigest>;

    /// [`StateRootStore::merkle_digest`] of each of `partitions`, in order (the SQL tier reads
    /// them in one query).
    async fn merkle_digests(&self, partitions: &[String]) -> Result<Vec<PartitionDigest>> {
        let mut digests = Vec::with_capacity(partitions.len());
        for partition in partitions {
            digests.push(self.merkle_digest(partition).await?);
        }
        Ok(digests)
    }

    /// Overwrites the stored digests of `partition` (repair: make them describe the rows).
    async fn replace_merkle_digest(&self, partition: &str, digest: &PartitionDigest) -> Result<()>;

    /// Up to `limit` rows after `after`, in id order, with their payload re-hashed.
    async fn leaves_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<LeafRow>>;

    /// The row of `id`, if live.
    async fn leaf_row(&self, id: &str) -> Result<Option<LeafRow>>;
}

/// The ids Redis may be wrong about, kept durably so a repair survives a restart.
#[async_trait]
pub trait RepairMarks: Send + Sync {
    /// Records that Redis may hold something else than this tier for `ids`
    /// (`sync_redis_repairs`), so the repair survives a restart.
    async fn mark_redis_repairs(&self, ids: &[&str]) -> Result<()>;

    /// Up to `limit` repair marks after `after`, in id order.
    async fn redis_repairs(&self, after: Option<&str>, limit: usize) -> Result<Vec<RepairMark>>;

    /// Deletes repair marks: each only if it was not marked again since it was read (`marks`
    /// as read), or whatever its count (`marks: None`).
    async fn clear_redis_repairs(&self, done: &[RepairMark]) -> Result<()>;
}

/// Everything the engine needs of its L3: the five roles above, implemented by [`sql::SqlTier`]
/// and the in-memory [`memory::MemoryTier`]. Code that needs one role takes that trait.
pub trait DurableTier:
    DurableStore + RangeStore + SearchCandidates + StateRootStore + RepairMarks
{
}

impl<T> DurableTier for T where
    T: DurableStore + RangeStore + SearchCandidates + StateRootStore + RepairMarks
{
}

/// One id Redis may be wrong about, and how often it was marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairMark {
    pub id: String,
    pub marks: Option<u64>,
}

/// The smallest byte string greater than every string starting with `prefix`, or `None`
/// when there is none (empty prefix or all `0xFF`). `id >= prefix AND id < bound` is the
/// prefix scan: exact, literal, and served by the primary key.
pub fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut bound = prefix.to_vec();
    while let Some(last) = bound.pop() {
        if last < 0xFF {
            bound.push(last + 1);
            return Some(bound);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(source: &str, version: u64) -> Op {
        Op::Put(Arc::new(
            SyncItem::new("a".into(), b"1".to_vec())
                .with_version(version)
                .with_source(Arc::from(source)),
        ))
    }

    fn at(source: &str, version: u64) -> Option<Stored<'_>> {
        Some(Stored { source, version })
    }

    #[test]
    fn library_writes_apply_when_newer_than_the_row() {
        assert!(decide(&put("local", 5), at("local", 4), None, None).applied);
        assert!(!decide(&put("local", 4), at("local", 4), None, None).applied);
        assert!(decide(&put("local", 4), at("local", 4), None, None).current);
        assert!(!decide(&put("local", 3), at("local", 4), None, None).applied);
        assert!(decide(&put("local", 1), None, None, None).applied);
    }

    #[test]
    fn partition_writes_apply_unless_their_partition_committed_them() {
        // the id moved from partition 0 (offset 999) to partition 1 (offset 2): it applies
        let moved = decide(&put("in/1", 3), at("in/0", 1000), Some(2), None);
        assert!(moved.applied);
        assert_eq!(moved.progress_before, Some(2));
        // a replay of partition 0 after that changes nothing
        assert!(!decide(&put("in/0", 1000), at("in/1", 3), Some(1000), None).applied);
        // exactly what is stored: a replay, and current (Redis is written again)
        let same = decide(&put("in/1", 3), at("in/1", 3), Some(3), None);
        assert!(!same.applied && same.current);
        // no progress row yet: a row of the same partition still counts as committed
        assert!(!decide(&put("in/1", 3), at("in/1", 5), None, None).applied);
        assert_eq!(
            decide(&put("in/1", 6), at("in/1", 5), None, None).progress_before,
            Some(0)
        );
    }

    #[test]
    fn upper_bound() {
        assert_eq!(prefix_upper_bound(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_upper_bound(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_upper_bound(b"\xff\xff"), None);
        assert_eq!(prefix_upper_bound(b""), None);
        assert_eq!(prefix_upper_bound(b"a%"), Some(b"a&".to_vec()));
    }
}
