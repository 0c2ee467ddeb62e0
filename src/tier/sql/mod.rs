//! L3 on MySQL/MariaDB or SQLite through sqlx: the one home of SQL. Both backends run the same
//! statements where the dialects agree; the DDL lives in `schemas/sql/<backend>/` and is
//! applied as migrations.
//!
//! | file         | holds                                                                  |
//! |--------------|------------------------------------------------------------------------|
//! | `mod.rs`     | [`SqlTier`]'s role traits (`crate::tier`): reads, ranges, states,      |
//! |              | search candidates, Merkle digests, repair marks                        |
//! | `conn.rs`    | opening it: the pool, the first connection, migrations                 |
//! | `write.rs`   | the batch transaction (the numbered steps every batch goes through)    |
//! | `dialect.rs` | every SQL text built from parts or different per backend, and search's |
//! |              | query as an SQL filter                                                 |
//! | `rows.rs`    | the pool of either backend, the item columns and their decoding       |
//! | `lookup.rs`  | what SQL holds for one id, for `sync-engine inspect`                   |
//!
//! Imports go one way: `mod.rs` → `write.rs` → `conn.rs`/`dialect.rs`/`rows.rs`; nothing
//! below imports `mod.rs` except for the [`SqlTier`] type that `conn.rs` defines.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::Row;

use self::dialect::{
    marks, record_source_sql, search_filter, upsert_buckets_sql, Dialect, SqlBind,
    IDS_PER_STATEMENT, ROWS_PER_STATEMENT,
};
use self::rows::{item_from_row, on_pool, ITEM_COLUMNS};
use self::write::store_delta;
use super::{
    prefix_upper_bound, Applied, DurableStore, LeafRow, Op, Prior, RangeStore, Removed, RepairMark,
    RepairMarks, SearchCandidates, StateRootStore,
};
use crate::error::Result;
use crate::item::{content_hash, SyncItem, LOCAL_SOURCE};
use crate::merkle::{decode_hash, Bucket, Delta, PartitionDigest};

mod conn;
mod dialect;
pub mod lookup;
mod rows;
mod write;

pub use conn::SqlTier;

