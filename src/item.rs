//! `SyncItem`: an id, the exact payload bytes, and what the engine knows about them.
//!
//! The payload is never re-encoded: JSON is detected (the bytes parse fully as JSON) but kept
//! byte-for-byte, so `get` returns exactly what was submitted from any tier. `content_hash` is
//! the hex SHA-256 of those bytes and is what `get_verified` and the Merkle roots check.

use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Result, SyncError};

/// Longest id (and state) in bytes; the SQL key column is `VARBINARY(255)`.
pub const MAX_ID_BYTES: usize = 255;
/// State given to items submitted without one.
pub const DEFAULT_STATE: &str = "default";
/// Source of items submitted through the library API (the sidecar uses `topic/partition`).
pub const LOCAL_SOURCE: &str = "local";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// The bytes parse fully as JSON; stored in the SQL `payload` text column.
    Json,
    /// Anything else; stored in `payload_blob`.
    Binary,
}

impl ContentType {
    /// JSON when the bytes are UTF-8 (RFC 8259 §8.1; serde_json skips over string contents
    /// without checking them) and parse fully as one JSON value.
    pub fn detect(bytes: &[u8]) -> Self {
        let text = std::str::from_utf8(bytes);
        if text.is_ok_and(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok()) {
            ContentType::Json
        } else {
            ContentType::Binary
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncItem {
    id: String,
    content: Vec<u8>,
    content_type: ContentType,
    content_hash: String,
    state: String,
    version: u64,
    source: Arc<str>,
    /// How the item is routed to Redis: `None` not at all, `Some(0)` without TTL,
    /// `Some(ms)` with that TTL. Stored in SQL so a read from SQL can re-cache it.
    redis_ttl_ms: Option<u64>,
}

/// Hex SHA-256 of `bytes`.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl SyncItem {
    /// An item from raw bytes; the content type is detected.
    pub fn new(id: String, content: Vec<u8>) -> Self {
        let content_type = ContentType::detect(&content);
        let content_hash = content_hash(&content);
        SyncItem {
            id,
            content,
            content_type,
            content_hash,
            state: DEFAULT_STATE.to_string(),
            version: 0,
            source: Arc::from(LOCAL_SOURCE),
            redis_ttl_ms: Some(0),
        }
    }

    /// An item whose bytes are binary even if they happen to parse as JSON (a producer said
    /// `application/octet-stream`): stored in `payload_blob`, never a RedisJSON document.
    pub fn binary(id: String, content: Vec<u8>) -> Self {
        let mut item = Self::new(id, content);
        item.content_type = ContentType::Binary;
        item
    }

    /// An item from a JSON value, serialized compactly. To keep a particular formatting,
    /// pass the bytes to [`SyncItem::new`] instead.
    pub fn from_json(id: String, value: Value) -> Self {
        Self::new(
            id,
            serde_json::to_vec(&value).expect("a Value always serializes"),
        )
    }

    pub fn with_state(mut self, state: impl Into<String>) -> Self {
        self.state = state.into();
        self
    }

    /// Pins the version the item is written with. Writes are version-guarded: an item only
    /// replaces a stored one with a lower version, so replaying an old version is a no-op.
    /// Items without one get the engine's clock (microseconds, strictly increasing).
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    pub(crate) fn with_source(mut self, source: Arc<str>) -> Self {
        self.source = source;
        self
    }

    /// Rebuilds an item read back from a tier, keeping the hash that tier stored.
    pub(crate) fn from_stored(
        id: String,
        content: Vec<u8>,
        content_type: ContentType,
        content_hash: String,
        state: String,
        version: u64,
        redis_ttl_ms: Option<u64>,
    ) -> Self {
        SyncItem {
            id,
            content,
            content_type,
            content_hash,
            state,
            version,
            source: Arc::from(LOCAL_SOURCE),
            redis_ttl_ms,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn content(&self) -> &[u8] {
        &self.content
    }
    pub fn content_type(&self) -> ContentType {
        self.content_type
    }
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }
    pub fn state(&self) -> &str {
        &self.state
    }
    /// 0 until the engine assigns one (or [`SyncItem::with_version`] pinned one).
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn source(&self) -> &Arc<str> {
        &self.source
    }

    pub fn content_as_json(&self) -> Option<Value> {
        match self.content_type {
            ContentType::Json => serde_json::from_slice(&self.content).ok(),
            ContentType::Binary => None,
        }
    }

    /// The payload as text when it is JSON (JSON is always valid UTF-8).
    pub fn json_text(&self) -> Option<&str> {
        match self.content_type {
            ContentType::Json => std::str::from_utf8(&self.content).ok(),
            ContentType::Binary => None,
        }
    }

    /// Recomputes the hash of the content and compares it with the stored one.
    pub fn verify(&self) -> Result<()> {
        let computed = content_hash(&self.content);
        if computed == self.content_hash {
            Ok(())
        } else {
            Err(SyncError::Corrupt {
                id: self.id.clone(),
                stored: self.content_hash.clone(),
                computed,
            })
        }
    }

    /// Bytes this item holds in memory, for L1 accounting.
    pub(crate) fn mem_size(&self) -> usize {
        const OVERHEAD: usize = 128;
        self.id.len() + self.content.len() + self.state.len() + self.content_hash.len() + OVERHEAD
    }

    pub(crate) fn redis_ttl_ms(&self) -> Option<u64> {
        self.redis_ttl_ms
    }

    pub(crate) fn set_redis_ttl_ms(&mut self, ttl_ms: Option<u64>) {
        self.redis_ttl_ms = ttl_ms;
    }

    pub(crate) fn set_version(&mut self, version: u64) {
        self.version = version;
    }
    pub(crate) fn set_state(&mut self, state: String) {
        self.state = state;
    }
}

/// What is wrong with an id or a state name, if anything: both are 1 to 255 bytes.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_ID_BYTES {
        Some("longer than 255 bytes")
    } else {
        None
    }
}

pub fn validate_id(id: &str) -> Result<()> {
    match name_problem(id) {
        None => Ok(()),
        Some(reason) => Err(SyncError::InvalidId {
            id: truncate(id),
            reason,
        }),
    }
}

pub fn validate_state(state: &str) -> Result<()> {
    match name_problem(state) {
        None => Ok(()),
        Some(reason) => Err(SyncError::InvalidState {
            state: truncate(state),
            reason,
        }),
    }
}

/// Error messages quote at most 64 characters of hostile input.
pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_detected_but_kept_verbatim() {
        let raw = br#"{ "b" : 1,   "a": [1.0e3, "\u00e9"] }"#.to_vec();
        let item = SyncItem::new("x".into(), raw.clone());
        assert_eq!(item.content_type(), ContentType::Json);
        assert_eq!(item.content(), &raw[..]);
        assert_eq!(item.content_hash(), content_hash(&raw));
    }

