//! The L3 cuckoo filter seen from the engine: reads of absent ids skip the durable tier, and
//! present ids are never hidden — before the filter is built, while it is rebuilt, after
//! deletes and after a restart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sync_engine::merkle::PartitionDigest;
use sync_engine::search::Query;
use sync_engine::tier::memory::MemoryTier;
use sync_engine::tier::{
    Applied, DurableStore, LeafRow, Op, RangeStore, Removed, RepairMark, RepairMarks,
    SearchCandidates, StateRootStore,
};
use sync_engine::{Result, SyncEngine, SyncEngineConfig, SyncItem};
use tokio::sync::watch;

/// The in-memory tier, counting the point reads that reach it.
#[derive(Default)]
struct Counting {
    inner: MemoryTier,
    reads: AtomicUsize,
}

#[async_trait]
impl DurableStore for Counting {
    async fn apply(&self, ops: &[Op]) -> Result<Vec<Applied>> {
        self.inner.apply(ops).await
    }

    async fn ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.inner.ids_after(after, limit).await
    }

    async fn get(&self, id: &str) -> Result<Option<SyncItem>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get(id).await
    }

    async fn get_many(&self, ids: &[&str]) -> Result<Vec<Option<SyncItem>>> {
        self.reads.fetch_add(ids.len(), Ordering::SeqCst);
        self.inner.get_many(ids).await
    }

    async fn contains(&self, id: &str) -> Result<bool> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.contains(id).await
    }

    async fn max_version(&self) -> Result<u64> {
        self.inner.max_version().await
    }

    async fn source_version(&self, source: &str) -> Result<Option<u64>> {
        self.inner.source_version(source).await
    }

    fn payload_limit(&self) -> Option<usize> {
        None
    }
}

#[async_trait]
impl RangeStore for Counting {
    async fn scan_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<SyncItem>> {
        self.inner.scan_prefix(prefix, limit).await
    }

    async fn count_prefix(&self, prefix: &str) -> Result<u64> {
        self.inner.count_prefix(prefix).await
    }

    async fn delete_prefix(&self, prefix: &str, version: u64) -> Result<Vec<Removed>> {
        self.inner.delete_prefix(prefix, version).await
    }

    async fn get_by_state(&self, state: &str, limit: usize) -> Result<Vec<SyncItem>> {
        self.inner.get_by_state(state, limit).await
    }

    async fn count_by_state(&self, state: &str) -> Result<u64> {
        self.inner.count_by_state(state).await
    }

    async fn delete_by_state(&self, state: &str, version: u64) -> Result<Vec<Removed>> {
        self.inner.delete_by_state(state, version).await
    }

    async fn set_state(&self, id: &str, state: &str, version: u64) -> Result<bool> {
        self.inner.set_state(id, state, version).await
    }
}

#[async_trait]
impl SearchCandidates for Counting {
    async fn search_candidates(&self, query: &Query) -> Result<Vec<SyncItem>> {
        self.inner.search_candidates(query).await
    }
}

#[async_trait]
impl StateRootStore for Counting {
    async fn merkle_partitions(&self) -> Result<Vec<String>> {
        self.inner.merkle_partitions().await
    }

    async fn merkle_digest(&self, partition: &str) -> Result<PartitionDigest> {
        self.inner.merkle_digest(partition).await
    }

    async fn replace_merkle_digest(&self, p: &str, d: &PartitionDigest) -> Result<()> {
        self.inner.replace_merkle_digest(p, d).await
    }

    async fn leaves_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<LeafRow>> {
        self.inner.leaves_after(after, limit).await
    }

    async fn leaf_row(&self, id: &str) -> Result<Option<LeafRow>> {
        self.inner.leaf_row(id).await
    }
}

#[async_trait]
impl RepairMarks for Counting {
    async fn mark_redis_repairs(&self, ids: &[&str]) -> Result<()> {
        self.inner.mark_redis_repairs(ids).await
    }

