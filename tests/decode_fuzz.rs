//! Property tests ("fuzzing") of the sidecar's record decoder, `sidecar::record::decode`, which
//! turns one Kafka record (key, value, headers) into an engine write or a DLQ rejection.
//!
//! For arbitrary and adversarial records (byte keys around the 255-byte limit and with broken
//! UTF-8, values from nothing to random bytes to JSON of many shapes and almost-JSON and sizes
//! around `max_payload_bytes`, header lists with case variants, duplicates, null and non-UTF-8
//! and whitespace-padded values), any `max_payload_bytes` and with or without Redis, it proves:
//!
//! 1. `decode` never panics.
//! 2. Every rejection has a code documented in the DLQ table of `schemas/README.md` (parsed at
//!    test time, so the doc and the code cannot drift apart) and a non-empty message.
//! 3. Every write is faithful: the id is the key bytes (UTF-8, 1..=255 bytes), the content is the
//!    value bytes, `content_hash` is the hex SHA-256 of the value, a null value is a delete of the
//!    key, a declared content type is obeyed, and the options follow the headers.
//! 4. `decode` is deterministic.
//! 5. The outcome equals an independent model of the contract (README + input-record schema)
//!    that checks in the decoder's order as read from `src/sidecar/record.rs`; the basic
//!    invariants (`missing_key`, `empty_key`, `key_not_utf8`, `key_too_long`,
//!    `payload_too_large`, `route_unavailable`) are asserted once more on their own.
//! 6. Metamorphic: headers the decoder does not read never change the outcome, the last header
//!    of a name decides, and a delete looks at the key only.
//!
//! A fixed corpus of hand-written nasty records always runs too, and tests named `bug_…` and
//! `drift_…` pin discrepancies found between the decoder and its documented contract (they fail
//! until the decoder or the documentation is fixed).

use std::fmt;
use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
use sha2::{Digest, Sha256};
use sync_engine::sidecar::record::{decode, DlqCode, RawRecord, Rejection, Write};
use sync_engine::{CacheTtl, ContentType, SubmitOptions, SyncItem};

use DlqCode::*;

/// Longest key and state, in bytes (`VARBINARY(255)`).
const MAX_ID_BYTES: usize = 255;
/// Longest `sync-ttl` in seconds (ten years), per the input-record schema.
const MAX_TTL_SECS: u64 = 315_360_000;
/// The sidecar's default `max_payload_bytes`.
const DEFAULT_MAX: usize = 16 << 20;
/// The headers `decode` reads (matched ASCII-case-insensitively).
const READ_HEADERS: [&str; 4] = ["content-type", "sync-route", "sync-ttl", "sync-state"];

fn deterministic_runner() -> TestRunner {
    TestRunner::new_with_rng(
        config(1),
        TestRng::deterministic_rng(RngAlgorithm::XorShift),
    )
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Only this file may be created: no proptest-regressions/ directory.
        failure_persistence: None,
        // ChaCha (the default) is ~3× slower to sample in a debug build.
        rng_algorithm: RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Records and outcomes

/// An owned Kafka record, lent to `decode` as a `RawRecord`.
#[derive(Clone)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Rec {
    fn raw(&self) -> RawRecord<'_> {
        RawRecord {
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref()))
                .collect(),
        }
    }
}

/// Bytes as an escaped byte-string literal, so a shrunk failing input reads as what it is.
struct Bytes<'a>(Option<&'a [u8]>);

impl fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => write!(f, "None"),
            Some(b) if b.len() > 300 => {
                write!(f, "b\"{}\"… ({} bytes)", b[..300].escape_ascii(), b.len())
            }
            Some(b) => write!(f, "b\"{}\"", b.escape_ascii()),
        }
    }
}

impl fmt::Debug for Rec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<_> = self
            .headers
            .iter()
            .map(|(name, value)| (name, Bytes(value.as_deref())))
            .collect();
        f.debug_struct("Rec")
            .field("key", &Bytes(self.key.as_deref()))
            .field("value", &Bytes(self.value.as_deref()))
            .field("headers", &headers)
            .finish()
    }
}

/// What `decode` returned, comparable as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Put(SyncItem, SubmitOptions),
    Delete(String),
    Rejected(Rejection),
}

fn run(rec: &Rec, max_payload_bytes: usize, has_redis: bool) -> Outcome {
    match decode(&rec.raw(), max_payload_bytes, has_redis) {
        Ok(Write::Put { item, options }) => Outcome::Put(item, options),
        Ok(Write::Delete { id }) => Outcome::Delete(id),
        Err(rejection) => Outcome::Rejected(rejection),
    }
}

/// An outcome reduced to what the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Reject(DlqCode),
    Delete(String),
    Put {
        content_type: ContentType,
        options: SubmitOptions,
    },
}

fn summary(outcome: &Outcome) -> Expected {
    match outcome {
        Outcome::Put(item, options) => Expected::Put {
            content_type: item.content_type(),
            options: options.clone(),
        },
        Outcome::Delete(id) => Expected::Delete(id.clone()),
        Outcome::Rejected(r) => Expected::Reject(r.code),
    }
}

// ---------------------------------------------------------------------------------------------
// The documented codes

/// Every `DlqCode`, as the library lists them. The exhaustive match below stops this file
/// compiling when a variant is added, until it is listed there too; a test checks that the two
/// agree (so `DlqCode::ALL` cannot miss one) and each against the README.
const ALL_CODES: [DlqCode; 13] = DlqCode::ALL;

fn index_of(code: DlqCode) -> usize {
    match code {
        MissingKey => 0,
        EmptyKey => 1,
        KeyNotUtf8 => 2,
        KeyTooLong => 3,
        PayloadTooLarge => 4,
        InvalidJson => 5,
        UnknownContentType => 6,
        UnknownRoute => 7,
        MalformedTtl => 8,
        InvalidState => 9,
        TtlWithoutRedis => 10,
        HeaderNotUtf8 => 11,
        RouteUnavailable => 12,
    }
}

const README: &str = include_str!("../schemas/README.md");

/// The backticked codes in the first column of the table under "## DLQ error codes" in
/// schemas/README.md, in table order (the documented check order).
fn documented_codes() -> &'static [&'static str] {
    static CODES: OnceLock<Vec<&'static str>> = OnceLock::new();
    CODES.get_or_init(|| {
        let section = README
            .split("## DLQ error codes")
            .nth(1)
            .expect("schemas/README.md has a \"## DLQ error codes\" section");
        section
            .lines()
            .take_while(|line| !line.starts_with("## "))
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once('`'))
            .map(|(code, _)| code)
            .collect()
    })
}

fn is_documented(code: DlqCode) -> bool {
    let word = code.as_str();
    documented_codes().contains(&word) && README.contains(&format!("`{word}`"))
}

// ---------------------------------------------------------------------------------------------
// The model

/// RFC 8259 grammar (`JSON-text = ws value ws`), byte by byte, iterative, with no nesting or
/// number-range limit: `1e400` and 100 000 nested arrays are JSON; and UTF-8 (§8.1).
fn json_grammar(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok() && json_shape(b)
}

