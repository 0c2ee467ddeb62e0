//! The batch transaction of the SQL tier.
//!
//! One batch = one transaction:
//! 1. read (and on MySQL lock) the stored version and source of every id in the batch, live or
//!    tombstone, and the progress of every sidecar partition in it;
//! 2. keep the ops that are not replays ([`crate::tier::decide`]); the rest change nothing;
//! 3. upsert the puts (chunked by rows and bytes), delete + tombstone the deletes;
//! 4. move the Merkle digests of the touched partitions (`merkle_delta`), under row locks;
//! 5. record the highest version per source (a partition's progress);
//! 6. commit.
//!
//! The upserts carry a guard themselves as well (a newer version, or another source), so even
//! a writer that bypassed the locks could never move a row backwards within one source.
//!
//! Each transaction is measured: `sync_engine_sql_transaction_duration_seconds` when it
//! commits, `sync_engine_sql_errors_total{class}` when it fails (once per batch, not per row).

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::conn::SqlTier;
use super::dialect::{
    marks, record_source_sql, upsert_items_sql, upsert_tombstones_sql, IDS_PER_STATEMENT,
    ROWS_PER_STATEMENT,
};
use super::rows::on_pool;
use crate::error::Result;
use crate::item::SyncItem;
use crate::merkle::{Bucket, Delta};
use crate::tier::{decide, is_partition, merkle_delta, Applied, Op, Prior, Stored};

