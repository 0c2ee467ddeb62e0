//! Every SQL text the tier sends that is not the same on both backends, or that is built from
//! parts: the dialect's clauses, the multi-row upserts of a batch, the progress and digest
//! upserts, and the search filter. A text for a given dialect and row count is always the same
//! string, so prepared statements are reused.

use crate::search::Query;
use crate::tier::prefix_upper_bound;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    MySql,
    Sqlite,
}

impl Dialect {
    /// Locks the rows a batch reads so no other writer slips in before it writes.
    pub(super) fn lock_clause(self) -> &'static str {
        match self {
            Dialect::MySql => " FOR UPDATE",
            // SQLite has one writer at a time; the version guard in the upsert covers the rest.
            Dialect::Sqlite => "",
        }
    }

    pub(super) fn now(self) -> &'static str {
        match self {
            Dialect::MySql => "CURRENT_TIMESTAMP(6)",
            Dialect::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        }
    }

    /// Keeps the higher version when a tombstone already exists.
    pub(super) fn tombstone_conflict(self) -> &'static str {
        match self {
            Dialect::MySql => {
                " ON DUPLICATE KEY UPDATE version = GREATEST(sync_tombstones.version, VALUES(version))"
            }
            Dialect::Sqlite => {
                " ON CONFLICT(id) DO UPDATE SET version = max(sync_tombstones.version, excluded.version)"
            }
        }
    }
}

/// Rows per multi-row statement: 8 binds each stays far below both backends' bind limits, and
/// a full chunk always has the same text, so its prepared statement is reused.
pub(super) const ROWS_PER_STATEMENT: usize = 500;
/// Ids per `IN (…)` list.
pub(super) const IDS_PER_STATEMENT: usize = 1000;

pub(super) fn marks(n: usize) -> String {
    let mut s = String::with_capacity(n * 2);
    for i in 0..n {
        s.push_str(if i == 0 { "?" } else { ",?" });
    }
    s
}

pub(super) fn rows(n: usize, columns: &str) -> String {
    vec![columns; n].join(",")
}

/// The SQL form of the guard an upsert carries: the incoming row is newer within its source,
/// or comes from another source (the decision between sources was made under the row locks).
const NEWER: &str = "(VALUES(version) > version OR VALUES(source) <> source)";

pub(super) fn upsert_items_sql(dialect: Dialect, n: usize) -> String {
    let head = format!(
        "INSERT INTO sync_items (id, payload, payload_blob, content_hash, state, source, version, redis_ttl_ms) VALUES {}",
        rows(n, "(?,?,?,?,?,?,?,?)")
    );
    match dialect {
        // MySQL applies assignments left to right: `version` and then `source` must be the
        // last ones, or the guards after them would compare against the new values.
        Dialect::MySql => format!(
            "{head} ON DUPLICATE KEY UPDATE \
             payload = IF({NEWER}, VALUES(payload), payload), \
             payload_blob = IF({NEWER}, VALUES(payload_blob), payload_blob), \
             content_hash = IF({NEWER}, VALUES(content_hash), content_hash), \
             state = IF({NEWER}, VALUES(state), state), \
             redis_ttl_ms = IF({NEWER}, VALUES(redis_ttl_ms), redis_ttl_ms), \
             updated_at = IF({NEWER}, CURRENT_TIMESTAMP(6), updated_at), \
             version = IF({NEWER}, VALUES(version), version), \
             source = VALUES(source)"
        ),
        Dialect::Sqlite => format!(
            "{head} ON CONFLICT(id) DO UPDATE SET payload = excluded.payload, \
             payload_blob = excluded.payload_blob, content_hash = excluded.content_hash, \
             state = excluded.state, source = excluded.source, version = excluded.version, \
             redis_ttl_ms = excluded.redis_ttl_ms, \
             updated_at = {} WHERE excluded.version > sync_items.version \
             OR excluded.source <> sync_items.source",
            dialect.now()
        ),
    }
}

pub(super) fn upsert_tombstones_sql(dialect: Dialect, n: usize) -> String {
    let head = format!(
        "INSERT INTO sync_tombstones (id, source, version) VALUES {}",
        rows(n, "(?,?,?)")
    );
    match dialect {
        Dialect::MySql => format!(
            "{head} ON DUPLICATE KEY UPDATE \
             deleted_at = IF({NEWER}, CURRENT_TIMESTAMP(6), deleted_at), \
             version = IF({NEWER}, VALUES(version), version), \
             source = VALUES(source)"
        ),
        Dialect::Sqlite => format!(
            "{head} ON CONFLICT(id) DO UPDATE SET source = excluded.source, \
             version = excluded.version, deleted_at = {} \
             WHERE excluded.version > sync_tombstones.version \
             OR excluded.source <> sync_tombstones.source",
            dialect.now()
        ),
    }
}