/// The grammar alone, on bytes.
fn json_shape(b: &[u8]) -> bool {
    fn ws(b: &[u8], i: &mut usize) {
        while matches!(b.get(*i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            *i += 1;
        }
    }
    fn eat(b: &[u8], i: &mut usize, c: u8) -> bool {
        let hit = b.get(*i) == Some(&c);
        if hit {
            *i += 1;
        }
        hit
    }
    fn digits(b: &[u8], i: &mut usize) -> bool {
        let start = *i;
        while matches!(b.get(*i), Some(b'0'..=b'9')) {
            *i += 1;
        }
        *i > start
    }
    fn string(b: &[u8], i: &mut usize) -> bool {
        if !eat(b, i, b'"') {
            return false;
        }
        loop {
            match b.get(*i) {
                None => return false,
                Some(b'"') => {
                    *i += 1;
                    return true;
                }
                Some(b'\\') => {
                    *i += 1;
                    match b.get(*i) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => *i += 1,
                        Some(b'u') => {
                            *i += 1;
                            for _ in 0..4 {
                                if !b.get(*i).is_some_and(u8::is_ascii_hexdigit) {
                                    return false;
                                }
                                *i += 1;
                            }
                        }
                        _ => return false,
                    }
                }
                Some(&c) if c < 0x20 => return false,
                Some(_) => *i += 1,
            }
        }
    }
    fn number(b: &[u8], i: &mut usize) -> bool {
        eat(b, i, b'-');
        let int = eat(b, i, b'0') || (matches!(b.get(*i), Some(b'1'..=b'9')) && digits(b, i));
        if !int || (eat(b, i, b'.') && !digits(b, i)) {
            return false;
        }
        if eat(b, i, b'e') || eat(b, i, b'E') {
            let _sign = eat(b, i, b'+') || eat(b, i, b'-');
            return digits(b, i);
        }
        true
    }
    fn literal(b: &[u8], i: &mut usize, word: &[u8]) -> bool {
        let hit = b[*i..].starts_with(word);
        if hit {
            *i += word.len();
        }
        hit
    }
    fn member_key(b: &[u8], i: &mut usize) -> bool {
        ws(b, i);
        if !string(b, i) {
            return false;
        }
        ws(b, i);
        eat(b, i, b':')
    }

    let mut closers = Vec::new();
    let mut i = 0;
    loop {
        // one value
        ws(b, &mut i);
        let ok = match b.get(i) {
            Some(b'[') => {
                i += 1;
                ws(b, &mut i);
                if !eat(b, &mut i, b']') {
                    closers.push(b']');
                    continue;
                }
                true
            }
            Some(b'{') => {
                i += 1;
                ws(b, &mut i);
                if !eat(b, &mut i, b'}') {
                    closers.push(b'}');
                    if !member_key(b, &mut i) {
                        return false;
                    }
                    continue;
                }
                true
            }
            Some(b'"') => string(b, &mut i),
            Some(b'-' | b'0'..=b'9') => number(b, &mut i),
            Some(b't') => literal(b, &mut i, b"true"),
            Some(b'f') => literal(b, &mut i, b"false"),
            Some(b'n') => literal(b, &mut i, b"null"),
            _ => false,
        };
        if !ok {
            return false;
        }
        // after a value: close containers until a comma asks for the next value
        loop {
            ws(b, &mut i);
            let Some(&closer) = closers.last() else {
                return i == b.len();
            };
            if eat(b, &mut i, b',') {
                if closer == b'}' && !member_key(b, &mut i) {
                    return false;
                }
                break;
            }
            if !eat(b, &mut i, closer) {
                return false;
            }
            closers.pop();
        }
    }
}

/// A header as the contract reads it: the last one of the name (ASCII case aside), a null
/// value counting as absent, the value UTF-8 and trimmed.
fn header(rec: &Rec, name: &str) -> Result<Option<String>, DlqCode> {
    let last = rec
        .headers
        .iter()
        .rev()
        .find(|(n, _)| n.to_ascii_lowercase() == name);
    match last {
        None | Some((_, None)) => Ok(None),
        Some((_, Some(bytes))) => std::str::from_utf8(bytes)
            .map(|s| Some(s.trim().to_string()))
            .map_err(|_| HeaderNotUtf8),
    }
}

/// The media type of a content-type value: before any `;`, trimmed, ASCII-lowercased.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `sync-ttl`: a named TTL, or whole seconds 1..=MAX_TTL_SECS. Like `u64::from_str` (what the
/// decoder uses) one leading `+` and leading zeros are tolerated; the schema's pattern is
/// stricter, which the schema allows itself.
fn ttl_model(ttl: &str) -> Option<CacheTtl> {
    Some(match ttl {
        "minute" => CacheTtl::Minute,
        "short" => CacheTtl::Short,
        "medium" => CacheTtl::Medium,
        "hour" => CacheTtl::Hour,
        "day" => CacheTtl::Day,
        "week" => CacheTtl::Week,
        _ => {
            let digits = ttl.strip_prefix('+').unwrap_or(ttl);
            if digits.is_empty() || !digits.bytes().all(|d| d.is_ascii_digit()) {
                return None;
            }
            let secs = digits.bytes().try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })?;
            if secs == 0 || secs > MAX_TTL_SECS {
                return None;
            }
            CacheTtl::Custom(secs)
        }
    })
}

/// The route's (redis, sql), or `None` for `unknown_route`.
fn route_model(route: &str) -> Option<(bool, bool)> {
    let (mut redis, mut sql) = (false, false);
    for part in route.split(',') {
        match part.trim() {
            "redis" => redis = true,
            "sql" => sql = true,
            _ => return None,
        }
    }
    Some((redis, sql))
}

/// The contract as an independent model. The check order mirrors `decode` exactly as read from
/// src/sidecar/record.rs:
///   key present → key UTF-8 → key non-empty → key ≤ 255 bytes → (null value: delete; no header
///   is read) → value ≤ max_payload_bytes → content-type (header_not_utf8, unknown_content_type)
///   → invalid_json → sync-route (header_not_utf8, unknown_route) → sync-ttl
///   (header_not_utf8, malformed_ttl) → ttl_without_redis → route_unavailable → sync-state
///   (header_not_utf8, invalid_state), the order of schemas/README.md's table.
fn model(rec: &Rec, max_payload_bytes: usize, has_redis: bool) -> Expected {
    let decided = || -> Result<Expected, DlqCode> {
        let key = rec.key.as_deref().ok_or(MissingKey)?;
        let id = std::str::from_utf8(key).map_err(|_| KeyNotUtf8)?;
        if key.is_empty() {
            return Err(EmptyKey);
        }
        if key.len() > MAX_ID_BYTES {
            return Err(KeyTooLong);
        }
        let Some(value) = rec.value.as_deref() else {
            return Ok(Expected::Delete(id.to_string()));
        };
        if value.len() > max_payload_bytes {
            return Err(PayloadTooLarge);
        }
        let declared = match header(rec, "content-type")? {
            None => None,
            Some(ct) => match media_type(&ct).as_str() {
                "application/json" => Some(ContentType::Json),
                "application/octet-stream" => Some(ContentType::Binary),
                _ => return Err(UnknownContentType),
            },
        };
        let is_json = json_grammar(value);
        let content_type = match declared {
            Some(ContentType::Binary) => ContentType::Binary,
            Some(ContentType::Json) if !is_json => return Err(InvalidJson),
            _ if is_json => ContentType::Json,
            _ => ContentType::Binary,
        };
        let (redis, sql) = match header(rec, "sync-route")? {
            None => (true, true),
            Some(route) => route_model(&route).ok_or(UnknownRoute)?,
        };
        let redis_ttl = match header(rec, "sync-ttl")? {
            None => None,
            Some(ttl) => Some(ttl_model(&ttl).ok_or(MalformedTtl)?),
        };
        if redis_ttl.is_some() && !redis {
            return Err(TtlWithoutRedis);
        }
        if !sql && !has_redis {
            return Err(RouteUnavailable);
        }
        let state = header(rec, "sync-state")?;
        if state
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > MAX_ID_BYTES)
        {
            return Err(InvalidState);
        }
        Ok(Expected::Put {
            content_type,
            options: SubmitOptions {
                redis,
                redis_ttl,
                sql,
                state,
            },
        })
    };
    decided().unwrap_or_else(Expected::Reject)
}

// ---------------------------------------------------------------------------------------------
// The checks every decoded record goes through (properties and corpus alike)

