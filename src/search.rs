//! Search over JSON payloads: one small typed query, two executors that must agree.
//!
//! - **RediSearch** (when Redis has the module): an index over the RedisJSON documents of
//!   the Redis tier (`$.payload.<field>`, plus the item state).
//! - **SQL** (always): `JSON_EXTRACT`/`json_extract` on the `payload` column.
//!
//! Both executors only *narrow* the candidates; the final answer is always
//! [`Query::matches`] evaluated on each candidate, so the two cannot drift apart on the
//! details where RediSearch and SQL differ (trimming of tag values, collations, tokenizing).
//! What each query means:
//!
//! - `field_eq(field, value)` — the field is a JSON string equal to `value` (exact bytes,
//!   case-sensitive; RediSearch-style, surrounding ASCII whitespace of the stored value is
//!   ignored).
//! - `numeric_range(field, min, max)` — the field is a JSON number, `min <= n <= max`.
//! - `text(field, words)` — every word of `words` is a word of the field (a JSON string).
//!   Words are split on ASCII whitespace and ASCII punctuation except `_` and `\` (exactly
//!   RediSearch's default), compared ASCII-case-insensitively, no stemming, no stop words.
//! - `state(s)`, `id_prefix(p)` — the item's state / id, exactly as `get_by_state` and
//!   `scan_prefix` do.
//! - `a.and(b)` — both.
//!
//! Fields are dotted paths into the payload object (`address.city`), letters, digits and
//! `_` only; values are always bound as parameters (SQL) or escaped (RediSearch), so no input
//! can change a query's structure. A document whose indexed field has the wrong JSON type is
//! not indexed by RediSearch at all, so only the SQL executor finds it.

use serde_json::Value;

use crate::error::{Result, SyncError};
use crate::item::SyncItem;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Exact string values (`field_eq`).
    Tag,
    /// Numbers (`numeric_range`).
    Numeric,
    /// Words (`text`).
    Text,
}

/// Which payload fields a RediSearch index covers, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchIndex {
    pub name: String,
    pub fields: Vec<(String, FieldKind)>,
}

impl SearchIndex {
    pub fn new(name: impl Into<String>) -> Self {
        SearchIndex {
            name: name.into(),
            fields: Vec::new(),
        }
    }
    pub fn tag(self, field: &str) -> Self {
        self.field(field, FieldKind::Tag)
    }
    pub fn numeric(self, field: &str) -> Self {
        self.field(field, FieldKind::Numeric)
    }
    pub fn text(self, field: &str) -> Self {
        self.field(field, FieldKind::Text)
    }
    fn field(mut self, field: &str, kind: FieldKind) -> Self {
        self.fields.push((field.to_string(), kind));
        self
    }

    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(invalid(format!(
                "index name {:?}: letters, digits and _ only",
                self.name
            )));
        }
        for (field, _) in &self.fields {
            validate_field(field)?;
        }
        Ok(())
    }

    fn kind_of(&self, field: &str) -> Option<FieldKind> {
        self.fields
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, k)| *k)
    }

    /// The `SCHEMA …` arguments of `FT.CREATE` (tag separator 0x1F: never in normal text).
    pub(crate) fn schema_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "SCHEMA",
            "$.state",
            "AS",
            STATE_ALIAS,
            "TAG",
            "CASESENSITIVE",
            "SEPARATOR",
            "\x1f",
        ]
        .map(String::from)
        .to_vec();
        for (field, kind) in &self.fields {
            args.extend([format!("$.payload.{field}"), "AS".into(), alias(field)]);
            args.extend(
                match kind {
                    FieldKind::Tag => &["TAG", "CASESENSITIVE", "SEPARATOR", "\x1f"][..],
                    FieldKind::Numeric => &["NUMERIC"][..],
                    FieldKind::Text => &["TEXT", "NOSTEM"][..],
                }
                .iter()
                .map(|s| s.to_string()),
            );
        }
        args
    }
}

const STATE_ALIAS: &str = "__state";

fn alias(field: &str) -> String {
    format!("f_{}", field.replace('.', "__"))
}

fn invalid(reason: String) -> SyncError {
    SyncError::InvalidQuery(reason)
}

