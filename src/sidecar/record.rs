//! Turning one Kafka record into an engine write, or into the reason it goes to the DLQ.
//!
//! Wire contract (schemas/input-record.schema.json; DLQ codes in schemas/README.md): key = object id (UTF-8), value = payload
//! bytes, null value = delete. Optional headers: `sync-state`, `sync-ttl` (seconds, or
//! `minute|short|medium|hour|day|week`), `sync-route` (`redis`, `sql`, `redis,sql`),
//! `content-type` (`application/json` or `application/octet-stream`; absent: detected).

use crate::item::{truncate, validate_state, ContentType, SyncItem, MAX_ID_BYTES};
use crate::options::{CacheTtl, SubmitOptions};

/// Why a record went to the DLQ. The codes are a stable contract (schemas/README.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqCode {
    MissingKey,
    EmptyKey,
    KeyNotUtf8,
    KeyTooLong,
    PayloadTooLarge,
    InvalidJson,
    UnknownContentType,
    UnknownRoute,
    MalformedTtl,
    InvalidState,
    TtlWithoutRedis,
    HeaderNotUtf8,
    RouteUnavailable,
}

impl DlqCode {
    /// Every code, in declaration order (the tests check each against the schemas and the
    /// README).
    pub const ALL: [DlqCode; 13] = [
        DlqCode::MissingKey,
        DlqCode::EmptyKey,
        DlqCode::KeyNotUtf8,
        DlqCode::KeyTooLong,
        DlqCode::PayloadTooLarge,
        DlqCode::InvalidJson,
        DlqCode::UnknownContentType,
        DlqCode::UnknownRoute,
        DlqCode::MalformedTtl,
        DlqCode::InvalidState,
        DlqCode::TtlWithoutRedis,
        DlqCode::HeaderNotUtf8,
        DlqCode::RouteUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DlqCode::MissingKey => "missing_key",
            DlqCode::EmptyKey => "empty_key",
            DlqCode::KeyNotUtf8 => "key_not_utf8",
            DlqCode::KeyTooLong => "key_too_long",
            DlqCode::PayloadTooLarge => "payload_too_large",
            DlqCode::InvalidJson => "invalid_json",
            DlqCode::UnknownContentType => "unknown_content_type",
            DlqCode::UnknownRoute => "unknown_route",
            DlqCode::MalformedTtl => "malformed_ttl",
            DlqCode::InvalidState => "invalid_state",
            DlqCode::TtlWithoutRedis => "ttl_without_redis",
            DlqCode::HeaderNotUtf8 => "header_not_utf8",
            DlqCode::RouteUnavailable => "route_unavailable",
        }
    }
}

/// A record that failed validation: its code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: DlqCode,
    pub message: String,
}

fn reject(code: DlqCode, message: impl Into<String>) -> Rejection {
    Rejection {
        code,
        message: message.into(),
    }
}

/// What a valid record asks for.
#[derive(Debug)]
pub enum Write {
    Put {
        item: SyncItem,
        options: SubmitOptions,
    },
    Delete {
        id: String,
    },
}

impl Write {
    pub fn id(&self) -> &str {
        match self {
            Write::Put { item, .. } => item.id(),
            Write::Delete { id } => id,
        }
    }
}

/// The parts of a Kafka record this module looks at.
pub struct RawRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

impl RawRecord<'_> {
    fn header(&self, name: &str) -> Result<Option<&str>, Rejection> {
        match self
            .headers
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            None | Some((_, None)) => Ok(None),
            Some((_, Some(bytes))) => {
                std::str::from_utf8(bytes)
                    .map(|s| Some(s.trim()))
                    .map_err(|_| {
                        reject(
                            DlqCode::HeaderNotUtf8,
                            format!("header {name} is not UTF-8"),
                        )
                    })
            }
        }
    }
}

/// The longest `sync-ttl` accepted, in seconds (ten years).
const MAX_TTL_SECS: u64 = 10 * 365 * 86_400;