fn check(rec: &Rec, max: usize, has_redis: bool) -> Result<Outcome, TestCaseError> {
    // 1. a panic here fails the case (proptest catches it and shrinks)
    let outcome = run(rec, max, has_redis);

    // 4. determinism
    prop_assert_eq!(
        &run(rec, max, has_redis),
        &outcome,
        "decode is not deterministic"
    );

    // 2. and 3.
    match &outcome {
        Outcome::Rejected(r) => {
            prop_assert!(
                is_documented(r.code),
                "code {:?} is not in the DLQ table of schemas/README.md",
                r.code.as_str()
            );
            prop_assert!(!r.message.trim().is_empty(), "empty message for {:?}", r);
        }
        Outcome::Delete(id) => {
            prop_assert!(rec.value.is_none(), "a delete from a non-null value");
            prop_assert_eq!(Some(id.as_bytes()), rec.key.as_deref());
            prop_assert!((1..=MAX_ID_BYTES).contains(&id.len()));
        }
        Outcome::Put(item, options) => {
            let key = rec.key.as_deref();
            prop_assert_eq!(Some(item.id().as_bytes()), key, "id is not the key bytes");
            prop_assert!((1..=MAX_ID_BYTES).contains(&item.id().len()));
            let value = rec.value.as_deref();
            prop_assert!(value.is_some(), "a put from a null value");
            let value = value.unwrap_or_default();
            prop_assert!(item.content() == value, "content is not the value bytes");
            prop_assert!(value.len() <= max, "a put over max_payload_bytes");
            prop_assert_eq!(item.content_hash(), hex::encode(Sha256::digest(value)));
            prop_assert!(item.verify().is_ok());
            if let Ok(Some(ct)) = header(rec, "content-type") {
                match media_type(&ct).as_str() {
                    "application/octet-stream" => {
                        prop_assert_eq!(item.content_type(), ContentType::Binary)
                    }
                    "application/json" => prop_assert_eq!(item.content_type(), ContentType::Json),
                    other => prop_assert!(false, "put with content-type {:?}", other),
                }
            }
            prop_assert!(options.redis || options.sql, "a put routed nowhere");
            prop_assert!(has_redis || options.sql, "redis-only put without Redis");
            prop_assert!(
                options.redis_ttl.is_none() || options.redis,
                "TTL without Redis"
            );
            match header(rec, "sync-route") {
                Ok(Some(route)) => {
                    let parts: Vec<&str> = route.split(',').map(str::trim).collect();
                    prop_assert_eq!(options.redis, parts.contains(&"redis"));
                    prop_assert_eq!(options.sql, parts.contains(&"sql"));
                }
                Ok(None) => prop_assert!(options.redis && options.sql),
                Err(_) => prop_assert!(false, "put with a non-UTF-8 sync-route"),
            }
            match header(rec, "sync-state") {
                Ok(state) => prop_assert_eq!(&options.state, &state),
                Err(_) => prop_assert!(false, "put with a non-UTF-8 sync-state"),
            }
            if let Some(state) = &options.state {
                prop_assert!((1..=MAX_ID_BYTES).contains(&state.len()));
                prop_assert_eq!(state.trim(), state.as_str());
            }
        }
    }

    // 5. the whole model
    prop_assert_eq!(summary(&outcome), model(rec, max, has_redis));
    check_specific_invariants(rec, max, has_redis, &outcome)?;
    Ok(outcome)
}

/// Codes the decoder can return before it checks route_unavailable (source order); a
/// header_not_utf8 counts only when it is the content-type's (sync-route is readable here).
const BEFORE_ROUTE_UNAVAILABLE: [DlqCode; 10] = [
    MissingKey,
    KeyNotUtf8,
    EmptyKey,
    KeyTooLong,
    PayloadTooLarge,
    UnknownContentType,
    InvalidJson,
    UnknownRoute,
    MalformedTtl,
    TtlWithoutRedis,
];