pub(super) fn record_source_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => {
            "INSERT INTO sync_sources (source, version) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE updated_at = CURRENT_TIMESTAMP(6), \
             version = GREATEST(version, VALUES(version))"
        }
        Dialect::Sqlite => {
            "INSERT INTO sync_sources (source, version) VALUES (?, ?) \
             ON CONFLICT(source) DO UPDATE SET version = max(version, excluded.version), \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
        }
    }
}

pub(super) fn upsert_buckets_sql(dialect: Dialect, n: usize) -> String {
    let head = format!(
        "INSERT INTO sync_merkle_buckets (source, bucket, item_count, digest) VALUES {}",
        rows(n, "(?,?,?,?)")
    );
    match dialect {
        Dialect::MySql => format!(
            "{head} ON DUPLICATE KEY UPDATE item_count = VALUES(item_count), digest = VALUES(digest)"
        ),
        Dialect::Sqlite => format!(
            "{head} ON CONFLICT(source, bucket) DO UPDATE SET item_count = excluded.item_count, \
             digest = excluded.digest"
        ),
    }
}

/// An SQL condition selecting a superset of `query`'s matches, with its parameters (search's
/// SQL executor; the answer is then [`Query::matches`] on each candidate).
pub(super) fn search_filter(query: &Query, dialect: Dialect) -> (String, Vec<SqlBind>) {
    let sqlite = dialect == Dialect::Sqlite;
    let typed = |field: &str, types: &str| {
        let sql = if sqlite {
            format!("json_type(payload, ?) IN ({})", types.to_lowercase())
        } else {
            format!("JSON_TYPE(JSON_EXTRACT(payload, ?)) IN ({types})")
        };
        (sql, vec![SqlBind::Text(format!("$.{field}"))])
    };
    match query {
        Query::Eq { field, .. } | Query::Text { field, .. } => {
            typed(field, if sqlite { "'text'" } else { "'STRING'" })
        }
        Query::Range { field, min, max } => {
            let (mut sql, mut binds) = typed(
                field,
                if sqlite {
                    "'integer','real'"
                } else {
                    "'INTEGER','DOUBLE'"
                },
            );
            let value = if sqlite {
                "json_extract(payload, ?)"
            } else {
                "(JSON_EXTRACT(payload, ?) + 0)"
            };
            for (bound, op) in [(min, ">="), (max, "<=")] {
                if let Some(b) = bound {
                    sql.push_str(&format!(" AND {value} {op} ?"));
                    binds.extend([SqlBind::Text(format!("$.{field}")), SqlBind::Number(*b)]);
                }
            }
            (sql, binds)
        }
        Query::State(state) => (
            "state = ?".into(),
            vec![SqlBind::Bytes(state.as_bytes().to_vec())],
        ),
        Query::IdPrefix(prefix) => {
            let mut binds = vec![SqlBind::Bytes(prefix.as_bytes().to_vec())];
            match prefix_upper_bound(prefix.as_bytes()) {
                Some(end) => {
                    binds.push(SqlBind::Bytes(end));
                    ("id >= ? AND id < ?".into(), binds)
                }
                None => ("id >= ?".into(), binds),
            }
        }
        Query::And(parts) => {
            let (sqls, binds): (Vec<String>, Vec<Vec<SqlBind>>) = parts
                .iter()
                .map(|p| search_filter(p, dialect))
                .map(|(s, b)| (format!("({s})"), b))
                .unzip();
            let sql = if sqls.is_empty() {
                "1 = 1".to_string()
            } else {
                sqls.join(" AND ")
            };
            (sql, binds.into_iter().flatten().collect())
        }
    }
}

/// A parameter of [`search_filter`].
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SqlBind {
    Bytes(Vec<u8>),
    Text(String),
    Number(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_search_values_are_bound_never_spliced() {
        let q = Query::field_eq("role", "x}) | @name:(*) ' OR 1=1 --");
        for dialect in [Dialect::MySql, Dialect::Sqlite] {
            let (sql, binds) = search_filter(&q, dialect);
            assert!(!sql.contains("OR 1"), "{sql}");
            assert_eq!(binds, vec![SqlBind::Text("$.role".into())]);
        }
    }
}