impl SqlTier {
    /// Connects to `url` (`mysql://…`, `mariadb://…` or `sqlite:…`) and applies migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with_password(url, None).await
    }

    /// [`SqlTier::connect`], with a password that overrides the URL's (MySQL only). TLS is
    /// set in the URL (`ssl-mode`, `ssl-ca`, `ssl-cert`, `ssl-key`: sqlx's names).
    pub async fn connect_with_password(url: &str, password: Option<&str>) -> Result<Self> {
        let tier = Self::open(url, password).await?;
        tier.backfill_digests().await?;
        Ok(tier)
    }

    /// A database written before the Merkle digests existed has rows and no digests: compute
    /// them once from the rows. (Writers running meanwhile on an old version would make them
    /// stale; `sync-engine verify --repair` re-anchors them.)
    async fn backfill_digests(&self) -> Result<()> {
        let has_digests: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT 1 FROM sync_merkle_buckets LIMIT 1").fetch_optional(pool).await?
        });
        if has_digests.is_some() || self.ids_after(None, 1).await?.is_empty() {
            return Ok(());
        }
        tracing::info!("sync_merkle_buckets is empty but sync_items is not: computing the digests");
        let mut digests: std::collections::BTreeMap<String, PartitionDigest> = Default::default();
        let mut after: Option<String> = None;
        loop {
            let page = self.leaves_after(after.as_deref(), 10_000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for row in page {
                digests
                    .entry(row.source)
                    .or_default()
                    .add(&row.id, &row.content_hash);
            }
        }
        for (partition, digest) in &digests {
            self.replace_merkle_digest(partition, digest).await?;
        }
        Ok(())
    }

    /// Many ids in `IN (…)` lists of [`IDS_PER_STATEMENT`].
    async fn select_many(&self, ids: &[&str]) -> Result<Vec<Option<SyncItem>>> {
        let mut found: HashMap<String, SyncItem> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let sql = format!(
                "SELECT {ITEM_COLUMNS} FROM sync_items WHERE id IN ({})",
                marks(chunk.len())
            );
            on_pool!(self, pool => {
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(id.as_bytes());
                }
                for r in query.fetch_all(pool).await? {
                    let item = item_from_row!(r)?;
                    found.insert(item.id().to_string(), item);
                }
            });
        }
        Ok(ids.iter().map(|id| found.get(*id).cloned()).collect())
    }

    /// `id >= ? [AND id < ?]` for a prefix, with its binds.
    fn prefix_range(prefix: &str) -> (String, Vec<Vec<u8>>) {
        let start = prefix.as_bytes().to_vec();
        match prefix_upper_bound(prefix.as_bytes()) {
            Some(end) => ("id >= ? AND id < ?".into(), vec![start, end]),
            None => ("id >= ?".into(), vec![start]),
        }
    }

    async fn select_items(
        &self,
        filter: &str,
        binds: &[Vec<u8>],
        limit: usize,
    ) -> Result<Vec<SyncItem>> {
        let sql =
            format!("SELECT {ITEM_COLUMNS} FROM sync_items WHERE {filter} ORDER BY id LIMIT ?");
        on_pool!(self, pool => {
            let mut query = sqlx::query(&sql);
            for b in binds {
                query = query.bind(b.as_slice());
            }
            let rows = query.bind(limit.min(i64::MAX as usize) as i64).fetch_all(pool).await?;
            rows.iter().map(|r| item_from_row!(r)).collect()
        })
    }

    async fn count_items(&self, filter: &str, binds: &[Vec<u8>]) -> Result<u64> {
        let sql = format!("SELECT COUNT(*) FROM sync_items WHERE {filter}");
        let count: i64 = on_pool!(self, pool => {
            let mut query = sqlx::query_scalar(&sql);
            for b in binds {
                query = query.bind(b.as_slice());
            }
            query.fetch_one(pool).await?
        });
        Ok(count as u64)
    }

    /// Tombstones then deletes every live row matching `filter` that is older than `version`
    /// (moving the Merkle digests in the same transaction); returns the rows it deleted.
    async fn delete_where(
        &self,
        filter: &str,
        binds: &[Vec<u8>],
        version: u64,
    ) -> Result<Vec<Removed>> {
        let version = version as i64;
        let dialect = self.dialect;
        let select = format!(
            "SELECT id, source, content_hash, redis_ttl_ms FROM sync_items WHERE {filter} AND version < ?{}",
            dialect.lock_clause()
        );
        let tombstone = format!(
            "INSERT INTO sync_tombstones (id, source, version) \
             SELECT id, source, ? FROM sync_items WHERE {filter} AND version < ?{}",
            dialect.tombstone_conflict()
        );
        let delete = format!("DELETE FROM sync_items WHERE {filter} AND version < ?");
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut query = sqlx::query(&select);
            for b in binds {
                query = query.bind(b.as_slice());
            }
            let mut removed = Vec::new();
            for row in query.bind(version).fetch_all(&mut *tx).await? {
                let id: Vec<u8> = row.try_get(0)?;
                let source: Vec<u8> = row.try_get(1)?;
                let ttl: Option<i64> = row.try_get(3)?;
                removed.push(Removed {
                    id: String::from_utf8(id)
                        .map_err(|_| sqlx::Error::Decode("stored id is not UTF-8".into()))?,
                    prior: Prior {
                        source: String::from_utf8_lossy(&source).into_owned(),
                        content_hash: row.try_get(2)?,
                        redis_ttl_ms: ttl.map(|ms| ms.max(0) as u64),
                    },
                });
            }
            let mut query = sqlx::query(&tombstone).bind(version);
            for b in binds {
                query = query.bind(b.as_slice());
            }
            query.bind(version).execute(&mut *tx).await?;
            let mut query = sqlx::query(&delete);
            for b in binds {
                query = query.bind(b.as_slice());
            }
            query.bind(version).execute(&mut *tx).await?;
            let mut delta = Delta::default();
            for r in &removed {
                delta.remove(&r.prior.source, &r.id, &r.prior.content_hash);
            }
            if self.merkle {
                store_delta!(tx, dialect, delta);
            }
            sqlx::query(record_source_sql(dialect))
                .bind(LOCAL_SOURCE.as_bytes())
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(removed)
        })
    }

    async fn leaf_rows(&self, filter: &str, bind: &[u8], limit: i64) -> Result<Vec<LeafRow>> {
        let sql = format!(
            "SELECT id, source, content_hash, payload, payload_blob, redis_ttl_ms FROM sync_items \
             WHERE {filter} ORDER BY id LIMIT ?"
        );
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql).bind(bind).bind(limit).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let id: Vec<u8> = row.try_get(0)?;
                let source: Vec<u8> = row.try_get(1)?;
                let hash: String = row.try_get(2)?;
                let payload: Option<String> = row.try_get(3)?;
                let blob: Option<Vec<u8>> = row.try_get(4)?;
                let ttl: Option<i64> = row.try_get(5)?;
                let bytes: &[u8] = match (&payload, &blob) {
                    (Some(text), _) => text.as_bytes(),
                    (None, Some(b)) => b,
                    (None, None) => &[],
                };
                out.push(LeafRow {
                    id: String::from_utf8(id)
                        .map_err(|_| sqlx::Error::Decode("stored id is not UTF-8".into()))?,
                    source: String::from_utf8_lossy(&source).into_owned(),
                    payload_ok: content_hash(bytes) == hash,
                    content_hash: hash,
                    redis_ttl_ms: ttl.map(|ms| ms.max(0) as u64),
                });
            }
            Ok(out)
        })
    }
}