/// The brief's specific invariants, stated on their own (the model implies them too).
fn check_specific_invariants(
    rec: &Rec,
    max: usize,
    has_redis: bool,
    outcome: &Outcome,
) -> Result<(), TestCaseError> {
    let code = match outcome {
        Outcome::Rejected(r) => Some(r.code),
        _ => None,
    };
    let Some(key) = rec.key.as_deref() else {
        prop_assert_eq!(code, Some(MissingKey));
        return Ok(());
    };
    let Ok(id) = std::str::from_utf8(key) else {
        prop_assert_eq!(code, Some(KeyNotUtf8));
        return Ok(());
    };
    if key.is_empty() {
        prop_assert_eq!(code, Some(EmptyKey));
        return Ok(());
    }
    if key.len() > MAX_ID_BYTES {
        prop_assert_eq!(code, Some(KeyTooLong));
        return Ok(());
    }
    let Some(value) = rec.value.as_deref() else {
        prop_assert_eq!(outcome, &Outcome::Delete(id.to_string()));
        return Ok(());
    };
    if value.len() > max {
        prop_assert_eq!(code, Some(PayloadTooLarge));
        return Ok(());
    }
    // has_redis only matters for a redis-only route, and then only when no earlier check fails.
    if !has_redis {
        let with_redis = run(rec, max, true);
        let redis_only = matches!(
            header(rec, "sync-route"),
            Ok(Some(route)) if route.split(',').all(|p| p.trim() == "redis")
        );
        if redis_only {
            let earlier = match &with_redis {
                Outcome::Rejected(r) if r.code == HeaderNotUtf8 => {
                    header(rec, "content-type").is_err() || header(rec, "sync-ttl").is_err()
                }
                Outcome::Rejected(r) => BEFORE_ROUTE_UNAVAILABLE.contains(&r.code),
                _ => false,
            };
            if earlier {
                prop_assert_eq!(outcome, &with_redis);
            } else {
                prop_assert_eq!(code, Some(RouteUnavailable));
            }
        } else {
            prop_assert_eq!(outcome, &with_redis);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Generators

const PADS: &[&str] = &[
    "", "", "", "", "", " ", "  ", "\t", "\n", "\r\n", "\u{a0}", "\u{3000}", "\u{feff}",
];
const JSON_WS: &[&str] = &["", "", "", " ", "\n", "\t", "\r\n  "];
const BAD_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\x80",
    b"\xc0\x80",         // overlong NUL
    b"\xed\xa0\x80",     // an encoded surrogate
    b"\xe2\x82",         // '€' cut short
    b"\xf4\x90\x80\x80", // above U+10FFFF
    b"\xfe\xfe",
];
const CONTENT_TYPES_OK: &[&str] = &[
    "application/json",
    "application/octet-stream",
    "APPLICATION/JSON",
    "Application/Octet-Stream",
    "application/json; charset=utf-8",
    "application/json ;charset=latin1",
    "application/octet-stream;",
    "application/json;;",
];
const CONTENT_TYPES_TRICKY: &[&str] = &[
    "text/plain",
    "",
    ";",
    ";application/json",
    "application/jsonp",
    "application/ json",
    "application/x-json",
    "application/json\u{0}",
    "application/ｊson",
    "*/*",
];
const ROUTES_OK: &[&str] = &[
    "redis",
    "sql",
    "redis,sql",
    "sql,redis",
    "redis , sql",
    "redis,redis",
    "sql,sql",
];
const ROUTES_TRICKY: &[&str] = &[
    "REDIS",
    "Sql",
    "",
    ",",
    "redis,",
    ",sql",
    "redis,,sql",
    "redis;sql",
    "redis sql",
    "disk",
    "redis,disk",
];
const TTLS_OK: &[&str] = &[
    "minute",
    "short",
    "medium",
    "hour",
    "day",
    "week",
    "60",
    "1",
    "315360000",
];
const TTLS_TRICKY: &[&str] = &[
    "Minute",
    "HOUR",
    "0",
    "-5",
    "1.5",
    "+60",
    "060",
    "00",
    "315360001",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e3",
    "soon",
    "",
    "+",
    "-0",
    "6 0",
    "٣",
    "６０",
];
const STATES_OK: &[&str] = &["delta", "default", "ü", "x y", "a\u{0}b", "\u{200b}"];
const OTHER_NAMES: &[&str] = &[
    "traceparent",
    "tracestate",
    "x-request-id",
    "content_type",
    "contenttype",
    "content-type ",
    " sync-ttl",
    "sync-routes",
    "sync-stat",
    "ſync-state",    // 'ſ' uppercases to 'S' in Unicode, not in ASCII
    "ＣONTENT-TYPE", // fullwidth C
    "sync‐route",    // U+2010 hyphen
    "sync-ttl\u{0}",
    "",
];
/// Values that are (or are nearly) JSON, with the classic traps.
const SPECIAL_VALUES: &[&[u8]] = &[
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"1E+400",
    b"123456789012345678901234567890123456789",
    b"[1e400, -1e400]",
    b"{\"n\":1e999999999999}",
    b"-0",
    b"0.0e-0",
    b"NaN",
    b"Infinity",
    b"-",
    b"01",
    b"1.",
    b".5",
    b"1e",
    b"+1",
    b"\"\\ud800\"",
    b"\"\\u12\"",
    b"\"\\x41\"",
    b"\xef\xbb\xbf{}",
    b"{}\0",
    b"\0",
    b"nul",
    b"tru",
    b" ",
    b"\t[]\n",
    b"{\"a\":1,}",
    b"[1,]",
    b"{'a':1}",
    b"{\"a\" 1}",
    b"[\"\x01\"]",
    b"\"\x7f\"",
    b"// c\n1",
    b"1 2",
    b"{\"a\":1}{\"b\":2}",
    b"[}",
    b"{]",
    b"{\"a\":1]",
    b"\"\xe2\x82\xac\"",
];

/// A regex strategy, compiled once.
fn re(pattern: &str) -> impl Strategy<Value = String> {
    proptest::string::string_regex(pattern).expect("a valid regex")
}

/// Any text, control characters included (`any::<String>()` compiles its regex per case).
fn text() -> impl Strategy<Value = String> {
    re("(?s).{0,20}")
}

/// Strings over `alphabet` (regex strategies are slow to sample in a debug build).
fn chars(alphabet: &str, len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    vec(select(alphabet.chars().collect::<Vec<_>>()), len).prop_map(|cs| cs.into_iter().collect())
}

fn digits(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    chars("0123456789", len)
}

/// RFC 8259 numbers, with huge ones (`1e400`, 31-digit integers) among them.
fn json_number() -> impl Strategy<Value = String> {
    let int = prop_oneof![
        Just("0".to_string()),
        (chars("123456789", 1..2), digits(0..31)).prop_map(|(first, rest)| first + &rest),
    ];
    let exp = (
        select(vec!["e", "E"]),
        select(vec!["", "+", "-"]),
        digits(1..6),
    );
    (
        any::<bool>(),
        int,
        proptest::option::of(digits(1..11)),
        proptest::option::of(exp),
    )
        .prop_map(|(negative, int, frac, exp)| {
            let mut n = if negative {
                "-".to_string()
            } else {
                String::new()
            };
            n += &int;
            if let Some(frac) = frac {
                n = format!("{n}.{frac}");
            }
            if let Some((e, sign, d)) = exp {
                n = format!("{n}{e}{sign}{d}");
            }
            n
        })
}

/// A JSON string literal with every kind of escape, lone surrogates (`\ud800`) included.
fn json_raw_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        select(vec![
            "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"
        ])
        .prop_map(String::from),
        chars("0123456789abcdefABCDEF", 4..5).prop_map(|hex| format!("\\u{hex}")),
        any::<char>()
            .prop_filter("unescaped", |c| !matches!(c, '"' | '\\' | '\0'..='\u{1f}'))
            .prop_map(String::from),
    ];
    vec(piece, 0..12).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
}

fn pad() -> impl Strategy<Value = &'static str> {
    select(PADS)
}

fn json_ws() -> impl Strategy<Value = &'static str> {
    select(JSON_WS)
}

fn multibyte_char() -> impl Strategy<Value = char> {
    prop_oneof![Just('é'), Just('€'), Just('😀'), any::<char>()]
}

/// `bytes` with one of BAD_UTF8 spliced in somewhere.
fn with_bad_utf8(bytes: Vec<u8>, bad: &[u8], at: Index) -> Vec<u8> {
    let mut bytes = bytes;
    let i = at.index(bytes.len() + 1);
    bytes.splice(i..i, bad.iter().copied());
    bytes
}

fn key_strategy() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Vec::new())),
        14 => chars("abcXYZ0189:/._-", 1..25).prop_map(|s| Some(s.into_bytes())),
        2 => text().prop_map(|s| Some(s.into_bytes())),
        1 => vec(any::<u8>(), 0..40).prop_map(Some),
        2 => (250usize..=260).prop_map(|n| Some(vec![b'k'; n])),
        // a multibyte character straddling the 255-byte limit
        3 => (245usize..=256, multibyte_char()).prop_map(|(n, c)| {
            let mut key = vec![b'a'; n];
            key.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            Some(key)
        }),
        // ... or cut short there
        1 => (245usize..=256, multibyte_char(), 1usize..=3).prop_map(|(n, c, cut)| {
            let mut key = vec![b'a'; n];
            let encoded = c.encode_utf8(&mut [0; 4]).as_bytes().to_vec();
            key.extend_from_slice(&encoded[..encoded.len().saturating_sub(cut).max(1)]);
            Some(key)
        }),
        1 => (chars("abcz€", 0..21), select(BAD_UTF8), any::<Index>())
            .prop_map(|(s, bad, at)| Some(with_bad_utf8(s.into_bytes(), bad, at))),
        1 => (84usize..=101).prop_map(|n| Some("€".repeat(n).into_bytes())),
        1 => select(vec![" ", "\u{0}", "a ", "\u{feff}", "\u{10ffff}"])
            .prop_map(|s| Some(s.as_bytes().to_vec())),
    ]
}

/// JSON text of many shapes with random (legal) whitespace.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        select(vec![
            "null", "true", "false", "0", "-0", "1e400", "-1e400", "1E-400", "0.0e+0"
        ])
        .prop_map(String::from),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        json_number(),
        text().prop_map(|s| serde_json::to_string(&s).expect("a string serializes")),
        json_raw_string(),
    ];
    let tree = leaf.prop_recursive(3, 24, 4, |inner| {
        let element =
            (json_ws(), inner.clone(), json_ws()).prop_map(|(a, v, b)| format!("{a}{v}{b}"));
        let key = text().prop_map(|s| serde_json::to_string(&s).expect("serializes"));
        let member = (json_ws(), key, json_ws(), json_ws(), inner, json_ws())
            .prop_map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"));
        prop_oneof![
            vec(element, 0..4).prop_map(|e| format!("[{}]", e.join(","))),
            vec(member, 0..4).prop_map(|m| format!("{{{}}}", m.join(","))),
        ]
    });
    (json_ws(), tree, json_ws()).prop_map(|(a, t, b)| format!("{a}{t}{b}"))
}

/// JSON text with one small mutation: cut short, a stray or flipped byte, a trailing comma,
/// an invalid UTF-8 byte.
fn almost_json() -> impl Strategy<Value = Vec<u8>> {
    (json_text(), 0usize..6, any::<Index>(), any::<u8>()).prop_map(|(text, op, at, byte)| {
        let mut b = text.into_bytes();
        let i = at.index(b.len() + 1);
        match op {
            0 => b.truncate(i),
            1 => b.insert(i, byte),
            2 if i < b.len() => b[i] = byte,
            3 => b.push(b','),
            4 => b.insert(i, b','),
            _ => b.insert(i, 0xff),
        }
        b
    })
}