/// Splits puts into statements of at most [`ROWS_PER_STATEMENT`] rows and `max_bytes` bytes.
fn chunk_by_bytes<'a>(puts: &[&'a SyncItem], max_bytes: usize) -> Vec<Vec<&'a SyncItem>> {
    let mut chunks = Vec::new();
    let mut current: Vec<&SyncItem> = Vec::new();
    let mut bytes = 0;
    for item in puts {
        let size = item.content().len() + item.id().len() + item.state().len() + 128;
        if !current.is_empty() && (current.len() == ROWS_PER_STATEMENT || bytes + size > max_bytes)
        {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// The stored buckets `delta` touches, moved by it: `(partition, bucket, new value)`.
pub(super) fn moved_buckets(
    delta: &Delta,
    stored: &HashMap<(String, u8), Bucket>,
) -> Vec<(String, u8, Bucket)> {
    delta
        .changes()
        .filter(|(_, _, count, xor)| *count != 0 || xor.iter().any(|b| *b != 0))
        .map(|(p, b, count, xor)| {
            let before = stored.get(&(p.to_string(), b)).copied().unwrap_or_default();
            (p.to_string(), b, Delta::apply_to(before, count, xor))
        })
        .collect()
}

/// Reads (locking, on MySQL) the buckets of the partitions `$delta` touches, moves them and
/// writes them back, inside the open transaction `$tx`.
macro_rules! store_delta {
    ($tx:ident, $dialect:expr, $delta:expr) => {{
        let delta: crate::merkle::Delta = $delta;
        if !delta.is_empty() {
            let partitions = delta.partitions();
            let mut stored: std::collections::HashMap<(String, u8), crate::merkle::Bucket> =
                std::collections::HashMap::new();
            for chunk in partitions.chunks(100) {
                let sql = format!(
                    "SELECT source, bucket, item_count, digest FROM sync_merkle_buckets \
                     WHERE source IN ({}){}",
                    crate::tier::sql::dialect::marks(chunk.len()),
                    $dialect.lock_clause()
                );
                let mut query = sqlx::query(&sql);
                for p in chunk {
                    query = query.bind(p.as_bytes());
                }
                for row in query.fetch_all(&mut *$tx).await? {
                    let source: Vec<u8> = row.try_get(0)?;
                    let bucket: i64 = row.try_get(1)?;
                    let count: i64 = row.try_get(2)?;
                    let digest: String = row.try_get(3)?;
                    let digest = crate::merkle::decode_hash(&digest).ok_or_else(|| {
                        sqlx::Error::Decode(
                            "sync_merkle_buckets.digest is not 64 hex digits".into(),
                        )
                    })?;
                    stored.insert(
                        (String::from_utf8_lossy(&source).into_owned(), bucket as u8),
                        crate::merkle::Bucket {
                            count: count.max(0) as u64,
                            digest,
                        },
                    );
                }
            }
            let moved = crate::tier::sql::write::moved_buckets(&delta, &stored);
            for chunk in moved.chunks(crate::tier::sql::dialect::ROWS_PER_STATEMENT) {
                let sql = crate::tier::sql::dialect::upsert_buckets_sql($dialect, chunk.len());
                let mut query = sqlx::query(&sql);
                for (p, b, bucket) in chunk {
                    query = query
                        .bind(p.as_bytes())
                        .bind(*b as i16)
                        .bind(bucket.count as i64)
                        .bind(hex::encode(bucket.digest));
                }
                query.execute(&mut *$tx).await?;
            }
        }
    }};
}
pub(super) use store_delta;

pub(super) async fn apply(tier: &SqlTier, ops: &[Op]) -> Result<Vec<Applied>> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    let started = std::time::Instant::now();
    let result = transaction(tier, ops).await;
    match &result {
        Ok(_) => metrics::histogram!("sync_engine_sql_transaction_duration_seconds")
            .record(started.elapsed()),
        Err(e) => {
            metrics::counter!("sync_engine_sql_errors_total", "class" => e.class().as_str())
                .increment(1);
        }
    }
    result
}

async fn transaction(tier: &SqlTier, ops: &[Op]) -> Result<Vec<Applied>> {
    let dialect = tier.dialect;
    let ids: Vec<&[u8]> = ops.iter().map(|op| op.id().as_bytes()).collect();
    on_pool!(tier, pool => {
        let mut tx = pool.begin().await?;

        // 1. what is stored now: the newest version and source per id, the live rows, and the
        //    progress of every partition in the batch
        let mut stored: HashMap<Vec<u8>, (i64, String)> = HashMap::new();
        let mut tombstoned: HashSet<Vec<u8>> = HashSet::new();
        let mut live: HashMap<Vec<u8>, Prior> = HashMap::new();
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let select = |columns: &str, table: &str| {
                format!(
                    "SELECT {columns} FROM {table} WHERE id IN ({}){}",
                    marks(chunk.len()),
                    dialect.lock_clause()
                )
            };
            let sql = select("id, version, source, content_hash, redis_ttl_ms", "sync_items");
            let query = chunk.iter().fold(sqlx::query(&sql), |q, id| q.bind(*id));
            for row in query.fetch_all(&mut *tx).await? {
                let id: Vec<u8> = row.try_get(0)?;
                let source: Vec<u8> = row.try_get(2)?;
                let source = String::from_utf8_lossy(&source).into_owned();
                let ttl: Option<i64> = row.try_get(4)?;
                stored.insert(id.clone(), (row.try_get(1)?, source.clone()));
                live.insert(id, Prior {
                    source,
                    content_hash: row.try_get(3)?,
                    redis_ttl_ms: ttl.map(|ms| ms.max(0) as u64),
                });
            }
            let sql = select("id, version, source", "sync_tombstones");
            let query = chunk.iter().fold(sqlx::query(&sql), |q, id| q.bind(*id));
            for row in query.fetch_all(&mut *tx).await? {
                let id: Vec<u8> = row.try_get(0)?;
                let version: i64 = row.try_get(1)?;
                let source: Vec<u8> = row.try_get(2)?;
                tombstoned.insert(id.clone());
                let newer = stored.get(&id).is_none_or(|(v, _)| version > *v);
                if newer {
                    stored.insert(id, (version, String::from_utf8_lossy(&source).into_owned()));
                }
            }
        }
        let mut partitions: Vec<&str> = ops
            .iter()
            .map(|op| &**op.source())
            .filter(|s| is_partition(s))
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut progress: HashMap<String, u64> = HashMap::new();
        for chunk in partitions.chunks(IDS_PER_STATEMENT) {
            let sql = format!(
                "SELECT source, version FROM sync_sources WHERE source IN ({}){}",
                marks(chunk.len()),
                dialect.lock_clause()
            );
            let query = chunk.iter().fold(sqlx::query(&sql), |q, p| q.bind(p.as_bytes()));
            for row in query.fetch_all(&mut *tx).await? {
                let source: Vec<u8> = row.try_get(0)?;
                let version: i64 = row.try_get(1)?;
                progress.insert(String::from_utf8_lossy(&source).into_owned(), version.max(0) as u64);
            }
        }

        // 2. only what is not a replay applies
        let applied: Vec<Applied> = ops
            .iter()
            .map(|op| {
                let id = op.id().as_bytes();
                let held = stored.get(id).map(|(v, source)| Stored {
                    source,
                    version: (*v).max(0) as u64,
                });
                decide(op, held, progress.get(&**op.source()).copied(), live.get(id).cloned())
            })
            .collect();
        let mut puts: Vec<&SyncItem> = Vec::new();
        let mut deletes: Vec<(&str, &str, i64)> = Vec::new();
        let mut revived: Vec<&[u8]> = Vec::new();
        let mut sources: HashMap<&str, i64> = HashMap::new();
        for (op, _) in ops.iter().zip(&applied).filter(|(_, outcome)| outcome.applied) {
            match op {
                Op::Put(item) => {
                    if tombstoned.contains(item.id().as_bytes()) {
                        revived.push(item.id().as_bytes());
                    }
                    puts.push(item);
                    let v = sources.entry(item.source()).or_default();
                    *v = (*v).max(item.version() as i64);
                }
                Op::Delete { id, version, source } => {
                    deletes.push((id, source, *version as i64));
                    let v = sources.entry(source).or_default();
                    *v = (*v).max(*version as i64);
                }
            }
        }

        // 3. puts
        for chunk in chunk_by_bytes(&puts, tier.max_statement_bytes) {
            let sql = upsert_items_sql(dialect, chunk.len());
            let mut query = sqlx::query(&sql);
            for item in chunk {
                let blob = match item.json_text() {
                    Some(_) => None,
                    None => Some(item.content()),
                };
                query = query
                    .bind(item.id().as_bytes())
                    .bind(item.json_text())
                    .bind(blob)
                    .bind(item.content_hash())
                    .bind(item.state().as_bytes())
                    .bind(item.source().as_bytes())
                    .bind(item.version() as i64)
                    .bind(item.redis_ttl_ms().map(|ms| ms as i64));
            }
            query.execute(&mut *tx).await?;
        }
        for chunk in revived.chunks(IDS_PER_STATEMENT) {
            let sql = format!("DELETE FROM sync_tombstones WHERE id IN ({})", marks(chunk.len()));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await?;
        }

        // 3b. deletes: drop the live row (if older, or of another source) and leave a tombstone
        for chunk in deletes.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM sync_items WHERE {}",
                vec!["(id = ? AND (version < ? OR source <> ?))"; chunk.len()].join(" OR ")
            );
            let mut query = sqlx::query(&sql);
            for (id, source, version) in chunk {
                query = query.bind(id.as_bytes()).bind(*version).bind(source.as_bytes());
            }
            query.execute(&mut *tx).await?;
            let sql = upsert_tombstones_sql(dialect, chunk.len());
            let mut query = sqlx::query(&sql);
            for (id, source, version) in chunk {
                query = query.bind(id.as_bytes()).bind(source.as_bytes()).bind(*version);
            }
            query.execute(&mut *tx).await?;
        }

        // 4. Merkle digests
        if tier.merkle {
            store_delta!(tx, dialect, merkle_delta(ops, &applied));
        }

        // 5. progress per source
        for (source, version) in sources {
            sqlx::query(record_source_sql(dialect))
                .bind(source.as_bytes())
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }

        tx.commit().await?;
        Ok(applied)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_rows_and_bytes() {
        let items: Vec<SyncItem> = (0..1200)
            .map(|i| SyncItem::new(format!("id{i}"), vec![b'x'; 1000]))
            .collect();
        let refs: Vec<&SyncItem> = items.iter().collect();
        let by_rows = chunk_by_bytes(&refs, usize::MAX);
        assert_eq!(
            by_rows.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![500, 500, 200]
        );
        let by_bytes = chunk_by_bytes(&refs, 120_000);
        assert!(by_bytes.iter().all(|c| c.len() * 1000 <= 120_000));
        assert!(by_bytes.len() >= 10);
        assert_eq!(by_bytes.iter().map(Vec::len).sum::<usize>(), 1200);
        // one row bigger than the limit still goes out, alone
        let big = [SyncItem::new("big".into(), vec![0; 10_000])];
        assert_eq!(chunk_by_bytes(&[&big[0]], 100).len(), 1);
    }
}