#[async_trait]
impl DurableStore for SqlTier {
    async fn apply(&self, ops: &[Op]) -> Result<Vec<Applied>> {
        write::apply(self, ops).await
    }

    async fn ids_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let ids: Vec<Vec<u8>> = on_pool!(self, pool => {
            let limit = limit.min(i64::MAX as usize) as i64;
            match after {
                Some(after) => sqlx::query_scalar("SELECT id FROM sync_items WHERE id > ? ORDER BY id LIMIT ?")
                    .bind(after.as_bytes())
                    .bind(limit)
                    .fetch_all(pool)
                    .await?,
                None => sqlx::query_scalar("SELECT id FROM sync_items ORDER BY id LIMIT ?")
                    .bind(limit)
                    .fetch_all(pool)
                    .await?,
            }
        });
        ids.into_iter()
            .map(|id| {
                String::from_utf8(id)
                    .map_err(|_| sqlx::Error::Decode("stored id is not UTF-8".into()).into())
            })
            .collect()
    }

    async fn get(&self, id: &str) -> Result<Option<SyncItem>> {
        Ok(self.get_many(&[id]).await?.pop().flatten())
    }

    async fn get_many(&self, ids: &[&str]) -> Result<Vec<Option<SyncItem>>> {
        self.select_many(ids).await
    }

    async fn contains(&self, id: &str) -> Result<bool> {
        let found: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT 1 FROM sync_items WHERE id = ?")
                .bind(id.as_bytes())
                .fetch_optional(pool)
                .await?
        });
        Ok(found.is_some())
    }

    async fn max_version(&self) -> Result<u64> {
        let max: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT MAX(version) FROM sync_sources").fetch_one(pool).await?
        });
        Ok(max.unwrap_or(0).max(0) as u64)
    }

    async fn source_version(&self, source: &str) -> Result<Option<u64>> {
        let mut versions = self.source_versions(&[source.to_string()]).await?;
        Ok(versions.pop().flatten())
    }

    async fn source_versions(&self, sources: &[String]) -> Result<Vec<Option<u64>>> {
        let mut found: HashMap<Vec<u8>, u64> = HashMap::new();
        for chunk in sources.chunks(IDS_PER_STATEMENT) {
            let sql = format!(
                "SELECT source, version FROM sync_sources WHERE source IN ({})",
                marks(chunk.len())
            );
            on_pool!(self, pool => {
                let mut query = sqlx::query(&sql);
                for source in chunk {
                    query = query.bind(source.as_bytes());
                }
                for row in query.fetch_all(pool).await? {
                    let source: Vec<u8> = row.try_get(0)?;
                    let version: i64 = row.try_get(1)?;
                    found.insert(source, version.max(0) as u64);
                }
            });
        }
        Ok(sources
            .iter()
            .map(|s| found.get(s.as_bytes()).copied())
            .collect())
    }

    fn payload_limit(&self) -> Option<usize> {
        match self.dialect {
            Dialect::MySql => Some(self.max_statement_bytes),
            Dialect::Sqlite => None,
        }
    }
}

#[async_trait]
impl RangeStore for SqlTier {
    async fn scan_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<SyncItem>> {
        let (filter, binds) = Self::prefix_range(prefix);
        self.select_items(&filter, &binds, limit).await
    }

    async fn count_prefix(&self, prefix: &str) -> Result<u64> {
        let (filter, binds) = Self::prefix_range(prefix);
        self.count_items(&filter, &binds).await
    }

    async fn delete_prefix(&self, prefix: &str, version: u64) -> Result<Vec<Removed>> {
        let (filter, binds) = Self::prefix_range(prefix);
        self.delete_where(&filter, &binds, version).await
    }