fn nested(depth: usize, closed: bool) -> Vec<u8> {
    let mut b = vec![b'['; depth];
    if closed {
        b.resize(2 * depth, b']');
    }
    b
}

/// A value, or a size relative to `max_payload_bytes` (known only once the record is built).
#[derive(Debug, Clone)]
enum ValueGen {
    Fixed(Option<Vec<u8>>),
    /// `max - 1 + delta` bytes (up to 4 KiB), as bytes or as a JSON string.
    AroundMax {
        delta: usize,
        json: bool,
    },
}

impl ValueGen {
    fn resolve(self, max: usize) -> Option<Vec<u8>> {
        match self {
            ValueGen::Fixed(value) => value,
            ValueGen::AroundMax { delta, json } => {
                let n = (max.min(4096) + delta).saturating_sub(1);
                Some(if json && n >= 2 {
                    let mut v = vec![b'"'];
                    v.resize(n - 1, b'x');
                    v.push(b'"');
                    v
                } else {
                    vec![0xa5; n]
                })
            }
        }
    }
}

fn value_strategy() -> impl Strategy<Value = ValueGen> {
    let fixed = |v: Option<Vec<u8>>| ValueGen::Fixed(v);
    prop_oneof![
        3 => Just(fixed(None)),
        1 => Just(fixed(Some(Vec::new()))),
        3 => vec(any::<u8>(), 0..64).prop_map(move |v| fixed(Some(v))),
        6 => json_text().prop_map(move |s| fixed(Some(s.into_bytes()))),
        3 => almost_json().prop_map(move |v| fixed(Some(v))),
        2 => select(SPECIAL_VALUES).prop_map(move |v| fixed(Some(v.to_vec()))),
        1 => (1usize..2000, any::<bool>()).prop_map(move |(d, closed)| fixed(Some(nested(d, closed)))),
        2 => (0usize..=2, any::<bool>()).prop_map(|(delta, json)| ValueGen::AroundMax { delta, json }),
    ]
}

/// `name` in a random ASCII casing.
fn case_variant(name: &'static str) -> impl Strategy<Value = String> {
    vec(any::<bool>(), name.len()).prop_map(move |upper| {
        name.chars()
            .zip(upper)
            .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

fn padded(value: impl Strategy<Value = String>) -> impl Strategy<Value = Option<Vec<u8>>> {
    (pad(), value, pad()).prop_map(|(a, v, b)| Some(format!("{a}{v}{b}").into_bytes()))
}

fn any_header_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        2 => text().prop_map(|s| Some(s.into_bytes())),
        2 => vec(any::<u8>(), 0..24).prop_map(Some),
        2 => (chars("ajsonp/,;-", 0..13), select(BAD_UTF8), any::<Index>())
            .prop_map(|(s, bad, at)| Some(with_bad_utf8(s.into_bytes(), bad, at))),
    ]
}

/// Mostly a (padded) valid value for this header, else a tricky one, null, or anything.
fn typed_value(
    ok: impl Strategy<Value = String>,
    tricky: impl Strategy<Value = String>,
) -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        6 => padded(ok),
        3 => padded(tricky),
        1 => Just(None),
        1 => any_header_value(),
    ]
}

fn content_type_ok() -> impl Strategy<Value = String> {
    select(CONTENT_TYPES_OK).prop_map(String::from)
}

fn route_ok() -> impl Strategy<Value = String> {
    select(ROUTES_OK).prop_map(String::from)
}

fn ttl_ok() -> impl Strategy<Value = String> {
    prop_oneof![
        select(TTLS_OK).prop_map(String::from),
        (1..=MAX_TTL_SECS).prop_map(|n| n.to_string()),
    ]
}

fn state_ok() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(STATES_OK).prop_map(String::from),
        1 => (1usize..=255).prop_map(|n| "s".repeat(n)),
        1 => text().prop_filter("not blank", |s| !s.trim().is_empty()),
    ]
}

fn content_type_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    typed_value(
        content_type_ok(),
        select(CONTENT_TYPES_TRICKY).prop_map(String::from),
    )
}

fn route_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    typed_value(
        route_ok(),
        prop_oneof![
            select(ROUTES_TRICKY).prop_map(String::from),
            vec(
                select(vec!["redis", "sql", " sql", "REDIS", "", "disk"]),
                1..4
            )
            .prop_map(|parts| parts.join(",")),
        ],
    )
}

fn ttl_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    typed_value(
        ttl_ok(),
        prop_oneof![
            4 => select(TTLS_TRICKY).prop_map(String::from),
            1 => (MAX_TTL_SECS - 2..=MAX_TTL_SECS + 2).prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            1 => (select(vec!["", "+", "-"]), digits(1..26)).prop_map(|(sign, d)| format!("{sign}{d}")),
        ],
    )
}

fn state_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    typed_value(
        state_ok(),
        prop_oneof![
            Just(String::new()),
            Just(" ".to_string()),
            (250usize..=258).prop_map(|n| "s".repeat(n)),
            (84usize..=87).prop_map(|n| "€".repeat(n)),
            text(),
        ],
    )
}

/// Each of the four headers at most once, with a valid (padded, any-case) value, in any
/// order: records that get past the header checks, down to the later ones.
fn well_formed_headers() -> impl Strategy<Value = Vec<(String, Option<Vec<u8>>)>> {
    use proptest::option::of;
    (
        of((case_variant("content-type"), padded(content_type_ok()))),
        of((case_variant("sync-route"), padded(route_ok()))),
        of((case_variant("sync-ttl"), padded(ttl_ok()))),
        of((case_variant("sync-state"), padded(state_ok()))),
    )
        .prop_map(|(a, b, c, d)| [a, b, c, d].into_iter().flatten().collect::<Vec<_>>())
        .prop_shuffle()
}

fn any_header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(OTHER_NAMES).prop_map(String::from),
        1 => chars("acdeilnorstyCEST-", 0..15),
        1 => text(),
    ]
}

fn header_strategy() -> impl Strategy<Value = (String, Option<Vec<u8>>)> {
    prop_oneof![
        3 => (case_variant("content-type"), content_type_value()),
        3 => (case_variant("sync-route"), route_value()),
        3 => (case_variant("sync-ttl"), ttl_value()),
        3 => (case_variant("sync-state"), state_value()),
        2 => (any_header_name(), any_header_value()),
        1 => (select(READ_HEADERS.to_vec()).prop_map(String::from), any_header_value()),
    ]
}

fn max_payload_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => Just(DEFAULT_MAX),
        1 => Just(usize::MAX),
        1 => Just(0usize),
        3 => 0usize..=300,
    ]
}

/// A record with the `max_payload_bytes` and `has_redis` to decode it with.
fn record_strategy() -> impl Strategy<Value = (Rec, usize, bool)> {
    (
        max_payload_strategy(),
        any::<bool>(),
        key_strategy(),
        value_strategy(),
        prop_oneof![
            3 => vec(header_strategy(), 0..5),
            1 => well_formed_headers(),
        ],
    )
        .prop_map(|(max, has_redis, key, value, headers)| {
            let value = value.resolve(max);
            (
                Rec {
                    key,
                    value,
                    headers,
                },
                max,
                has_redis,
            )
        })
}

