//! `inspect`: what SQL and Redis hold for a few ids, side by side, and whether they agree.
//!
//! Read-only: an [`Inspector`] opens the two tiers itself — no writer, so no Redis repair or
//! read promotion runs because of it — and only reads. SQL is the ground truth, so a
//! difference is Redis's to fix, except a payload that no longer hashes to its stored hash,
//! which is the fault of the tier holding it. Per id:
//! - a live row cached in Redis: both hold the same content hash and state (`hash_differs`,
//!   `state_differs`);
//! - a live row routed to Redis without TTL: Redis holds it (`missing_in_redis`); with a TTL it
//!   may have expired, which is no difference;
//! - a live row not routed to Redis: Redis does not hold it (`not_routed_to_redis`);
//! - no live row (never written, or deleted): Redis holds it only as a cache-only item, which
//!   always has a TTL (`missing_in_sql` otherwise);
//! - a Redis key that is not an item (`unreadable_in_redis`); a payload whose hash is not its
//!   stored `content_hash` (`payload_mismatch`).

use serde::Serialize;

use crate::config::SyncEngineConfig;
use crate::error::{Result, SyncError};
use crate::item::{content_hash, ContentType, SyncItem};
use crate::tier::cache::Cache;
use crate::tier::is_partition;
use crate::tier::redis::RedisTier;
use crate::tier::sql::lookup::Lookup;
use crate::tier::sql::SqlTier;
use crate::verify::Tier;

/// Characters of JSON text, and bytes of a binary payload, a preview shows.
const PREVIEW_CHARS: usize = 200;
const PREVIEW_BYTES: usize = 32;

/// A payload and what its tier stores with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemCopy {
    /// `json` or `binary`.
    pub content_type: &'static str,
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// See [`preview`].
    pub payload_preview: String,
    pub bytes: usize,
    pub content_hash: String,
    /// The payload hashes to `content_hash`.
    pub payload_ok: bool,
    pub state: String,
    pub version: u64,
}

impl ItemCopy {
    fn of(item: &SyncItem) -> ItemCopy {
        let json = item.content_type() == ContentType::Json;
        ItemCopy {
            content_type: if json { "json" } else { "binary" },
            payload: item.content().to_vec(),
            payload_preview: preview(item.content(), json),
            bytes: item.content().len(),
            payload_ok: content_hash(item.content()) == item.content_hash(),
            content_hash: item.content_hash().to_string(),
            state: item.state().to_string(),
            version: item.version(),
        }
    }
}

/// A one-line preview: JSON text (line breaks, which JSON only has between tokens, become
/// spaces) cut at 200 characters, or binary as the hex of its first 32 bytes; `…` when cut.
pub fn preview(payload: &[u8], json: bool) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) if json => {
            let mut shown: String = text
                .chars()
                .take(PREVIEW_CHARS)
                .map(|c| {
                    if matches!(c, '\n' | '\r' | '\t') {
                        ' '
                    } else {
                        c
                    }
                })
                .collect();
            if text.chars().nth(PREVIEW_CHARS).is_some() {
                shown.push('…');
            }
            shown
        }
        _ => {
            let mut shown = hex::encode(&payload[..payload.len().min(PREVIEW_BYTES)]);
            if payload.len() > PREVIEW_BYTES {
                shown.push('…');
            }
            shown
        }
    }
}

/// What SQL holds for an id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SqlView {
    Live {
        #[serde(flatten)]
        copy: ItemCopy,
        /// `local` (library) or `<topic>/<partition>` (sidecar).
        source: String,
        /// The source offset of the write (sidecar writes: version − 1).
        offset: Option<u64>,
        /// How it is routed to Redis: null not at all, 0 without TTL, n a TTL of n ms.
        redis_ttl_ms: Option<u64>,
        updated_at: String,
    },
    Deleted {
        source: String,
        offset: Option<u64>,
        version: u64,
        deleted_at: String,
    },
    Absent,
}

/// What Redis holds for an id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RedisView {
    Item {
        #[serde(flatten)]
        copy: ItemCopy,
        /// The key's Redis type: `hash`, or `ReJSON-RL` for a RedisJSON document.
        key_type: String,
        /// Remaining TTL (null: none).
        ttl_ms: Option<u64>,
    },
    /// A key that is not an item (another type, or fields missing).
    Unreadable {
        key_type: String,
        error: String,
    },
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disagreement {
    PayloadMismatch,
    HashDiffers,
    StateDiffers,
    MissingInRedis,
    MissingInSql,
    NotRoutedToRedis,
    UnreadableInRedis,
}

/// One way the tiers disagree about an id, and the tier to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub tier: Tier,
    pub kind: Disagreement,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The tiers agree (the id may be deleted).
    Agree,
    /// Neither tier has ever held it (or SQL forgot its tombstone): they agree.
    Absent,
    Differ,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    pub id: String,
    pub status: Status,
    pub sql: SqlView,
    /// `None`: no Redis is configured.
    pub redis: Option<RedisView>,
    /// The engine has recorded that Redis may be wrong about this id and will rewrite it from
    /// SQL (`sync_redis_repairs`).
    pub redis_repair_pending: bool,
    pub differences: Vec<Difference>,
}