    async fn get_by_state(&self, state: &str, limit: usize) -> Result<Vec<SyncItem>> {
        self.select_items("state = ?", &[state.as_bytes().to_vec()], limit)
            .await
    }

    async fn count_by_state(&self, state: &str) -> Result<u64> {
        self.count_items("state = ?", &[state.as_bytes().to_vec()])
            .await
    }

    async fn delete_by_state(&self, state: &str, version: u64) -> Result<Vec<Removed>> {
        self.delete_where("state = ?", &[state.as_bytes().to_vec()], version)
            .await
    }

    async fn set_state(&self, id: &str, state: &str, version: u64) -> Result<bool> {
        let sql = format!(
            "UPDATE sync_items SET state = ?, version = ?, updated_at = {} WHERE id = ? AND version < ?",
            self.dialect.now()
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(&sql)
                .bind(state.as_bytes())
                .bind(version as i64)
                .bind(id.as_bytes())
                .bind(version as i64)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(record_source_sql(self.dialect))
                .bind(LOCAL_SOURCE.as_bytes())
                .bind(version as i64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done > 0)
        })
    }
}

#[async_trait]
impl SearchCandidates for SqlTier {
    async fn search_candidates(&self, query: &crate::search::Query) -> Result<Vec<SyncItem>> {
        let (filter, binds) = search_filter(query, self.dialect);
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM sync_items WHERE payload IS NOT NULL AND ({filter}) ORDER BY id"
        );
        on_pool!(self, pool => {
            let mut q = sqlx::query(&sql);
            for bind in &binds {
                q = match bind {
                    SqlBind::Bytes(v) => q.bind(v.as_slice()),
                    SqlBind::Text(t) => q.bind(t.as_str()),
                    SqlBind::Number(n) => q.bind(*n),
                };
            }
            let rows = q.fetch_all(pool).await?;
            rows.iter().map(|r| item_from_row!(r)).collect()
        })
    }
}

#[async_trait]
impl StateRootStore for SqlTier {
    async fn merkle_partitions(&self) -> Result<Vec<String>> {
        let sql = "SELECT DISTINCT source FROM sync_merkle_buckets ORDER BY source";
        let rows: Vec<Vec<u8>> =
            on_pool!(self, pool => sqlx::query_scalar(sql).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .collect())
    }

    async fn merkle_digest(&self, partition: &str) -> Result<PartitionDigest> {
        let mut digests = self.merkle_digests(&[partition.to_string()]).await?;
        Ok(digests.pop().unwrap_or_default())
    }

    async fn merkle_digests(&self, partitions: &[String]) -> Result<Vec<PartitionDigest>> {
        let mut found: HashMap<Vec<u8>, PartitionDigest> = HashMap::new();
        for chunk in partitions.chunks(IDS_PER_STATEMENT) {
            let sql = format!(
                "SELECT source, bucket, item_count, digest FROM sync_merkle_buckets \
                 WHERE source IN ({})",
                marks(chunk.len())
            );
            on_pool!(self, pool => {
                let mut query = sqlx::query(&sql);
                for partition in chunk {
                    query = query.bind(partition.as_bytes());
                }
                for row in query.fetch_all(pool).await? {
                    let source: Vec<u8> = row.try_get(0)?;
                    let bucket: i64 = row.try_get(1)?;
                    let count: i64 = row.try_get(2)?;
                    let text: String = row.try_get(3)?;
                    let hash = decode_hash(&text).ok_or_else(|| {
                        sqlx::Error::Decode("sync_merkle_buckets.digest is not 64 hex digits".into())
                    })?;
                    found.entry(source).or_default().set_bucket(
                        bucket as u8,
                        Bucket { count: count.max(0) as u64, digest: hash },
                    );
                }
            });
        }
        Ok(partitions
            .iter()
            .map(|p| found.remove(p.as_bytes()).unwrap_or_default())
            .collect())
    }