fn validate_field(field: &str) -> Result<()> {
    let ok = !field.is_empty()
        && field.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        && !field.contains("__");
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "field {field:?}: dotted names of letters, digits and single _ only"
        )))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Eq {
        field: String,
        value: String,
    },
    Range {
        field: String,
        min: Option<f64>,
        max: Option<f64>,
    },
    Text {
        field: String,
        words: String,
    },
    State(String),
    IdPrefix(String),
    And(Vec<Query>),
}

impl Query {
    pub fn field_eq(field: &str, value: &str) -> Self {
        Query::Eq {
            field: field.into(),
            value: value.into(),
        }
    }
    pub fn numeric_range(field: &str, min: Option<f64>, max: Option<f64>) -> Self {
        Query::Range {
            field: field.into(),
            min,
            max,
        }
    }
    pub fn text(field: &str, words: &str) -> Self {
        Query::Text {
            field: field.into(),
            words: words.into(),
        }
    }
    pub fn state(state: &str) -> Self {
        Query::State(state.into())
    }
    pub fn id_prefix(prefix: &str) -> Self {
        Query::IdPrefix(prefix.into())
    }
    pub fn and(self, other: Query) -> Self {
        match self {
            Query::And(mut parts) => {
                parts.push(other);
                Query::And(parts)
            }
            first => Query::And(vec![first, other]),
        }
    }

    /// Checks the query against `index`: fields exist with the right kind, values are usable.
    pub fn validate(&self, index: &SearchIndex) -> Result<()> {
        let expect = |field: &str, kind: FieldKind| {
            validate_field(field)?;
            match index.kind_of(field) {
                Some(k) if k == kind => Ok(()),
                _ => Err(invalid(format!(
                    "field {field:?} is not a {kind:?} field of index {:?}",
                    index.name
                ))),
            }
        };
        match self {
            Query::Eq { field, value } => {
                expect(field, FieldKind::Tag)?;
                tag_value_usable(value)
            }
            Query::Range { field, min, max } => {
                expect(field, FieldKind::Numeric)?;
                if min.is_some_and(f64::is_nan) || max.is_some_and(f64::is_nan) {
                    return Err(invalid("NaN bound".into()));
                }
                Ok(())
            }
            Query::Text { field, words } => {
                expect(field, FieldKind::Text)?;
                if words_of(words).next().is_none() {
                    return Err(invalid(format!("text {words:?} has no words")));
                }
                Ok(())
            }
            Query::State(state) => tag_value_usable(state),
            Query::IdPrefix(_) => Ok(()),
            Query::And(parts) => parts.iter().try_for_each(|p| p.validate(index)),
        }
    }

    /// The meaning of the query, evaluated on one item (the final word for both executors).
    /// Search covers JSON items only (binary items are not documents in either executor).
    pub fn matches(&self, item: &SyncItem) -> bool {
        if item.content_type() != crate::item::ContentType::Json {
            return false;
        }
        match self {
            Query::State(state) => item.state() == state,
            Query::IdPrefix(prefix) => item.id().starts_with(prefix.as_str()),
            Query::And(parts) => parts.iter().all(|p| p.matches(item)),
            field_query => {
                let Some(payload) = item.content_as_json() else {
                    return false;
                };
                field_query.matches_payload(&payload)
            }
        }
    }

