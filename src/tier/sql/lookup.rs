//! Everything SQL knows of one id, read-only, for `sync-engine inspect`: the live row with the
//! time it was last written, or the tombstone a delete left, and whether a Redis repair of the
//! id is pending (`sync_redis_repairs`). A put removes the id's tombstone in the same
//! transaction, so an id has at most one of the two.

use sqlx::Row;

use super::conn::SqlTier;
use super::rows::{item_from_row, on_pool, ITEM_COLUMNS};
use crate::error::Result;
use crate::item::SyncItem;

/// The live row of an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRow {
    pub item: SyncItem,
    /// `updated_at` as the database renders it (UTC).
    pub updated_at: String,
}

/// What a delete left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub source: String,
    pub version: u64,
    /// `deleted_at` as the database renders it (UTC).
    pub deleted_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub row: Option<LiveRow>,
    pub tombstone: Option<Tombstone>,
    /// Redis may hold something else for the id until the writer rewrites it from SQL.
    pub redis_repair_pending: bool,
}

impl SqlTier {
    /// What SQL holds for `id` (three point reads on primary keys).
    pub async fn lookup(&self, id: &str) -> Result<Lookup> {
        // CAST … AS CHAR: MySQL's TIMESTAMP(6) and SQLite's TEXT both come back as text
        let row_sql =
            format!("SELECT {ITEM_COLUMNS}, CAST(updated_at AS CHAR) FROM sync_items WHERE id = ?");
        let tombstone_sql =
            "SELECT source, version, CAST(deleted_at AS CHAR) FROM sync_tombstones WHERE id = ?";
        let repair_sql = "SELECT 1 FROM sync_redis_repairs WHERE id = ?";
        on_pool!(self, pool => {
            let row = match sqlx::query(&row_sql).bind(id.as_bytes()).fetch_optional(pool).await? {
                Some(r) => Some(LiveRow { item: item_from_row!(r)?, updated_at: r.try_get(8)? }),
                None => None,
            };
            let tombstone = match sqlx::query(tombstone_sql).bind(id.as_bytes()).fetch_optional(pool).await? {
                Some(r) => {
                    let source: Vec<u8> = r.try_get(0)?;
                    let version: i64 = r.try_get(1)?;
                    Some(Tombstone {
                        source: String::from_utf8_lossy(&source).into_owned(),
                        version: version.max(0) as u64,
                        deleted_at: r.try_get(2)?,
                    })
                }
                None => None,
            };
            let repair: Option<i64> = sqlx::query_scalar(repair_sql)
                .bind(id.as_bytes())
                .fetch_optional(pool)
                .await?;
            Ok(Lookup { row, tombstone, redis_repair_pending: repair.is_some() })
        })
    }
}