    async fn replace_merkle_digest(&self, partition: &str, digest: &PartitionDigest) -> Result<()> {
        let buckets: Vec<(u8, Bucket)> = digest.non_empty().collect();
        let dialect = self.dialect;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM sync_merkle_buckets WHERE source = ?")
                .bind(partition.as_bytes())
                .execute(&mut *tx)
                .await?;
            for chunk in buckets.chunks(ROWS_PER_STATEMENT) {
                let sql = upsert_buckets_sql(dialect, chunk.len());
                let mut query = sqlx::query(&sql);
                for (b, bucket) in chunk {
                    query = query
                        .bind(partition.as_bytes())
                        .bind(*b as i16)
                        .bind(bucket.count as i64)
                        .bind(hex::encode(bucket.digest));
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn leaves_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<LeafRow>> {
        self.leaf_rows("id > ?", after.unwrap_or("").as_bytes(), limit as i64)
            .await
    }

    async fn leaf_row(&self, id: &str) -> Result<Option<LeafRow>> {
        Ok(self.leaf_rows("id = ?", id.as_bytes(), 1).await?.pop())
    }
}

#[async_trait]
impl RepairMarks for SqlTier {
    async fn mark_redis_repairs(&self, ids: &[&str]) -> Result<()> {
        let upsert = match self.dialect {
            Dialect::MySql => "ON DUPLICATE KEY UPDATE marks = marks + 1",
            Dialect::Sqlite => "ON CONFLICT(id) DO UPDATE SET marks = marks + 1",
        };
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO sync_redis_repairs (id) VALUES {} {upsert}",
                vec!["(?)"; chunk.len()].join(",")
            );
            on_pool!(self, pool => {
                let query = chunk.iter().fold(sqlx::query(&sql), |q, id| q.bind(id.as_bytes()));
                query.execute(pool).await?;
            });
        }
        Ok(())
    }

    async fn redis_repairs(&self, after: Option<&str>, limit: usize) -> Result<Vec<RepairMark>> {
        let sql = "SELECT id, marks FROM sync_redis_repairs WHERE id > ? ORDER BY id LIMIT ?";
        let rows: Vec<(Vec<u8>, i64)> = on_pool!(self, pool => {
            sqlx::query_as(sql)
                .bind(after.unwrap_or("").as_bytes())
                .bind(limit.min(i64::MAX as usize) as i64)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(id, marks)| {
                Ok(RepairMark {
                    id: String::from_utf8(id)
                        .map_err(|_| sqlx::Error::Decode("stored id is not UTF-8".into()))?,
                    marks: Some(marks.max(0) as u64),
                })
            })
            .collect()
    }

    async fn clear_redis_repairs(&self, done: &[RepairMark]) -> Result<()> {
        for chunk in done.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM sync_redis_repairs WHERE {}",
                chunk
                    .iter()
                    .map(|m| if m.marks.is_some() {
                        "(id = ? AND marks = ?)"
                    } else {
                        "id = ?"
                    })
                    .collect::<Vec<_>>()
                    .join(" OR ")
            );
            on_pool!(self, pool => {
                let mut query = sqlx::query(&sql);
                for mark in chunk {
                    query = query.bind(mark.id.as_bytes());
                    if let Some(marks) = mark.marks {
                        query = query.bind(marks as i64);
                    }
                }
                query.execute(pool).await?;
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::SqlTier;
    use crate::item::SyncItem;
    use crate::tier::memory::MemoryTier;
    use crate::tier::{DurableStore, Op, StateRootStore};

    /// The checkpoint reads (every sealed partition in one query each) answer what the
    /// in-memory tier says for the same writes, in the order asked, with nothing for an
    /// unknown partition (the per-partition reads are these reads of one).
    #[tokio::test]
    async fn the_reads_of_many_partitions_agree_with_the_memory_tier() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let tier = SqlTier::connect(&url).await.unwrap();
        let ops: Vec<Op> = (0..300u64)
            .map(|i| {
                let source: Arc<str> = Arc::from(format!("t/{}", i % 3));
                let item = SyncItem::new(format!("id.{i}"), format!("{{\"i\":{i}}}").into_bytes())
                    .with_version(i / 3 + 1)
                    .with_source(source);
                Op::Put(Arc::new(item))
            })
            .collect();
        tier.apply(&ops).await.unwrap();
        // the in-memory tier keeps digests and progress in its own way: the reference
        let memory = MemoryTier::new();
        memory.apply(&ops).await.unwrap();

        let asked: Vec<String> = ["t/2", "nobody/0", "t/0", "t/1"].map(String::from).into();
        let digests = tier.merkle_digests(&asked).await.unwrap();
        let versions = tier.source_versions(&asked).await.unwrap();
        for (i, partition) in asked.iter().enumerate() {
            assert_eq!(
                digests[i],
                memory.merkle_digest(partition).await.unwrap(),
                "{partition}"
            );
            assert_eq!(
                versions[i],
                memory.source_version(partition).await.unwrap(),
                "{partition}"
            );
        }
        assert_eq!(versions, [Some(100), None, Some(100), Some(100)]);
        assert_eq!(digests[1], Default::default());
        assert_ne!(digests[0], digests[2]);
    }
}
