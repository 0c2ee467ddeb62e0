//! What the sidecar produces: confirmations (one per flushed batch per source partition) and
//! DLQ records. JSON Schemas: `schemas/confirmation.schema.json`, `schemas/dlq-record.schema.json`.

use serde::Serialize;

/// One source record accounted for in a confirmation: written (`put`/`delete`) or sent to
/// the DLQ. Identified by (topic, partition, offset); a replay yields the same identities.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConfirmedItem {
    pub offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub op: Op,
    /// Hex SHA-256 of the payload as stored (puts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// Tiers the write went to (empty for DLQ records).
    pub tiers: Vec<&'static str>,
    /// The DLQ code (DLQ records only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Delete,
    Dlq,
}

/// Everything of one source partition made durable by one flush.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Confirmation {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub source_topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub items: Vec<ConfirmedItem>,
    /// The partition's Merkle state root once these items are committed (hex).
    pub state_root: String,
    /// How many items the partition holds then.
    pub item_count: u64,
}

impl Confirmation {
    pub const KIND: &'static str = "confirmation";

    /// The record key: `<topic>:<partition>`, so one partition's confirmations stay ordered.
    pub fn key(&self) -> String {
        format!("{}:{}", self.source_topic, self.partition)
    }
}

/// A partition's committed state at one offset: anyone can recompute `state_root` from SQL
/// (schemas/MERKLE.md) and compare. Same key as the partition's confirmations.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Checkpoint {
    #[serde(rename = "type")]
    pub kind: String,
    pub source_topic: String,
    pub partition: i32,
    /// The last source offset the state includes (the committed consumer offset is one more).
    pub offset: i64,
    pub state_root: String,
    pub item_count: u64,
    pub algorithm: String,
}

impl Checkpoint {
    pub const KIND: &'static str = "checkpoint";

    pub fn key(&self) -> String {
        format!("{}:{}", self.source_topic, self.partition)
    }

    /// The engine's name of the partition (the `source` column): `<topic>/<partition>`.
    pub fn source(&self) -> String {
        format!("{}/{}", self.source_topic, self.partition)
    }
}

/// Headers the DLQ record carries besides the original ones.
pub const DLQ_HEADERS: [&str; 5] = [
    "sync-error-code",
    "sync-error-message",
    "sync-source-topic",
    "sync-source-partition",
    "sync-source-offset",
];