fn reads(name: &str) -> bool {
    READ_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(config(2000))]

    /// Properties 1–5 on arbitrary and adversarial records.
    #[test]
    fn decode_is_total_documented_faithful_and_deterministic(
        (rec, max, has_redis) in record_strategy()
    ) {
        check(&rec, max, has_redis)?;
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// Headers other than the four the decoder reads never change the outcome, wherever they are.
    #[test]
    fn unread_headers_never_matter(
        (rec, max, has_redis) in record_strategy(),
        extra in vec((any_header_name(), any_header_value(), any::<Index>()), 1..6),
    ) {
        let mut noisy = rec.clone();
        for (name, value, at) in extra {
            if !reads(&name) {
                let i = at.index(noisy.headers.len() + 1);
                noisy.headers.insert(i, (name, value));
            }
        }
        prop_assert_eq!(check(&noisy, max, has_redis)?, run(&rec, max, has_redis));
    }

    /// For each header name the last one decides (a null value meaning absent), whatever came
    /// before it and whatever its casing.
    #[test]
    fn last_header_of_a_name_decides(
        (rec, max, has_redis) in record_strategy(),
        finals in (
            (case_variant("content-type"), content_type_value()),
            (case_variant("sync-route"), route_value()),
            (case_variant("sync-ttl"), ttl_value()),
            (case_variant("sync-state"), state_value()),
        ),
        order in Just([0usize, 1, 2, 3]).prop_shuffle(),
    ) {
        let (a, b, c, d) = finals;
        let finals = [a, b, c, d];
        let last: Vec<_> = order.iter().map(|&i| finals[i].clone()).collect();
        let mut shadowed = rec.clone();
        shadowed.headers.extend(last.iter().cloned());
        let alone = Rec { headers: last, ..rec };
        prop_assert_eq!(check(&shadowed, max, has_redis)?, check(&alone, max, has_redis)?);
    }

    /// A delete (null value) is decided by its key alone: headers, max_payload_bytes and
    /// has_redis are never looked at.
    #[test]
    fn a_delete_looks_at_the_key_only(
        (rec, max, has_redis) in record_strategy(),
    ) {
        let delete = Rec { value: None, ..rec };
        let bare = Rec { headers: Vec::new(), ..delete.clone() };
        prop_assert_eq!(check(&delete, max, has_redis)?, check(&bare, 0, false)?);
    }
}

/// The generator is adversarial enough: over a fixed sample it reaches every DLQ code, deletes,
/// and JSON and binary puts (so the properties above are not vacuous).
#[test]
fn generator_reaches_every_outcome() {
    let mut runner = deterministic_runner();
    let strategy = record_strategy();
    let mut seen_codes = [0usize; 13];
    let (mut deletes, mut json, mut binary) = (0, 0, 0);
    for _ in 0..2000 {
        let (rec, max, has_redis) = strategy.new_tree(&mut runner).expect("a record").current();
        match run(&rec, max, has_redis) {
            Outcome::Rejected(r) => seen_codes[index_of(r.code)] += 1,
            Outcome::Delete(_) => deletes += 1,
            Outcome::Put(item, _) if item.content_type() == ContentType::Json => json += 1,
            Outcome::Put(..) => binary += 1,
        }
    }
    let missing: Vec<&str> = ALL_CODES
        .iter()
        .filter(|&&c| seen_codes[index_of(c)] == 0)
        .map(|c| c.as_str())
        .collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
    assert!(
        deletes > 0 && json > 0 && binary > 0,
        "deletes {deletes}, JSON puts {json}, binary puts {binary}"
    );
}

/// The README's DLQ table and `DlqCode` are the same set (the check behind property 2).
#[test]
fn readme_documents_exactly_the_codes() {
    let documented = documented_codes();
    assert_eq!(documented.len(), ALL_CODES.len(), "{documented:?}");
    for code in ALL_CODES {
        assert!(is_documented(code), "{} is not documented", code.as_str());
    }
    assert!(
        ALL_CODES
            .iter()
            .enumerate()
            .all(|(i, &code)| index_of(code) == i),
        "ALL_CODES and index_of disagree"
    );
}

/// The RFC 8259 oracle itself, against serde_json on values serde_json parses fully (its
/// `Value` parser has a nesting and a number-range limit, hence the exceptions).
#[test]
fn json_oracle_sanity() {
    for (text, json) in [
        (&b"{}"[..], true),
        (b" [1, {\"a\": [true, false, null]}, \"x\"] ", true),
        (b"1e400", true),
        (b"-0.5E-3", true),
        (b"\"\\ud800\"", true),
        (b"01", false),
        (b"[1,]", false),
        (b"{\"a\":1,}", false),
        (b"", false),
        (b" ", false),
        (b"[}", false),
        (b"{]", false),
        (b"\"\x01\"", false),
        (b"\xef\xbb\xbf{}", false),
        (b"{\"a\" 1}", false),
        (b"1 2", false),
        (b"-", false),
        (b"1.", false),
        (b"1e", false),
        (b"nul", false),
    ] {
        assert_eq!(json_grammar(text), json, "{}", text.escape_ascii());
    }
    assert!(json_grammar(&nested(100_000, true)));
    assert!(!json_grammar(&nested(100_000, false)));
    let mut runner = deterministic_runner();
    let strategy = json_text();
    for _ in 0..500 {
        let text = strategy.new_tree(&mut runner).expect("text").current();
        assert!(json_grammar(text.as_bytes()), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Corpus

fn rec(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)]) -> Rec {
    Rec {
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        headers: headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.map(<[u8]>::to_vec)))
            .collect(),
    }
}

/// A header with a text value.
fn h<'a>(name: &'a str, value: &'a str) -> (&'a str, Option<&'a [u8]>) {
    (name, Some(value.as_bytes()))
}

fn rejected(code: DlqCode) -> Expected {
    Expected::Reject(code)
}

fn put(content_type: ContentType) -> Expected {
    put_with(content_type, true, true, None, None)
}

fn put_with(
    content_type: ContentType,
    redis: bool,
    sql: bool,
    redis_ttl: Option<CacheTtl>,
    state: Option<&str>,
) -> Expected {
    Expected::Put {
        content_type,
        options: SubmitOptions {
            redis,
            redis_ttl,
            sql,
            state: state.map(str::to_string),
        },
    }
}

struct Case {
    name: &'static str,
    rec: Rec,
    max: usize,
    has_redis: bool,
    expected: Expected,
}

fn case(name: &'static str, rec: Rec, expected: Expected) -> Case {
    Case {
        name,
        rec,
        max: DEFAULT_MAX,
        has_redis: true,
        expected,
    }
}