    async fn redis_repairs(&self, after: Option<&str>, limit: usize) -> Result<Vec<RepairMark>> {
        self.inner.redis_repairs(after, limit).await
    }

    async fn clear_redis_repairs(&self, done: &[RepairMark]) -> Result<()> {
        self.inner.clear_redis_repairs(done).await
    }
}

async fn engine(tier: &Arc<Counting>) -> SyncEngine {
    let config = SyncEngineConfig::default();
    let (_tx, rx) = watch::channel(config.clone());
    let mut engine = SyncEngine::with_tier(config, rx, tier.clone());
    engine.start().await.unwrap();
    engine
}

async fn until_ready(engine: &SyncEngine) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !engine.l3_filter_ready() {
        assert!(Instant::now() < deadline, "the filter was never built");
        // the writer starts rebuilds between commands
        engine.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn item(i: usize) -> SyncItem {
    SyncItem::new(format!("item:{i}"), format!("v{i}").into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_ids_skip_the_tier_and_present_ones_are_never_hidden() {
    let tier = Arc::new(Counting::default());
    let engine = engine(&tier).await;
    for i in 0..2000 {
        engine.submit(item(i)).await.unwrap();
    }
    engine.flush().await.unwrap();
    until_ready(&engine).await;
    engine.clear_l1();

    let before = tier.reads.load(Ordering::SeqCst);
    for i in 0..2000 {
        assert!(engine.get(&format!("absent:{i}")).await.unwrap().is_none());
    }
    let skipped_reads = tier.reads.load(Ordering::SeqCst) - before;
    assert!(
        skipped_reads < 200,
        "{skipped_reads} of 2000 absent reads reached the tier"
    );

    for i in 0..2000 {
        assert!(
            engine.contains(&format!("item:{i}")).await.unwrap(),
            "item:{i} hidden"
        );
    }
    // deletes by id, prefix and state leave the filter, without hiding anything else
    for i in (0..2000).step_by(2) {
        engine.delete(&format!("item:{i}")).await.unwrap();
    }
    engine
        .submit(SyncItem::new("p:1".into(), b"x".to_vec()).with_state("s"))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    assert_eq!(engine.delete_prefix("p:").await.unwrap(), 1);
    engine.clear_l1();
    for i in 0..2000 {
        let found = engine.get(&format!("item:{i}")).await.unwrap().is_some();
        assert_eq!(found, i % 2 == 1, "item:{i}");
    }
    assert!(engine.l3_filter_ready());
    engine.shutdown().await;

    // a restarted engine rebuilds the filter from the tier; until then it answers "maybe"
    let engine = self::engine(&tier).await;
    for i in (1..2000).step_by(2) {
        assert!(
            engine.get(&format!("item:{i}")).await.unwrap().is_some(),
            "item:{i} after restart"
        );
    }
    until_ready(&engine).await;
    engine.clear_l1();
    for i in (1..2000).step_by(2) {
        assert!(
            engine.get(&format!("item:{i}")).await.unwrap().is_some(),
            "item:{i} after rebuild"
        );
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_rebuild_are_not_lost() {
    let tier = Arc::new(Counting::default());
    // 30k items so the first rebuild (3 pages) overlaps the writes below
    let seed = engine(&tier).await;
    for i in 0..30_000 {
        seed.submit(item(i)).await.unwrap();
    }
    seed.shutdown().await;

    let engine = engine(&tier).await;
    for i in 30_000..32_000 {
        engine.submit(item(i)).await.unwrap();
        if i % 100 == 0 {
            engine
                .delete(&format!("item:{}", i - 30_000))
                .await
                .unwrap();
        }
    }
    engine.flush().await.unwrap();
    until_ready(&engine).await;
    engine.clear_l1();
    for i in 0..32_000 {
        let deleted = i < 2_000 && (i + 30_000) % 100 == 0;
        let found = engine.get(&format!("item:{i}")).await.unwrap().is_some();
        assert_eq!(found, !deleted, "item:{i}");
    }
    engine.shutdown().await;
}
