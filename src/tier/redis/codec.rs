//! The bytes Redis sees: the arguments of `lua/write.lua` for a batch's writes, the JSON
//! document a RedisJSON item is stored as, and the decoding of what `lua/read.lua` returns.
//! Kept apart from the calls, so that a benchmark can time exactly what the engine sends
//! ([`RedisTier::put_pipelines`]) instead of encoding it a second time.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{RedisError, Value};

use super::RedisTier;
use crate::item::{ContentType, SyncItem};
use crate::merkle;
use crate::tier::cache::CacheWrite;

/// Writes per MULTI/EXEC pipeline; a larger batch takes several round trips.
const WRITES_PER_PIPELINE: usize = 2000;

impl RedisTier {
    /// The MULTI/EXEC pipelines that apply `writes`, [`WRITES_PER_PIPELINE`] writes each: one
    /// `EVALSHA` of `lua/write.lua` per pipeline, preceded by `SCRIPT LOAD` inside the
    /// transaction, so a Redis that restarted (and forgot its scripts) still runs it.
    pub(super) fn write_pipelines(
        &self,
        writes: &[CacheWrite<'_>],
        use_json: bool,
    ) -> Vec<redis::Pipeline> {
        writes
            .chunks(WRITES_PER_PIPELINE)
            .map(|chunk| {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(include_str!("lua/write.lua"))
                    .ignore();
                let command = pipe
                    .cmd("EVALSHA")
                    .arg(self.write_script.get_hash())
                    .arg(chunk.len());
                for write in chunk {
                    command.arg(self.key(write.id()));
                }
                let memberships: Vec<Option<Membership>> = chunk.iter().map(membership).collect();
                let additions = mirror_additions(&memberships);
                command
                    .arg(&self.sets)
                    .arg(&self.mirrors)
                    .arg(additions.len());
                for ((partition, bucket), (count, xor)) in &additions {
                    command
                        .arg(*partition)
                        .arg(*bucket)
                        .arg(*count)
                        .arg(hex::encode(xor));
                }
                for (write, membership) in chunk.iter().zip(&memberships) {
                    add_write(command, write, membership.as_ref(), use_json);
                }
                command.ignore();
                pipe
            })
            .collect()
    }

    /// The pipelines a flushed batch of `items` sends to Redis when they were submitted with
    /// the default options (durable, cached without TTL), with or without RedisJSON
    /// documents. For benchmarks that time the Redis share of a batch alone; not a stable API.
    #[doc(hidden)]
    pub fn put_pipelines(&self, items: &[SyncItem], redisjson: bool) -> Vec<redis::Pipeline> {
        let writes: Vec<CacheWrite> = items
            .iter()
            .map(|item| CacheWrite::Put {
                item,
                ttl: None,
                mirrored: true,
            })
            .collect();
        self.write_pipelines(&writes, redisjson)
    }
}

/// A durable item cached without TTL counts in its partition's Merkle mirror.
struct Membership<'a> {
    leaf: merkle::Hash,
    partition: &'a str,
}

fn membership<'a>(write: &CacheWrite<'a>) -> Option<Membership<'a>> {
    match write {
        CacheWrite::Put {
            item,
            ttl: None,
            mirrored: true,
        } => Some(Membership {
            leaf: merkle::leaf(item.id(), item.content_hash()),
            partition: item.source(),
        }),
        _ => None,
    }
}

/// What a chunk's memberships add to the mirror: per (partition, bucket), the count and the
/// XOR of the leaves. The script merges them per bucket and handles only the memberships
/// the items it replaces take out.
fn mirror_additions<'a>(
    memberships: &[Option<Membership<'a>>],
) -> BTreeMap<(&'a str, u8), (u64, merkle::Hash)> {
    let mut additions: BTreeMap<(&str, u8), (u64, merkle::Hash)> = BTreeMap::new();
    for m in memberships.iter().flatten() {
        let (count, xor) = additions
            .entry((m.partition, m.leaf[0]))
            .or_insert((0, [0; 32]));
        *count += 1;
        for (x, b) in xor.iter_mut().zip(&m.leaf) {
            *x ^= b;
        }
    }
    additions
}