    fn matches_payload(&self, payload: &Value) -> bool {
        let at = |field: &str| field.split('.').try_fold(payload, |v, key| v.get(key));
        match self {
            Query::Eq { field, value } => match at(field) {
                Some(Value::String(s)) => s.split('\x1f').any(|tag| tag.trim_ascii() == value),
                _ => false,
            },
            Query::Range { field, min, max } => match at(field).and_then(Value::as_f64) {
                Some(n) => min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m),
                None => false,
            },
            Query::Text { field, words } => match at(field) {
                Some(Value::String(s)) => {
                    let have: std::collections::HashSet<String> = words_of(s).collect();
                    words_of(words).all(|w| have.contains(&w))
                }
                _ => false,
            },
            Query::State(_) | Query::IdPrefix(_) | Query::And(_) => {
                unreachable!("not a field query")
            }
        }
    }

    /// The RediSearch query string (DIALECT 2). Id prefixes are left to [`Query::matches`].
    pub(crate) fn redisearch(&self) -> String {
        let clause = match self {
            Query::Eq { field, value } => format!("@{}:{{{}}}", alias(field), escape(value)),
            Query::Range { field, min, max } => format!(
                "@{}:[{} {}]",
                alias(field),
                min.map_or("-inf".to_string(), |m| m.to_string()),
                max.map_or("+inf".to_string(), |m| m.to_string())
            ),
            Query::Text { field, words } => {
                let words: Vec<String> = words_of(words).map(|w| escape(&w)).collect();
                format!("@{}:({})", alias(field), words.join(" "))
            }
            Query::State(state) => format!("@{STATE_ALIAS}:{{{}}}", escape(state)),
            Query::IdPrefix(_) => String::new(),
            Query::And(parts) => parts
                .iter()
                .map(Query::redisearch)
                .filter(|c| c != "*")
                .collect::<Vec<_>>()
                .join(" "),
        };
        if clause.trim().is_empty() {
            "*".into()
        } else {
            clause
        }
    }
}

/// Tag values RediSearch can match exactly: it trims them and splits on the separator.
fn tag_value_usable(value: &str) -> Result<()> {
    if value.is_empty() || value.trim_ascii() != value || value.chars().any(char::is_control) {
        return Err(invalid(format!(
            "value {value:?}: must be non-empty, without surrounding whitespace or control characters"
        )));
    }
    Ok(())
}

/// RediSearch's default tokenizer: ASCII whitespace and punctuation except `_` and `\`
/// separate words; words compare ASCII-case-insensitively.
fn words_of(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| {
        c.is_ascii_whitespace() || (c.is_ascii_punctuation() && c != '_' && c != '\\')
    })
    .filter(|w| !w.is_empty())
    .map(str::to_ascii_lowercase)
}

/// Backslash-escapes every ASCII character RediSearch's query parser could read as syntax.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 2);
    for c in value.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: &str) -> SyncItem {
        SyncItem::new("users:1".into(), json.as_bytes().to_vec()).with_state("active")
    }

    #[test]
    fn meanings() {
        let it = item(r#"{"name":"Ada Lovelace-King","role":" admin ","age":36,"a":{"b":"x"}}"#);
        assert!(Query::field_eq("role", "admin").matches(&it));
        assert!(!Query::field_eq("role", "Admin").matches(&it));
        assert!(Query::field_eq("a.b", "x").matches(&it));
        assert!(Query::numeric_range("age", Some(36.0), None).matches(&it));
        assert!(!Query::numeric_range("age", None, Some(35.9)).matches(&it));
        assert!(Query::text("name", "king ADA").matches(&it));
        assert!(!Query::text("name", "lovelace-queen").matches(&it));
        assert!(Query::state("active")
            .and(Query::id_prefix("users:"))
            .matches(&it));
        assert!(
            !Query::numeric_range("name", None, None).matches(&it),
            "wrong type"
        );
    }

    #[test]
    fn hostile_values_are_escaped_for_redisearch() {
        let q = Query::field_eq("role", "x}) | @name:(*) ' OR 1=1 --");
        assert_eq!(
            q.redisearch(),
            r"@f_role:{x\}\)\ \|\ \@name\:\(\*\)\ \'\ OR\ 1\=1\ \-\-}"
        );
        // (the SQL side binds it: tier::sql::dialect's tests)
    }

    #[test]
    fn bad_queries_are_typed_errors() {
        let index = SearchIndex::new("users")
            .tag("role")
            .numeric("age")
            .text("name");
        for q in [
            Query::field_eq("nope", "x"),
            Query::field_eq("age", "x"),
            Query::field_eq("role", " padded"),
            Query::field_eq("role", ""),
            Query::text("name", "!!!"),
            Query::numeric_range("age", Some(f64::NAN), None),
            Query::field_eq("role']; DROP", "x"),
        ] {
            assert!(
                matches!(q.validate(&index), Err(SyncError::InvalidQuery(_))),
                "{q:?}"
            );
        }
        assert!(SearchIndex::new("bad name").validate().is_err());
        assert!(SearchIndex::new("ok").tag("a.b__c").validate().is_err());
    }
}