/// Decodes a record for a sidecar whose engine has (or lacks) a Redis tier.
pub fn decode(
    record: &RawRecord<'_>,
    max_payload_bytes: usize,
    has_redis: bool,
) -> Result<Write, Rejection> {
    let key = record
        .key
        .ok_or_else(|| reject(DlqCode::MissingKey, "record has no key (the object id)"))?;
    let id = std::str::from_utf8(key)
        .map_err(|_| reject(DlqCode::KeyNotUtf8, "key is not valid UTF-8"))?;
    if id.is_empty() {
        return Err(reject(DlqCode::EmptyKey, "key is empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(reject(
            DlqCode::KeyTooLong,
            format!("key is {} bytes, over {MAX_ID_BYTES}", id.len()),
        ));
    }
    let Some(value) = record.value else {
        return Ok(Write::Delete { id: id.to_string() });
    };
    if value.len() > max_payload_bytes {
        return Err(reject(
            DlqCode::PayloadTooLarge,
            format!(
                "payload is {} bytes, over max_payload_bytes {max_payload_bytes}",
                value.len()
            ),
        ));
    }
    let declared = match record.header("content-type")? {
        None => None,
        Some(ct) => match ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "application/json" => Some(ContentType::Json),
            "application/octet-stream" => Some(ContentType::Binary),
            other => {
                return Err(reject(
                    DlqCode::UnknownContentType,
                    format!("content-type {:?}", truncate(other)),
                ))
            }
        },
    };
    let item = match declared {
        Some(ContentType::Binary) => SyncItem::binary(id.to_string(), value.to_vec()),
        _ => SyncItem::new(id.to_string(), value.to_vec()),
    };
    if declared == Some(ContentType::Json) && item.content_type() != ContentType::Json {
        return Err(reject(
            DlqCode::InvalidJson,
            "content-type is application/json but the value is not JSON",
        ));
    }
    let (redis, sql) = match record.header("sync-route")? {
        None => (true, true),
        Some(route) => parse_route(route)?,
    };
    let ttl = record.header("sync-ttl")?.map(parse_ttl).transpose()?;
    if ttl.is_some() && !redis {
        return Err(reject(
            DlqCode::TtlWithoutRedis,
            "sync-ttl given for an item routed to SQL only",
        ));
    }
    if !sql && !has_redis {
        return Err(reject(
            DlqCode::RouteUnavailable,
            "sync-route is redis but this sidecar has no Redis tier",
        ));
    }
    let state = record.header("sync-state")?;
    if let Some(state) = state {
        validate_state(state).map_err(|e| reject(DlqCode::InvalidState, e.to_string()))?;
    }
    let options = SubmitOptions {
        redis,
        redis_ttl: ttl,
        sql,
        state: state.map(str::to_string),
    };
    Ok(Write::Put { item, options })
}

fn parse_route(route: &str) -> Result<(bool, bool), Rejection> {
    let (mut redis, mut sql) = (false, false);
    for part in route.split(',').map(str::trim) {
        match part {
            "redis" => redis = true,
            "sql" => sql = true,
            _ => {
                return Err(reject(
                    DlqCode::UnknownRoute,
                    format!(
                        "sync-route {:?}: use redis, sql or redis,sql",
                        truncate(route)
                    ),
                ))
            }
        }
    }
    Ok((redis, sql))
}