/// The nine script arguments of one write (see `lua/write.lua`).
fn add_write(
    command: &mut redis::Pipeline,
    write: &CacheWrite<'_>,
    membership: Option<&Membership>,
    use_json: bool,
) {
    command.arg(write.id());
    let CacheWrite::Put { item, ttl, .. } = write else {
        command.arg("del").arg("").arg(0).arg("");
        command.arg("").arg("").arg("").arg("");
        return;
    };
    let ttl_ms = ttl.map_or(0, |t| t.as_millis().max(1) as u64);
    let membership = membership.map_or_else(String::new, |m| {
        format!("{:02x}{}{}", m.leaf[0], hex::encode(m.leaf), m.partition)
    });
    match item
        .json_text()
        .filter(|text| use_json && redisjson_accepts(text))
    {
        Some(text) => {
            command
                .arg("json")
                .arg(&membership)
                .arg(ttl_ms)
                .arg(item.state())
                .arg(json_document(item, text));
            command.arg("").arg("").arg("");
        }
        None => {
            command
                .arg("hash")
                .arg(&membership)
                .arg(ttl_ms)
                .arg(item.state())
                .arg(item.content())
                .arg(item.content_hash())
                .arg(item.version())
                .arg(match item.content_type() {
                    ContentType::Json => "json",
                    ContentType::Binary => "binary",
                });
        }
    }
}

/// RedisJSON parses numbers as i64/f64 and rejects what does not fit (e.g. `1e400`).
pub(super) fn redisjson_accepts(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok()
}

fn json_document(item: &SyncItem, text: &str) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    format!(
        r#"{{"hash":{},"state":{},"version":{},"raw":{},"payload":{}}}"#,
        quote(item.content_hash()),
        quote(item.state()),
        item.version(),
        quote(text),
        text
    )
}

/// A scalar reply as text (RESP2 and RESP3 spell them differently).
pub(super) fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Escapes Redis glob metacharacters so an id prefix matches literally.
pub(super) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(super) fn corrupt(id: &str, what: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Parse,
        "unreadable Redis entry",
        format!("{id}: {what}"),
    ))
}

/// What `lua/read.lua` returned for `id`: the item and its remaining TTL, or `None`.
pub(super) fn decode(
    id: &str,
    reply: Value,
) -> Result<Option<(SyncItem, Option<Duration>)>, RedisError> {
    let fields = match reply {
        Value::Nil | Value::Boolean(false) => return Ok(None),
        Value::Array(fields) => fields,
        _ => return Err(corrupt(id, "unexpected reply")),
    };
    let bytes = |v: &Value| match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    };
    let shape = fields
        .first()
        .and_then(bytes)
        .ok_or_else(|| corrupt(id, "no shape"))?;
    let ttl = match fields.last() {
        Some(Value::Int(ms)) if *ms > 0 => Some(Duration::from_millis(*ms as u64)),
        _ => None,
    };
    let (content, content_type, hash, state, version) = if shape == b"rejson" {
        let text = fields
            .get(1)
            .and_then(bytes)
            .ok_or_else(|| corrupt(id, "no document"))?;
        let doc: serde_json::Value =
            serde_json::from_slice(&text).map_err(|_| corrupt(id, "bad document"))?;
        let field = |path: &str| doc.get(path).and_then(|v| v.get(0)).cloned();
        let text_of = |path: &str| field(path).and_then(|v| v.as_str().map(str::to_string));
        (
            text_of("$.raw")
                .ok_or_else(|| corrupt(id, "no raw"))?
                .into_bytes(),
            ContentType::Json,
            text_of("$.hash").ok_or_else(|| corrupt(id, "no hash"))?,
            text_of("$.state").ok_or_else(|| corrupt(id, "no state"))?,
            field("$.version")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| corrupt(id, "no version"))?,
        )
    } else {
        let get = |i: usize| {
            fields
                .get(i)
                .and_then(bytes)
                .ok_or_else(|| corrupt(id, "missing field"))
        };
        let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| corrupt(id, "field not UTF-8"));
        let content_type = if shape == b"json" {
            ContentType::Json
        } else {
            ContentType::Binary
        };
        (
            get(1)?,
            content_type,
            text(get(2)?)?,
            text(get(3)?)?,
            text(get(4)?)?
                .parse()
                .map_err(|_| corrupt(id, "bad version"))?,
        )
    };
    let item = SyncItem::from_stored(
        id.to_string(),
        content,
        content_type,
        hash,
        state,
        version,
        Some(0),
    );
    Ok(Some((item, ttl)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn documents_embed_the_exact_text() {
        let text = r#"{ "n" : 1.0 }"#;
        let item = SyncItem::new("x".into(), text.as_bytes().to_vec()).with_version(7);
        let doc: serde_json::Value = serde_json::from_str(&json_document(&item, text)).unwrap();
        assert_eq!(doc["raw"], text);
        assert_eq!(doc["payload"]["n"], 1.0);
        assert_eq!(doc["version"], 7);
        assert!(!redisjson_accepts("{\"n\": 1e400}"));
    }
}