/// The two tiers of one configuration, opened for reading.
pub struct Inspector {
    sql: SqlTier,
    redis: Option<RedisTier>,
}

impl Inspector {
    /// Connects to `config`'s SQL (required; migrations are applied as at any start) and
    /// prepares its Redis, if any (connected by the first read).
    pub async fn connect(config: &SyncEngineConfig) -> Result<Inspector> {
        let url = config
            .sql_url
            .as_deref()
            .ok_or_else(|| SyncError::Config("no sql_url: there is nothing to inspect".into()))?;
        let redis = match &config.redis_url {
            Some(url) => Some(
                RedisTier::new(url, config.redis_prefix.as_deref().unwrap_or_default())
                    .map_err(|e| SyncError::Config(format!("redis_url: {e}")))?,
            ),
            None => None,
        };
        Ok(Inspector {
            sql: SqlTier::connect(url).await?,
            redis,
        })
    }

    pub async fn inspect(&self, id: &str) -> Result<Inspection> {
        crate::item::validate_id(id)?;
        let lookup = self.sql.lookup(id).await?;
        let redis = match &self.redis {
            Some(redis) => Some(redis_view(redis, id).await?),
            None => None,
        };
        Ok(Inspection::new(id, lookup, redis))
    }
}

async fn redis_view(redis: &RedisTier, id: &str) -> Result<RedisView> {
    let key_type = redis.key_type(id).await?;
    if key_type == "none" {
        return Ok(RedisView::Absent);
    }
    Ok(match redis.get(id).await {
        Ok(Some((item, ttl))) => RedisView::Item {
            copy: ItemCopy::of(&item),
            key_type,
            ttl_ms: ttl.map(|t| t.as_millis() as u64),
        },
        Ok(None) => RedisView::Unreadable {
            key_type,
            error: "not an item (a hash or a RedisJSON document)".into(),
        },
        // the key's content did not decode as an item
        Err(e) if e.kind() == redis::ErrorKind::Parse => RedisView::Unreadable {
            key_type,
            error: e.to_string(),
        },
        Err(e) => return Err(e.into()),
    })
}

/// The offset a write of `source` at `version` came from (sidecar writes are offset + 1).
fn offset(source: &str, version: u64) -> Option<u64> {
    is_partition(source).then(|| version.saturating_sub(1))
}

impl Inspection {
    fn new(id: &str, lookup: Lookup, redis: Option<RedisView>) -> Inspection {
        let sql = match (lookup.row, lookup.tombstone) {
            (Some(row), _) => SqlView::Live {
                copy: ItemCopy::of(&row.item),
                source: row.item.source().to_string(),
                offset: offset(row.item.source(), row.item.version()),
                redis_ttl_ms: row.item.redis_ttl_ms(),
                updated_at: row.updated_at,
            },
            (None, Some(t)) => SqlView::Deleted {
                offset: offset(&t.source, t.version),
                source: t.source,
                version: t.version,
                deleted_at: t.deleted_at,
            },
            (None, None) => SqlView::Absent,
        };
        let differences = compare(&sql, redis.as_ref());
        let status = match (&sql, &redis) {
            _ if !differences.is_empty() => Status::Differ,
            (SqlView::Absent, None | Some(RedisView::Absent)) => Status::Absent,
            _ => Status::Agree,
        };
        Inspection {
            id: id.to_string(),
            status,
            sql,
            redis,
            redis_repair_pending: lookup.redis_repair_pending,
            differences,
        }
    }
}

