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
    pub op: ConfirmedOp,
    /// What the write did (puts and deletes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Hex SHA-256 of the payload as stored (puts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// Tiers the write went to (empty for DLQ records).
    pub tiers: Vec<&'static str>,
    /// The DLQ code (DLQ records only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
}

/// What a confirmed record was: a put, a delete, or a record sent to the DLQ (the `op` field
/// of a confirmation; not the batch's [`crate::tier::Op`]).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConfirmedOp {
    Put,
    Delete,
    Dlq,
}

impl ConfirmedOp {
    /// As serialized (`put`, `delete`, `dlq`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConfirmedOp::Put => "put",
            ConfirmedOp::Delete => "delete",
            ConfirmedOp::Dlq => "dlq",
        }
    }
}

/// What a put or delete did to the stores.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The write took effect (SQL committed it; Redis took it or is being repaired to it).
    Applied,
    /// Nothing changed: its partition had already committed this offset (a replay after a
    /// crash or rebalance).
    Unchanged,
}

impl Outcome {
    /// As serialized (`applied`, `unchanged`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// Consecutive records of one source partition made durable by one flush. A flush whose
/// confirmation would not fit one Kafka message is split into several, with consecutive,
/// non-overlapping offset ranges and the same `state_root`, `item_count` and `state_offset`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Confirmation {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub source_topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub items: Vec<ConfirmedItem>,
    /// The partition's Merkle state root once the flush is committed (hex)…
    pub state_root: String,
    /// …how many items the partition holds then…
    pub item_count: u64,
    /// …and the last source offset that state includes: the flush's last offset, or a later
    /// one when SQL already held more of the partition (a replay after a crash).
    pub state_offset: i64,
}

impl Confirmation {
    pub const KIND: &'static str = "confirmation";

    /// The flush's confirmation as serialized events of at most `max_bytes` each (fewer when
    /// one item alone is larger). `template` carries everything but the items.
    pub fn split(
        template: &Confirmation,
        items: &[ConfirmedItem],
        max_bytes: usize,
    ) -> Vec<Vec<u8>> {
        let envelope = |part: &[ConfirmedItem]| {
            let mut event = template.clone();
            event.first_offset = part.first().map_or(0, |i| i.offset);
            event.last_offset = part.last().map_or(0, |i| i.offset);
            event.items = part.to_vec();
            serde_json::to_vec(&event).expect("a confirmation serializes")
        };
        let whole = envelope(items);
        if whole.len() <= max_bytes {
            return vec![whole];
        }
        // the envelope without items, with room for the two offsets' digits
        let fixed = envelope(&[]).len() + 40;
        let mut events = Vec::new();
        let mut start = 0;
        let mut size = fixed;
        for (n, item) in items.iter().enumerate() {
            let len = serde_json::to_vec(item).expect("an item serializes").len() + 1;
            if n > start && size + len > max_bytes {
                events.push(envelope(&items[start..n]));
                start = n;
                size = fixed;
            }
            size += len;
        }
        if start < items.len() {
            events.push(envelope(&items[start..]));
        }
        events
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(offset: i64) -> ConfirmedItem {
        ConfirmedItem {
            offset,
            id: Some(format!("id-{offset:05}-{}", "x".repeat(40))),
            op: ConfirmedOp::Put,
            outcome: Some(Outcome::Applied),
            content_hash: Some("ab".repeat(32)),
            tiers: vec!["sql", "redis"],
            error_code: None,
        }
    }

    fn template() -> Confirmation {
        Confirmation {
            kind: Confirmation::KIND,
            source_topic: "orders".into(),
            partition: 3,
            first_offset: 0,
            last_offset: 0,
            items: Vec::new(),
            state_root: "cd".repeat(32),
            item_count: 10_000,
            state_offset: 99_999,
        }
    }

    #[test]
    fn a_large_flush_splits_into_consecutive_events_under_the_limit() {
        let items: Vec<ConfirmedItem> = (90_000..100_000).map(item).collect();
        for limit in [2048, 10_000, 1_000_000] {
            let events = Confirmation::split(&template(), &items, limit);
            let mut next = 90_000;
            for (n, body) in events.iter().enumerate() {
                assert!(body.len() <= limit, "{} > {limit}", body.len());
                if n + 1 < events.len() {
                    assert!(body.len() > limit * 3 / 4, "greedy: events are filled");
                }
                let event: serde_json::Value = serde_json::from_slice(body).unwrap();
                let offsets: Vec<i64> = event["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["offset"].as_i64().unwrap())
                    .collect();
                assert_eq!(event["first_offset"], offsets[0]);
                assert_eq!(event["last_offset"], *offsets.last().unwrap());
                assert_eq!(offsets[0], next, "consecutive, non-overlapping");
                next = offsets.last().unwrap() + 1;
                assert_eq!(event["state_offset"], 99_999);
            }
            assert_eq!(next, 100_000, "every item once");
        }
        let one = Confirmation::split(&template(), &items[..100], 1_000_000);
        assert_eq!(one.len(), 1, "a small flush is one event");
    }
}