    #[test]
    fn json_strings_must_be_utf8() {
        assert_eq!(ContentType::detect(b"\"\xff\""), ContentType::Binary);
        assert_eq!(ContentType::detect("\"é\"".as_bytes()), ContentType::Json);
    }

    #[test]
    fn partial_json_and_nul_bytes_are_binary() {
        assert_eq!(
            ContentType::detect(b"{\"a\":1} trailing"),
            ContentType::Binary
        );
        assert_eq!(ContentType::detect(b"\0\x01\xff"), ContentType::Binary);
        assert_eq!(ContentType::detect(b""), ContentType::Binary);
        assert_eq!(ContentType::detect(b"42"), ContentType::Json);
    }

    #[test]
    fn hash_is_hex_sha256() {
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("").is_err());
        assert!(validate_id(&"a".repeat(255)).is_ok());
        assert!(validate_id(&"a".repeat(256)).is_err());
        // 85 three-byte characters = 255 bytes, 86 = 258 bytes
        assert!(validate_id(&"€".repeat(85)).is_ok());
        assert!(validate_id(&"€".repeat(86)).is_err());
    }

    #[test]
    fn verify_detects_tampering() {
        let item = SyncItem::from_stored(
            "x".into(),
            b"abc".to_vec(),
            ContentType::Binary,
            content_hash(b"abd"),
            DEFAULT_STATE.into(),
            1,
            None,
        );
        assert!(matches!(item.verify(), Err(SyncError::Corrupt { .. })));
    }
}