fn corpus() -> Vec<Case> {
    use ContentType::{Binary, Json};
    let k = Some(&b"k"[..]);
    let one = Some(&b"1"[..]);
    let a255 = "a".repeat(255);
    let a256 = "a".repeat(256);
    let euro85 = "€".repeat(85);
    let euro86 = "€".repeat(86);
    let euro100 = "€".repeat(100);
    let straddle = format!("{}€", "a".repeat(254)); // 257 bytes
    let e_acute_255 = format!("{}é", "a".repeat(253)); // 255 bytes
    let mut cut_euro = "a".repeat(254).into_bytes(); // 255 bytes, the last a lead byte
    cut_euro.push(0xe2);
    let mut long_bad = vec![b'a'; 300];
    long_bad[0] = 0xff;
    let deep = nested(100_000, true);
    let deep_open = nested(100_000, false);
    let big = vec![0u8; DEFAULT_MAX + 1];
    let at_max = vec![0x5a; 65_536];
    let s255 = "s".repeat(255);
    let s256 = "s".repeat(256);
    let padded_s255 = format!(" \t{s255}\n ");
    let json_ct = h("content-type", "application/json");

    let mut cases = vec![
        // keys
        case("no key", rec(None, one, &[]), rejected(MissingKey)),
        case(
            "no key, no value",
            rec(None, None, &[]),
            rejected(MissingKey),
        ),
        case(
            "key ff 61",
            rec(Some(b"\xffa"), one, &[]),
            rejected(KeyNotUtf8),
        ),
        case(
            "key lone continuation byte",
            rec(Some(b"\x80"), one, &[]),
            rejected(KeyNotUtf8),
        ),
        case(
            "key overlong NUL",
            rec(Some(b"\xc0\x80"), one, &[]),
            rejected(KeyNotUtf8),
        ),
        case(
            "key encoded surrogate",
            rec(Some(b"\xed\xa0\x80"), one, &[]),
            rejected(KeyNotUtf8),
        ),
        case(
            "key '€' cut at 255 bytes",
            rec(Some(&cut_euro), one, &[]),
            rejected(KeyNotUtf8),
        ),
        case(
            "300-byte key, not UTF-8: UTF-8 is checked first",
            rec(Some(&long_bad), one, &[]),
            rejected(KeyNotUtf8),
        ),
        case("empty key", rec(Some(b""), one, &[]), rejected(EmptyKey)),
        case(
            "empty key, null value",
            rec(Some(b""), None, &[]),
            rejected(EmptyKey),
        ),
        case(
            "255-byte key",
            rec(Some(a255.as_bytes()), one, &[]),
            put(Json),
        ),
        case(
            "256-byte key",
            rec(Some(a256.as_bytes()), one, &[]),
            rejected(KeyTooLong),
        ),
        case(
            "85 × € = 255 bytes",
            rec(Some(euro85.as_bytes()), one, &[]),
            put(Json),
        ),
        case(
            "86 × € = 258 bytes",
            rec(Some(euro86.as_bytes()), one, &[]),
            rejected(KeyTooLong),
        ),
        case(
            "100 × € = 300 bytes",
            rec(Some(euro100.as_bytes()), None, &[]),
            rejected(KeyTooLong),
        ),
        case(
            "€ straddling byte 255",
            rec(Some(straddle.as_bytes()), one, &[]),
            rejected(KeyTooLong),
        ),
        case(
            "é ending at byte 255",
            rec(Some(e_acute_255.as_bytes()), one, &[]),
            put(Json),
        ),
        case(
            "key is whitespace, kept as is",
            rec(Some(b" "), None, &[]),
            Expected::Delete(" ".into()),
        ),
        // deletes: the key only
        case(
            "delete ignores broken headers",
            rec(
                k,
                None,
                &[
                    h("content-type", "text/plain"),
                    ("sync-state", Some(b"\xff")),
                    h("sync-route", "disk"),
                    h("sync-ttl", "0"),
                ],
            ),
            Expected::Delete("k".into()),
        ),
        // sizes
        Case {
            max: 4,
            ..case(
                "5 bytes over max 4",
                rec(k, Some(b"12345"), &[]),
                rejected(PayloadTooLarge),
            )
        },
        Case {
            max: 5,
            ..case("5 bytes at max 5", rec(k, Some(b"12345"), &[]), put(Json))
        },
        Case {
            max: 0,
            ..case("empty value at max 0", rec(k, Some(b""), &[]), put(Binary))
        },
        Case {
            max: 0,
            ..case(
                "delete at max 0",
                rec(k, None, &[]),
                Expected::Delete("k".into()),
            )
        },
        case(
            "16 MiB + 1",
            rec(k, Some(&big), &[]),
            rejected(PayloadTooLarge),
        ),
        Case {
            max: at_max.len(),
            ..case("64 KiB at max", rec(k, Some(&at_max), &[]), put(Binary))
        },
        Case {
            max: 1,
            ..case(
                "too large before a non-UTF-8 content-type",
                rec(k, Some(b"12"), &[("content-type", Some(b"\xff"))]),
                rejected(PayloadTooLarge),
            )
        },
        // content type
        case(
            "non-UTF-8 content-type before invalid_json",
            rec(
                k,
                Some(b"{"),
                &[("content-type", Some(b"application/json\xff"))],
            ),
            rejected(HeaderNotUtf8),
        ),
        case(
            "text/plain",
            rec(k, one, &[h("content-type", "text/plain")]),
            rejected(UnknownContentType),
        ),
        case(
            "empty content-type",
            rec(k, one, &[h("content-type", "  ")]),
            rejected(UnknownContentType),
        ),
        case(
            "casing and parameters",
            rec(
                k,
                Some(b"{\"a\":1}"),
                &[h("Content-Type", " APPLICATION/JSON ; charset=utf-8 ")],
            ),
            put(Json),
        ),
        case(
            "declared JSON, truncated",
            rec(k, Some(b"{\"a\":"), &[json_ct]),
            rejected(InvalidJson),
        ),
        case(
            "declared JSON, empty",
            rec(k, Some(b""), &[json_ct]),
            rejected(InvalidJson),
        ),
        case(
            "declared JSON, trailing garbage",
            rec(k, Some(b"{} x"), &[json_ct]),
            rejected(InvalidJson),
        ),
        case(
            "declared JSON, BOM",
            rec(k, Some(b"\xef\xbb\xbf{}"), &[json_ct]),
            rejected(InvalidJson),
        ),
        case(
            "declared binary, JSON bytes",
            rec(
                k,
                Some(b"{}"),
                &[h("content-type", "application/octet-stream")],
            ),
            put(Binary),
        ),
        case(
            "1e400 detected as JSON, kept verbatim",
            rec(k, Some(b"1e400"), &[]),
            put(Json),
        ),
        case(
            "declared JSON with 1e400",
            rec(k, Some(b"{\"a\": 1e400}"), &[json_ct]),
            put(Json),
        ),
        case(
            "lone surrogate escape is JSON grammar",
            rec(k, Some(b"\"\\ud800\""), &[]),
            put(Json),
        ),
        case(
            "100 000 nested arrays, no stack overflow",
            rec(k, Some(&deep), &[json_ct]),
            put(Json),
        ),
        case(
            "100 000 unclosed arrays",
            rec(k, Some(&deep_open), &[]),
            put(Binary),
        ),
        case(
            "two JSON documents",
            rec(k, Some(b"{}{}"), &[]),
            put(Binary),
        ),
        case("NUL bytes", rec(k, Some(b"\0\x01\xff"), &[]), put(Binary)),
        // route
        case(
            "route disk",
            rec(k, one, &[h("sync-route", "disk")]),
            rejected(UnknownRoute),
        ),
        case(
            "empty route",
            rec(k, one, &[h("sync-route", "")]),
            rejected(UnknownRoute),
        ),
        case(
            "whitespace route",
            rec(k, one, &[h("sync-route", " \t ")]),
            rejected(UnknownRoute),
        ),
        case(
            "route redis,,sql",
            rec(k, one, &[h("sync-route", "redis,,sql")]),
            rejected(UnknownRoute),
        ),
        case(
            "route values are case-sensitive",
            rec(k, one, &[h("sync-route", "REDIS")]),
            rejected(UnknownRoute),
        ),
        case(
            "route padded parts",
            rec(k, one, &[h("SYNC-ROUTE", " sql , redis ")]),
            put(Json),
        ),
        case(
            "route sql",
            rec(k, one, &[h("sync-route", "sql")]),
            put_with(Json, false, true, None, None),
        ),
        case(
            "route redis,redis",
            rec(k, one, &[h("sync-route", "redis,redis")]),
            put_with(Json, true, false, None, None),
        ),
        Case {
            has_redis: false,
            ..case(
                "redis-only without Redis",
                rec(k, one, &[h("sync-route", "redis")]),
                rejected(RouteUnavailable),
            )
        },
        Case {
            has_redis: false,
            ..case(
                "both routes without Redis",
                rec(k, one, &[h("sync-route", "redis,sql")]),
                put(Json),
            )
        },
        Case {
            has_redis: false,
            ..case("default route without Redis", rec(k, one, &[]), put(Json))
        },
        Case {
            has_redis: false,
            // README order: sync-ttl is read before route_unavailable is decided
            ..case(
                "redis-only without Redis and a non-UTF-8 TTL",
                rec(
                    k,
                    one,
                    &[h("sync-route", "redis"), ("sync-ttl", Some(b"\xff"))],
                ),
                rejected(HeaderNotUtf8),
            )
        },
        Case {
            has_redis: false,
            ..case(
                "unknown route before route_unavailable",
                rec(k, one, &[h("sync-route", "redis,disk")]),
                rejected(UnknownRoute),
            )
        },
        // TTL
        case(
            "ttl 0",
            rec(k, one, &[h("sync-ttl", "0")]),
            rejected(MalformedTtl),
        ),
        case(
            "ttl soon",
            rec(k, one, &[h("sync-ttl", "soon")]),
            rejected(MalformedTtl),
        ),
        case(
            "ttl -5",
            rec(k, one, &[h("sync-ttl", "-5")]),
            rejected(MalformedTtl),
        ),
        case(
            "ttl 1.5",
            rec(k, one, &[h("sync-ttl", "1.5")]),
            rejected(MalformedTtl),
        ),
        case(
            "ttl over ten years",
            rec(k, one, &[h("sync-ttl", "315360001")]),
            rejected(MalformedTtl),
        ),
        case(
            "ttl over u64",
            rec(k, one, &[h("sync-ttl", "18446744073709551616")]),
            rejected(MalformedTtl),
        ),
        case(
            "ttl named values are case-sensitive",
            rec(k, one, &[h("sync-ttl", "Hour")]),
            rejected(MalformedTtl),
        ),
        case(
            "ttl ten years",
            rec(k, one, &[h("sync-ttl", "315360000")]),
            put_with(Json, true, true, Some(CacheTtl::Custom(MAX_TTL_SECS)), None),
        ),
        case(
            "ttl padded name",
            rec(k, one, &[h("Sync-TTL", "\t hour \r\n")]),
            put_with(Json, true, true, Some(CacheTtl::Hour), None),
        ),
        case(
            "ttl with route sql",
            rec(k, one, &[h("sync-route", "sql"), h("sync-ttl", "60")]),
            rejected(TtlWithoutRedis),
        ),
        case(
            "malformed ttl before ttl_without_redis",
            rec(k, one, &[h("sync-route", "sql"), h("sync-ttl", "soon")]),
            rejected(MalformedTtl),
        ),
        // state
        case(
            "empty state",
            rec(k, one, &[h("sync-state", "")]),
            rejected(InvalidState),
        ),
        case(
            "blank state",
            rec(k, one, &[h("sync-state", " \t\n")]),
            rejected(InvalidState),
        ),
        case(
            "256-byte state",
            rec(k, one, &[h("sync-state", &s256)]),
            rejected(InvalidState),
        ),
        case(
            "255-byte state, padded",
            rec(k, one, &[h("sync-state", &padded_s255)]),
            put_with(Json, true, true, None, Some(&s255)),
        ),
        case(
            "non-UTF-8 state",
            rec(k, one, &[("sync-state", Some(b"\xff"))]),
            rejected(HeaderNotUtf8),
        ),
        case(
            "non-UTF-8 state is read last",
            rec(
                k,
                one,
                &[("sync-state", Some(b"\xff")), h("sync-ttl", "soon")],
            ),
            rejected(MalformedTtl),
        ),
        // header lists
        case(
            "last content-type wins",
            rec(
                k,
                Some(b"{}"),
                &[
                    h("content-type", "text/plain"),
                    h("CONTENT-TYPE", "application/json"),
                ],
            ),
            put(Json),
        ),
        case(
            "a null last header means absent",
            rec(k, Some(b"{"), &[json_ct, ("Content-Type", None)]),
            put(Binary),
        ),
        case(
            "a shadowed non-UTF-8 header is not read",
            rec(
                k,
                one,
                &[("sync-state", Some(b"\xff")), h("sync-state", "ok")],
            ),
            put_with(Json, true, true, None, Some("ok")),
        ),
        case(
            "non-UTF-8 header the decoder does not read",
            rec(k, one, &[("traceparent", Some(b"\xff\xfe"))]),
            put(Json),
        ),
        case(
            "Unicode look-alike header names are other headers",
            rec(
                k,
                one,
                &[h("ſync-route", "disk"), h("ＣONTENT-TYPE", "text/plain")],
            ),
            put(Json),
        ),
        case(
            "everything at once",
            rec(
                Some("ü/€/😀".as_bytes()),
                Some(b" [1e400, \"\\u00e9\"] "),
                &[
                    h("x", "y"),
                    h("Content-Type", "application/json"),
                    h("sync-route", "redis"),
                    h("sync-ttl", "week"),
                    h("sync-state", " hot "),
                ],
            ),
            put_with(Json, true, false, Some(CacheTtl::Week), Some("hot")),
        ),
    ];
    for c in &mut cases {
        // every case also decodes with an unrelated header in front (property 6)
        c.rec
            .headers
            .insert(0, ("x-noise".into(), Some(b"\xff".to_vec())));
    }
    cases
}

