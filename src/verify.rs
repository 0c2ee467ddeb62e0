//! `verify`: recompute every partition's state root from the SQL rows and hold each tier
//! against it.
//!
//! ```text
//! SQL rows (keyset pages) ─► per row: payload re-hashed, leaf into the recomputed digests,
//!                            Redis probed for the same ids (one pipeline per page)
//! recomputed digests ─► vs stored digests (sync_merkle_buckets)  → SQL changed after commit
//!                    ─► vs Redis mirror (items cached without TTL) → Redis drifted
//! Redis SCAN ─► keys SQL does not have                          → strays
//! ```
//!
//! Which tier is wrong: SQL is the ground truth, so a Redis copy that differs is Redis's
//! fault — unless the row's bucket no longer matches the digests committed with it, which
//! means the row itself changed outside the engine (then Redis holds the committed value and
//! SQL is named). `repair` makes Redis equal SQL for every named id, rewrites the mirror, and
//! re-anchors the stored digests of partitions whose rows changed (SQL stays the truth; the
//! root then differs from older checkpoints, which `sync-engine verify` reports).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;

use serde::Serialize;

use crate::error::Result;
use crate::merkle::{leaf, PartitionDigest, StateRoot};
use crate::tier::cache::{Cache, CacheWrite};
use crate::tier::redis::{Probe, RedisTier};
use crate::tier::{DurableStore, LeafRow, StateRootStore};

/// Rows per page (and ids per Redis pipeline).
const PAGE: usize = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Sql,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The stored payload no longer hashes to its `content_hash` (not repairable: restore or
    /// replay the row).
    PayloadMismatch,
    /// The row changed after its commit (its bucket no longer matches the committed digests).
    RowChanged,
    /// The row was deleted outside the engine (Redis still holds the committed value).
    RowMissing,
    /// Redis lacks an item SQL caches there without TTL.
    MissingInRedis,
    /// Redis holds other content than SQL.
    HashDiffers,
    /// Redis holds a key SQL has no row for, without TTL (cache-only items have one).
    Stray,
    /// Redis holds an item SQL routes past Redis.
    NotRoutedToRedis,
}

/// One id that is not what it should be, and the tier to blame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    pub id: String,
    pub partition: Option<String>,
    pub tier: Tier,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    pub partition: String,
    /// From the rows, now.
    pub computed: StateRoot,
    /// From the digests committed with the rows.
    pub stored: StateRoot,
    pub stored_buckets_diverging: Vec<u8>,
    /// From Redis's mirror, compared with the rows cached without TTL (None: no Redis).
    pub mirror_buckets_diverging: Option<Vec<u8>>,
}

impl PartitionReport {
    pub fn is_ok(&self) -> bool {
        self.stored_buckets_diverging.is_empty()
            && self
                .mirror_buckets_diverging
                .as_ref()
                .is_none_or(|b| b.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub rows: u64,
    pub redis_keys_scanned: Option<u64>,
    pub partitions: Vec<PartitionReport>,
    pub divergences: Vec<Divergence>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.divergences.is_empty() && self.partitions.iter().all(PartitionReport::is_ok)
    }

    pub fn partition(&self, name: &str) -> Option<&PartitionReport> {
        self.partitions.iter().find(|p| p.partition == name)
    }
}

/// What `repair` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepairSummary {
    pub redis_rewritten: u64,
    pub redis_deleted: u64,
    pub mirrors_reset: u64,
    /// Partitions whose stored digests were re-anchored to their rows.
    pub digests_reanchored: Vec<String>,
}

/// A Redis copy that differs from SQL, classified once the bucket comparison is known.
struct Suspect {
    id: String,
    partition: String,
    bucket: u8,
    kind: Kind,
}