fn parse_ttl(ttl: &str) -> Result<CacheTtl, Rejection> {
    Ok(match ttl {
        "minute" => CacheTtl::Minute,
        "short" => CacheTtl::Short,
        "medium" => CacheTtl::Medium,
        "hour" => CacheTtl::Hour,
        "day" => CacheTtl::Day,
        "week" => CacheTtl::Week,
        secs => match secs.parse::<u64>() {
            Ok(n) if n > 0 && n <= MAX_TTL_SECS => CacheTtl::Custom(n),
            _ => {
                return Err(reject(
                    DlqCode::MalformedTtl,
                    format!("sync-ttl {:?}: seconds (1 to {MAX_TTL_SECS}) or minute|short|medium|hour|day|week", truncate(ttl)),
                ))
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        headers: &[(&'a str, &'a str)],
    ) -> RawRecord<'a> {
        RawRecord {
            key,
            value,
            headers: headers
                .iter()
                .map(|(k, v)| (*k, Some(v.as_bytes())))
                .collect(),
        }
    }

    fn code(r: RawRecord<'_>) -> DlqCode {
        decode(&r, 100, true).unwrap_err().code
    }

    #[test]
    fn every_bad_input_has_its_code() {
        let long = "k".repeat(256);
        assert_eq!(code(record(None, Some(b"1"), &[])), DlqCode::MissingKey);
        assert_eq!(code(record(Some(b""), Some(b"1"), &[])), DlqCode::EmptyKey);
        assert_eq!(
            code(record(Some(b"\xff"), Some(b"1"), &[])),
            DlqCode::KeyNotUtf8
        );
        assert_eq!(
            code(record(Some(long.as_bytes()), Some(b"1"), &[])),
            DlqCode::KeyTooLong
        );
        assert_eq!(
            code(record(Some(b"k"), Some(&[0; 101]), &[])),
            DlqCode::PayloadTooLarge
        );
        assert_eq!(
            code(record(
                Some(b"k"),
                Some(b"{"),
                &[("content-type", "application/json")]
            )),
            DlqCode::InvalidJson
        );
        assert_eq!(
            code(record(
                Some(b"k"),
                Some(b"1"),
                &[("content-type", "text/plain")]
            )),
            DlqCode::UnknownContentType
        );
        assert_eq!(
            code(record(Some(b"k"), Some(b"1"), &[("sync-route", "disk")])),
            DlqCode::UnknownRoute
        );
        assert_eq!(
            code(record(Some(b"k"), Some(b"1"), &[("sync-ttl", "soon")])),
            DlqCode::MalformedTtl
        );
        assert_eq!(
            code(record(Some(b"k"), Some(b"1"), &[("sync-ttl", "0")])),
            DlqCode::MalformedTtl
        );
        assert_eq!(
            code(record(Some(b"k"), Some(b"1"), &[("sync-state", "")])),
            DlqCode::InvalidState
        );
        assert_eq!(
            code(record(Some(b"k"), Some(b"1"), &[("sync-state", &long)])),
            DlqCode::InvalidState
        );
        assert_eq!(
            code(record(
                Some(b"k"),
                Some(b"1"),
                &[("sync-route", "sql"), ("sync-ttl", "60")]
            )),
            DlqCode::TtlWithoutRedis
        );
        let no_redis = decode(
            &record(Some(b"k"), Some(b"1"), &[("sync-route", "redis")]),
            100,
            false,
        );
        assert_eq!(no_redis.unwrap_err().code, DlqCode::RouteUnavailable);
        assert_eq!(
            code(record(Some(b"k"), Some(b"1"), &[("sync-ttl", "315360001")])),
            DlqCode::MalformedTtl
        );
        let bad_header = RawRecord {
            key: Some(b"k"),
            value: Some(b"1"),
            headers: vec![("sync-state", Some(b"\xff"))],
        };
        assert_eq!(code(bad_header), DlqCode::HeaderNotUtf8);
    }

    #[test]
    fn valid_records() {
        match decode(&record(Some(b"k"), None, &[]), 100, true).unwrap() {
            Write::Delete { id } => assert_eq!(id, "k"),
            other => panic!("{other:?}"),
        }
        let r = record(
            Some(b"k"),
            Some(b"\x00bin"),
            &[
                ("sync-route", "redis"),
                ("sync-ttl", "hour"),
                ("sync-state", "delta"),
            ],
        );
        match decode(&r, 100, true).unwrap() {
            Write::Put { item, options } => {
                assert_eq!(item.content(), b"\x00bin");
                assert_eq!(
                    (options.redis, options.sql, options.redis_ttl),
                    (true, false, Some(CacheTtl::Hour))
                );
                assert_eq!(options.state.as_deref(), Some("delta"));
            }
            other => panic!("{other:?}"),
        }
        // bytes declared binary stay binary even when they parse as JSON
        let r = record(
            Some(b"k"),
            Some(b"{}"),
            &[("content-type", "application/octet-stream")],
        );
        match decode(&r, 100, true).unwrap() {
            Write::Put { item, .. } => assert_eq!(item.content_type(), ContentType::Binary),
            other => panic!("{other:?}"),
        }
    }
}