/// A fixed corpus of nasty records (every DLQ code at least once, and the edges around each
/// check) with the outcome each must have, through the same checks as the properties.
#[test]
fn corpus_of_nasty_records() {
    let cases = corpus();
    let mut covered = [false; 13];
    for c in &cases {
        let outcome = check(&c.rec, c.max, c.has_redis)
            .unwrap_or_else(|e| panic!("{}: {e}\n{:?}", c.name, c.rec));
        assert_eq!(summary(&outcome), c.expected, "{}: {:?}", c.name, c.rec);
        if let Expected::Reject(code) = c.expected {
            covered[index_of(code)] = true;
        }
    }
    for code in ALL_CODES {
        assert!(
            covered[index_of(code)],
            "no corpus case for {}",
            code.as_str()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: discrepancies this file found, fixed in src

/// A value that is JSON in shape but not UTF-8 is not JSON (RFC 8259 §8.1): `"\xff"` (quote,
/// ff, quote) declared application/json is `invalid_json`, and undeclared it is binary. (It was
/// accepted as JSON: serde_json's `IgnoredAny` skips string contents without checking them.)
#[test]
fn json_strings_must_be_utf8() {
    let value: &[u8] = b"\"\xff\"";
    let declared = rec(
        Some(b"k"),
        Some(value),
        &[h("content-type", "application/json")],
    );
    let detected = rec(Some(b"k"), Some(value), &[]);
    let got = (
        summary(&run(&declared, DEFAULT_MAX, true)),
        summary(&run(&detected, DEFAULT_MAX, true)),
    );
    assert_eq!(
        got,
        (rejected(InvalidJson), put(ContentType::Binary)),
        "value b\"\\\"\\xff\\\"\": (declared application/json, no content-type)"
    );
}

/// schemas/README.md says "the checks run in the order below and the first failure decides the
/// code": a record with both problems gets the code of whichever comes first in the table.
/// (`decode` used to decide `route_unavailable` before it read `sync-ttl`.)
#[test]
fn readme_check_order_decides_malformed_ttl_vs_route_unavailable() {
    let order = documented_codes();
    let position = |code: DlqCode| {
        order
            .iter()
            .position(|c| *c == code.as_str())
            .expect("documented")
    };
    let documented_first = if position(MalformedTtl) < position(RouteUnavailable) {
        MalformedTtl
    } else {
        RouteUnavailable
    };
    let both = rec(
        Some(b"k"),
        Some(b"1"),
        &[h("sync-route", "redis"), h("sync-ttl", "soon")],
    );
    assert_eq!(
        summary(&run(&both, DEFAULT_MAX, false)),
        rejected(documented_first),
        "sync-route: redis + sync-ttl: soon on a sidecar without Redis"
    );
}