pub(crate) async fn verify(
    tier: &(impl StateRootStore + DurableStore + ?Sized),
    redis: Option<&RedisTier>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport> {
    let mut recomputed = Recomputed::default();
    let mut divergences = Vec::new();
    let mut suspects: Vec<Suspect> = Vec::new();
    let ids_seen = std::collections::hash_map::RandomState::new();
    let mut in_sql: HashSet<u64> = HashSet::new();
    let mut rows = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = tier.leaves_after(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        let probes = match redis {
            Some(redis) => {
                let ids: Vec<&str> = page.iter().map(|r| r.id.as_str()).collect();
                Some(redis.probe(&ids).await?)
            }
            None => None,
        };
        for (i, row) in page.iter().enumerate() {
            rows += 1;
            in_sql.insert(ids_seen.hash_one(&row.id));
            recomputed.add(row);
            if !row.payload_ok {
                divergences.push(Divergence {
                    id: row.id.clone(),
                    partition: Some(row.source.clone()),
                    tier: Tier::Sql,
                    kind: Kind::PayloadMismatch,
                });
            }
            if let Some(probes) = &probes {
                if let Some(kind) = redis_fault(row, probes[i].as_ref()) {
                    suspects.push(Suspect {
                        id: row.id.clone(),
                        partition: row.source.clone(),
                        bucket: leaf(&row.id, &row.content_hash)[0],
                        kind,
                    });
                }
            }
        }
        progress(rows);
    }

    let mut partitions: Vec<String> = tier.merkle_partitions().await?;
    let Recomputed {
        all: computed,
        mirrored: expected_mirror,
    } = recomputed;
    partitions.extend(computed.keys().cloned());
    partitions.sort();
    partitions.dedup();
    let mut reports = Vec::with_capacity(partitions.len());
    let mut changed_buckets: HashMap<String, HashSet<u8>> = HashMap::new();
    for partition in &partitions {
        let stored = tier.merkle_digest(partition).await?;
        let ours = computed.get(partition).cloned().unwrap_or_default();
        let diverging = ours.diff(&stored);
        changed_buckets.insert(partition.clone(), diverging.iter().copied().collect());
        let mirror_buckets_diverging = match redis {
            Some(redis) => {
                let mirror = redis.mirror(partition).await?;
                let expected = expected_mirror.get(partition).cloned().unwrap_or_default();
                Some(mirror.diff(&expected))
            }
            None => None,
        };
        reports.push(PartitionReport {
            partition: partition.clone(),
            computed: StateRoot::of(partition, &ours),
            stored: StateRoot::of(partition, &stored),
            stored_buckets_diverging: diverging,
            mirror_buckets_diverging,
        });
    }
    let row_changed = |partition: &str, bucket: u8| {
        changed_buckets
            .get(partition)
            .is_some_and(|b| b.contains(&bucket))
    };
    for s in suspects {
        let (tier, kind) = if s.kind == Kind::HashDiffers && row_changed(&s.partition, s.bucket) {
            (Tier::Sql, Kind::RowChanged)
        } else {
            (Tier::Redis, s.kind)
        };
        divergences.push(Divergence {
            id: s.id,
            partition: Some(s.partition),
            tier,
            kind,
        });
    }

    let mut redis_keys_scanned = None;
    if let Some(redis) = redis {
        let mut scanned = 0u64;
        let mut cursor = 0;
        loop {
            let (next, ids) = redis.scan_ids("", cursor).await?;
            scanned += ids.len() as u64;
            let unknown: Vec<&str> = ids
                .iter()
                .filter(|id| !in_sql.contains(&ids_seen.hash_one(id.as_str())))
                .map(String::as_str)
                .collect();
            // a key SQL does not have: confirm against SQL itself (the page it was missing
            // from may have been read before a concurrent write)
            for (id, probe) in unknown.iter().zip(redis.probe(&unknown).await?) {
                let Some(probe) = probe else { continue };
                if probe.pttl > 0 || tier.contains(id).await? {
                    continue; // cache-only item (it has a TTL), or written since
                }
                let partition = probe.partition().map(str::to_string);
                let bucket = probe
                    .membership
                    .as_deref()
                    .and_then(|m| u8::from_str_radix(m.get(..2)?, 16).ok());
                let deleted_from_sql = match (&partition, bucket) {
                    (Some(p), Some(b)) => row_changed(p, b),
                    _ => false,
                };
                divergences.push(Divergence {
                    id: id.to_string(),
                    partition,
                    tier: if deleted_from_sql {
                        Tier::Sql
                    } else {
                        Tier::Redis
                    },
                    kind: if deleted_from_sql {
                        Kind::RowMissing
                    } else {
                        Kind::Stray
                    },
                });
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        redis_keys_scanned = Some(scanned);
    }
    divergences.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(VerifyReport {
        rows,
        redis_keys_scanned,
        partitions: reports,
        divergences,
    })
}

/// What is wrong with Redis's copy of `row`, if anything.
fn redis_fault(row: &LeafRow, probe: Option<&Probe>) -> Option<Kind> {
    match (row.redis_ttl_ms, probe) {
        (None, Some(_)) => Some(Kind::NotRoutedToRedis),
        (None, None) => None,
        (Some(0), None) => Some(Kind::MissingInRedis),
        // cached with a TTL: it may have expired
        (Some(_), None) => None,
        (Some(_), Some(p)) if p.hash.as_deref() != Some(row.content_hash.as_str()) => {
            Some(Kind::HashDiffers)
        }
        (Some(_), Some(_)) => None,
    }
}

pub(crate) async fn repair(
    tier: &(impl StateRootStore + DurableStore + ?Sized),
    redis: Option<&RedisTier>,
    report: &VerifyReport,
) -> Result<RepairSummary> {
    let mut summary = RepairSummary::default();
    // the digests of the rows, read once if needed at all
    let mut rows: Option<Recomputed> = None;
    if let Some(redis) = redis {
        // a row whose payload no longer matches its hash must not overwrite the good copy
        let ids: Vec<&str> = report
            .divergences
            .iter()
            .filter(|d| d.kind != Kind::PayloadMismatch)
            .map(|d| d.id.as_str())
            .collect();
        let mut items = Vec::new();
        for chunk in ids.chunks(PAGE) {
            items.extend(tier.get_many(chunk).await?);
        }
        let writes: Vec<CacheWrite> = ids
            .iter()
            .zip(&items)
            .map(|(id, item)| CacheWrite::from_row(id, item.as_ref()))
            .collect();
        for w in &writes {
            match w {
                CacheWrite::Put { .. } => summary.redis_rewritten += 1,
                CacheWrite::Remove { .. } => summary.redis_deleted += 1,
            }
        }
        redis.write(&writes).await?;
        // out-of-band changes (a key deleted by hand) leave the mirror off; Redis now
        // equals SQL, so the mirror is what SQL says it should be
        let mirrors = &rows.get_or_insert(Recomputed::scan(tier).await?).mirrored;
        for p in &report.partitions {
            let expected = mirrors.get(&p.partition).cloned().unwrap_or_default();
            if redis.mirror(&p.partition).await? != expected {
                redis.set_mirror(&p.partition, &expected).await?;
                summary.mirrors_reset += 1;
            }
        }
    }
    let changed: Vec<&str> = report
        .partitions
        .iter()
        .filter(|p| !p.stored_buckets_diverging.is_empty())
        .map(|p| p.partition.as_str())
        .collect();
    if !changed.is_empty() {
        let digests = match rows {
            Some(rows) => rows.all,
            None => Recomputed::scan(tier).await?.all,
        };
        for partition in changed {
            let digest = digests.get(partition).cloned().unwrap_or_default();
            tier.replace_merkle_digest(partition, &digest).await?;
            summary.digests_reanchored.push(partition.to_string());
        }
    }
    Ok(summary)
}

type Digests = BTreeMap<String, PartitionDigest>;

/// Digests recomputed from SQL rows: of every partition, and of the mirror Redis should hold
/// (the rows cached there without TTL).
#[derive(Default)]
struct Recomputed {
    all: Digests,
    mirrored: Digests,
}

impl Recomputed {
    fn add(&mut self, row: &LeafRow) {
        let add = |digests: &mut Digests| {
            digests
                .entry(row.source.clone())
                .or_default()
                .add(&row.id, &row.content_hash)
        };
        add(&mut self.all);
        if row.redis_ttl_ms == Some(0) {
            add(&mut self.mirrored);
        }
    }

    /// A pass over every row.
    async fn scan(tier: &(impl StateRootStore + ?Sized)) -> Result<Recomputed> {
        let mut recomputed = Recomputed::default();
        let mut after: Option<String> = None;
        loop {
            let page = tier.leaves_after(after.as_deref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            page.iter().for_each(|row| recomputed.add(row));
        }
        Ok(recomputed)
    }
}
