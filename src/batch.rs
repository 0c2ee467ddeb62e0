//! A batch of writes waiting to be flushed: at most one entry per id (the newest version
//! wins), with the sizes and age that decide when it is flushed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::SyncEngineConfig;
use crate::tier::Op;

/// One accepted write and where it goes.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub op: Op,
    /// Goes to the durable tier (false: cache-only).
    pub sql: bool,
    /// Goes to Redis (false: any Redis copy is removed).
    pub redis: bool,
    /// TTL of cached copies.
    pub ttl: Option<Duration>,
}

/// When a batch is flushed: whichever limit is reached first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_age: Duration,
    pub max_count: usize,
    pub max_bytes: usize,
}

impl From<&SyncEngineConfig> for Limits {
    fn from(c: &SyncEngineConfig) -> Self {
        Limits {
            max_age: Duration::from_millis(c.batch_flush_ms),
            max_count: c.batch_flush_count,
            max_bytes: c.batch_flush_bytes,
        }
    }
}

#[derive(Default)]
pub(crate) struct Batch {
    entries: HashMap<String, Entry>,
    bytes: usize,
    oldest: Option<Instant>,
}

impl Batch {
    /// Adds a write. An entry for the same id (always of the same source: see
    /// [`Batch::must_flush_before`]) is replaced unless it has a higher version (with
    /// engine-assigned versions and offsets the later op is always the higher one).
    pub(crate) fn push(&mut self, entry: Entry) {
        self.oldest.get_or_insert_with(Instant::now);
        let id = entry.op.id().to_string();
        match self.entries.get(&id) {
            Some(old) if old.op.version() > entry.op.version() => {}
            old => {
                self.bytes -= old.map_or(0, |o| o.op.payload_len());
                self.bytes += entry.op.payload_len();
                self.entries.insert(id, entry);
            }
        }
    }

    /// Whether the batch must be flushed before `entry` joins it, because one op per id could
    /// not say what both mean:
    /// - a cache-only write after a durable one of the same id would take its place, and the
    ///   durable write would be lost;
    /// - a write of the same id from another source (an id that moved to another partition)
    ///   is decided against that source's own progress, in its own transaction.
    pub(crate) fn must_flush_before(&self, entry: &Entry) -> bool {
        self.entries.get(entry.op.id()).is_some_and(|old| {
            old.op.source() != entry.op.source()
                || (!entry.sql && old.sql && old.op.version() <= entry.op.version())
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When the batch must be flushed by age, if it holds anything.
    pub(crate) fn deadline(&self, limits: &Limits) -> Option<Instant> {
        self.oldest.map(|t| t + limits.max_age)
    }

    pub(crate) fn is_full(&self, limits: &Limits) -> bool {
        self.entries.len() >= limits.max_count || self.bytes >= limits.max_bytes
    }

    /// Empties the batch, sorted by id: rows reach the primary key in order (faster
    /// inserts) and concurrent writers lock rows in the same order (no deadlocks).
    pub(crate) fn take(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        self.oldest = None;
        let mut entries: Vec<Entry> = self.entries.drain().map(|(_, e)| e).collect();
        entries.sort_unstable_by(|a, b| a.op.id().cmp(b.op.id()));
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::SyncItem;
    use std::sync::Arc;

    fn put(id: &str, version: u64, len: usize) -> Entry {
        let item = SyncItem::new(id.into(), vec![1; len]).with_version(version);
        Entry {
            op: Op::Put(Arc::new(item)),
            sql: true,
            redis: true,
            ttl: None,
        }
    }

    fn delete(id: &str, version: u64) -> Entry {
        Entry {
            op: Op::Delete {
                id: id.into(),
                version,
                source: Arc::from("local"),
            },
            sql: true,
            redis: true,
            ttl: None,
        }
    }

    #[test]
    fn newest_op_per_id_wins() {
        let mut batch = Batch::default();
        batch.push(put("a", 1, 10));
        batch.push(delete("a", 2));
        batch.push(put("b", 3, 10));
        batch.push(put("b", 2, 99)); // an older replay does not win
        let entries = batch.take();
        assert!(matches!(entries[0].op, Op::Delete { version: 2, .. }));
        assert_eq!(entries[1].op.version(), 3);
        assert!(batch.is_empty());
    }

    #[test]
    fn another_source_or_a_cache_only_write_flushes_first() {
        let mut batch = Batch::default();
        batch.push(put("a", 900, 10));
        let mut moved = put("a", 3, 10);
        if let Op::Put(item) = &moved.op {
            moved.op = Op::Put(Arc::new((**item).clone().with_source(Arc::from("in/1"))));
        }
        assert!(batch.must_flush_before(&moved));
        let mut cache_only = put("a", 901, 10);
        cache_only.sql = false;
        assert!(batch.must_flush_before(&cache_only));
        assert!(!batch.must_flush_before(&put("a", 902, 10)));
        assert!(!batch.must_flush_before(&put("b", 1, 10)));
    }

    #[test]
    fn full_by_count_or_bytes() {
        let limits = Limits {
            max_age: Duration::from_secs(1),
            max_count: 3,
            max_bytes: 100,
        };
        let mut batch = Batch::default();
        batch.push(put("a", 1, 40));
        batch.push(put("b", 1, 40));
        assert!(!batch.is_full(&limits));
        batch.push(put("a", 2, 10)); // replaces a: 50 bytes, 2 entries
        assert!(!batch.is_full(&limits));
        batch.push(put("c", 1, 50));
        assert!(batch.is_full(&limits));
        assert!(batch.deadline(&limits).is_some());
    }
}
