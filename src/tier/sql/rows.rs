//! Rows of both backends: the pool a tier runs on, the item columns and their decoding.

use crate::error::{Result, SyncError};
use crate::item::{ContentType, SyncItem};
use sqlx::mysql::MySqlPool;
use sqlx::sqlite::SqlitePool;

pub(super) enum Pool {
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to whichever backend this tier uses.
macro_rules! on_pool {
    ($tier:expr, $pool:ident => $body:expr) => {
        match &$tier.pool {
            crate::tier::sql::rows::Pool::MySql($pool) => $body,
            crate::tier::sql::rows::Pool::Sqlite($pool) => $body,
        }
    };
}
pub(super) use on_pool;

pub(super) const ITEM_COLUMNS: &str =
    "id, payload, payload_blob, content_hash, state, version, redis_ttl_ms, source";

/// Decodes a row selected with [`ITEM_COLUMNS`] (a macro: rows of both backends).
macro_rules! item_from_row {
    ($row:expr) => {
        crate::tier::sql::rows::decode_item(
            $row.try_get(0)?,
            $row.try_get(1)?,
            $row.try_get(2)?,
            $row.try_get(3)?,
            $row.try_get(4)?,
            $row.try_get(5)?,
            $row.try_get(6)?,
        )
        .and_then(|item| crate::tier::sql::rows::with_stored_source(item, $row.try_get(7)?))
    };
}
pub(super) use item_from_row;

/// Turns the columns of [`ITEM_COLUMNS`] into an item.
pub(super) fn decode_item(
    id: Vec<u8>,
    payload: Option<String>,
    blob: Option<Vec<u8>>,
    content_hash: String,
    state: Vec<u8>,
    version: i64,
    redis_ttl_ms: Option<i64>,
) -> Result<SyncItem> {
    let text = |bytes: Vec<u8>, what: &str| {
        String::from_utf8(bytes).map_err(|_| {
            SyncError::Sql(sqlx::Error::Decode(
                format!("stored {what} is not UTF-8").into(),
            ))
        })
    };
    let (content, content_type) = match (payload, blob) {
        (Some(json), _) => (json.into_bytes(), ContentType::Json),
        (None, Some(bytes)) => (bytes, ContentType::Binary),
        (None, None) => (Vec::new(), ContentType::Binary),
    };
    Ok(SyncItem::from_stored(
        text(id, "id")?,
        content,
        content_type,
        content_hash,
        text(state, "state")?,
        version as u64,
        redis_ttl_ms.map(|ms| ms.max(0) as u64),
    ))
}

/// The item as written by `source` (the last column of [`ITEM_COLUMNS`]).
pub(super) fn with_stored_source(item: SyncItem, source: Vec<u8>) -> Result<SyncItem> {
    let source = String::from_utf8(source)
        .map_err(|_| SyncError::Sql(sqlx::Error::Decode("stored source is not UTF-8".into())))?;
    Ok(item.with_source(source.into()))
}