/// Where the two views disagree (see the module doc); `redis: None` (no Redis) never does.
pub fn compare(sql: &SqlView, redis: Option<&RedisView>) -> Vec<Difference> {
    let difference = |tier, kind, detail: String| Difference { tier, kind, detail };
    let mismatch = |tier, copy: &ItemCopy| {
        let detail = format!(
            "the payload hashes to {}, not to its stored content_hash {}",
            content_hash(&copy.payload),
            copy.content_hash
        );
        difference(tier, Disagreement::PayloadMismatch, detail)
    };
    let mut out = Vec::new();
    if let SqlView::Live { copy, .. } = sql {
        if !copy.payload_ok {
            out.push(mismatch(Tier::Sql, copy));
        }
    }
    let Some(redis) = redis else { return out };
    if let RedisView::Item { copy, .. } = redis {
        if !copy.payload_ok {
            out.push(mismatch(Tier::Redis, copy));
        }
    }
    match (sql, redis) {
        (_, RedisView::Unreadable { key_type, error }) => out.push(difference(
            Tier::Redis,
            Disagreement::UnreadableInRedis,
            format!("the key is a {key_type}: {error}"),
        )),
        (
            SqlView::Live {
                redis_ttl_ms: Some(0),
                ..
            },
            RedisView::Absent,
        ) => out.push(difference(
            Tier::Redis,
            Disagreement::MissingInRedis,
            "SQL caches it in Redis without TTL, Redis has no key".into(),
        )),
        (
            SqlView::Live {
                redis_ttl_ms: None, ..
            },
            RedisView::Item { .. },
        ) => out.push(difference(
            Tier::Redis,
            Disagreement::NotRoutedToRedis,
            "SQL routes it past Redis, Redis holds it".into(),
        )),
        (SqlView::Live { copy: s, .. }, RedisView::Item { copy: r, .. }) => {
            if s.content_hash != r.content_hash {
                out.push(difference(
                    Tier::Redis,
                    Disagreement::HashDiffers,
                    format!("SQL {}, Redis {}", s.content_hash, r.content_hash),
                ));
            }
            if s.state != r.state {
                out.push(difference(
                    Tier::Redis,
                    Disagreement::StateDiffers,
                    format!("SQL {:?}, Redis {:?}", s.state, r.state),
                ));
            }
        }
        (_, RedisView::Item { ttl_ms: None, .. }) => out.push(difference(
            Tier::Redis,
            Disagreement::MissingInSql,
            "Redis holds it without TTL, SQL has no live row".into(),
        )),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(payload: &[u8], state: &str) -> ItemCopy {
        ItemCopy::of(&SyncItem::new("x".into(), payload.to_vec()).with_state(state))
    }

    fn live(payload: &[u8], redis_ttl_ms: Option<u64>) -> SqlView {
        SqlView::Live {
            copy: copy(payload, "s"),
            source: "in/0".into(),
            offset: Some(4),
            redis_ttl_ms,
            updated_at: String::new(),
        }
    }

    fn cached(payload: &[u8], state: &str, ttl_ms: Option<u64>) -> RedisView {
        RedisView::Item {
            copy: copy(payload, state),
            key_type: "hash".into(),
            ttl_ms,
        }
    }

    fn kinds(sql: &SqlView, redis: Option<&RedisView>) -> Vec<(Tier, Disagreement)> {
        compare(sql, redis)
            .into_iter()
            .map(|d| (d.tier, d.kind))
            .collect()
    }

    #[test]
    fn agreement_follows_the_route() {
        use Disagreement::*;
        let absent = RedisView::Absent;
        // the same copy in both, or no Redis at all
        assert_eq!(
            kinds(&live(b"1", Some(0)), Some(&cached(b"1", "s", None))),
            []
        );
        assert_eq!(kinds(&live(b"1", Some(0)), None), []);
        // routed without TTL: Redis must have it; with a TTL it may have expired
        assert_eq!(
            kinds(&live(b"1", Some(0)), Some(&absent)),
            [(Tier::Redis, MissingInRedis)]
        );
        assert_eq!(kinds(&live(b"1", Some(60_000)), Some(&absent)), []);
        // not routed: Redis must not have it
        assert_eq!(kinds(&live(b"1", None), Some(&absent)), []);
        assert_eq!(
            kinds(&live(b"1", None), Some(&cached(b"1", "s", None))),
            [(Tier::Redis, NotRoutedToRedis)]
        );
        // other content or state
        assert_eq!(
            kinds(&live(b"1", Some(0)), Some(&cached(b"2", "t", None))),
            [(Tier::Redis, HashDiffers), (Tier::Redis, StateDiffers)]
        );
        // no live row: only cache-only items (with a TTL) may be in Redis
        assert_eq!(
            kinds(&SqlView::Absent, Some(&cached(b"1", "s", Some(5)))),
            []
        );
        assert_eq!(
            kinds(&SqlView::Absent, Some(&cached(b"1", "s", None))),
            [(Tier::Redis, MissingInSql)]
        );
        assert_eq!(kinds(&SqlView::Absent, Some(&absent)), []);
        let unreadable = RedisView::Unreadable {
            key_type: "string".into(),
            error: "not an item".into(),
        };
        assert_eq!(
            kinds(&SqlView::Absent, Some(&unreadable)),
            [(Tier::Redis, UnreadableInRedis)]
        );
    }

    #[test]
    fn a_payload_that_does_not_match_its_hash_is_its_tiers_fault() {
        let mut sql = live(b"1", Some(0));
        if let SqlView::Live { copy, .. } = &mut sql {
            copy.payload = b"2".to_vec();
            copy.payload_ok = false;
        }
        assert_eq!(
            kinds(&sql, Some(&cached(b"1", "s", None))),
            [(Tier::Sql, Disagreement::PayloadMismatch)]
        );
    }

    #[test]
    fn previews_cut_json_text_and_show_binary_as_hex() {
        assert_eq!(preview(b"{\"a\":\n 1}", true), "{\"a\":  1}");
        let long = format!("[{}]", "\"é\",".repeat(100));
        let shown = preview(long.as_bytes(), true);
        assert_eq!(shown.chars().count(), PREVIEW_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(preview(&[0, 1, 0xFF], false), "0001ff");
        let blob = vec![0xAB; 40];
        assert_eq!(preview(&blob, false), format!("{}…", "ab".repeat(32)));
        let json: serde_json::Value = serde_json::to_value(copy(b"[1]", "s")).unwrap();
        assert_eq!(json["payload_preview"], "[1]");
        assert_eq!(json["content_type"], "json");
    }
}
