//! `sync-engine tail --pipeline FILE`: follows the output topic (confirmations, checkpoints)
//! and the DLQ topic with a consumer of its own — `assign`ed partitions, a group of its own,
//! nothing ever committed — so the sidecar's group never notices it.
//!
//! One line per event, or with `--json` one JSON object per line: `kind` (`confirmation`,
//! `checkpoint`, `dlq`, or `other` for records that are none of these), where it was read
//! (`topic`, `partition`, `offset`, `timestamp_ms`) and the `event` as published. A DLQ record
//! (and an `other`) is rendered as in `schemas/dlq-record.schema.json` — `key`, `value`,
//! `headers` — with bytes that are not UTF-8 in hex, those fields then listed in `hex`.
//! `--max N` stops after N events; Ctrl-C (or a closed stdout) stops at once.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};
use sync_engine::sidecar::checkpoints::reader_config;
use sync_engine::sidecar::config::PipelineConfig;
use tracing::{info, warn};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Which of the two topics to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topics {
    Both,
    OutputOnly,
    DlqOnly,
}

pub struct TailOptions {
    pub pipeline: PathBuf,
    pub json: bool,
    pub from_beginning: bool,
    pub topics: Topics,
    pub max: Option<u64>,
}

pub async fn tail(options: TailOptions, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let config = PipelineConfig::load(&options.pipeline)?;
    tokio::task::spawn_blocking(move || follow(&config, &options, &stop)).await?
}

fn follow(config: &PipelineConfig, options: &TailOptions, stop: &AtomicBool) -> anyhow::Result<()> {
    let kafka = &config.kafka;
    let consumer: BaseConsumer = reader_config(config, "tail")
        .create()
        .with_context(|| format!("Kafka at {}", kafka.brokers))?;
    let topics = match options.topics {
        Topics::Both => vec![&kafka.output_topic, &kafka.dlq_topic],
        Topics::OutputOnly => vec![&kafka.output_topic],
        Topics::DlqOnly => vec![&kafka.dlq_topic],
    };
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .with_context(|| format!("Kafka at {}: the metadata of {topic}", kafka.brokers))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic.as_str() && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            bail!("Kafka at {}: there is no topic {topic}", kafka.brokers);
        }
        info!(
            topic,
            partitions = partitions.len(),
            from_beginning = options.from_beginning,
            "following"
        );
        for partition in partitions {
            assignment.add_partition_offset(topic, partition, start)?;
        }
    }
    consumer.assign(&assignment)?;
    let mut stdout = std::io::stdout().lock();
    let mut shown = 0;
    while !stop.load(Ordering::SeqCst) && options.max.is_none_or(|max| shown < max) {
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                warn!(error = %e, "consumer error (librdkafka retries)");
                continue;
            }
        };
        let event = Event::read(&message, message.topic() == kafka.dlq_topic);
        let line = if options.json {
            event.json_line()
        } else {
            event.text_line()
        };
        if writeln!(stdout, "{line}").is_err() {
            break; // stdout closed (`| head`): nothing more to show
        }
        shown += 1;
    }
    Ok(())
}

/// One record of either topic, and where it was read.
struct Event {
    kind: &'static str,
    event: Value,
    /// The fields of `event` rendered in hex (not UTF-8).
    hex: Vec<String>,
    topic: String,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    bytes: usize,
}

impl Event {
    fn read(message: &BorrowedMessage<'_>, dlq: bool) -> Event {
        let published = (!dlq)
            .then(|| serde_json::from_slice::<Value>(message.payload()?).ok())
            .flatten();
        let kind = match published.as_ref().and_then(|e| e["type"].as_str()) {
            Some("confirmation") => "confirmation",
            Some("checkpoint") => "checkpoint",
            _ if dlq => "dlq",
            _ => "other",
        };
        let (event, hex) = match published {
            Some(event) if kind != "other" => (event, Vec::new()),
            _ => rendered(message),
        };
        Event {
            kind,
            event,
            hex,
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            bytes: message.payload_len(),
        }
    }

    fn json_line(&self) -> String {
        let mut line = json!({
            "kind": self.kind,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "event": self.event,
        });
        if !self.hex.is_empty() {
            line["hex"] = json!(self.hex);
        }
        line.to_string()
    }

    fn text_line(&self) -> String {
        let e = &self.event;
        let source = |topic: &Value, partition: &Value| {
            format!("{}/{}", topic.as_str().unwrap_or("?"), text(partition))
        };
        match self.kind {
            "confirmation" => {
                let items = e["items"].as_array().map_or(&[][..], Vec::as_slice);
                let count =
                    |field: &str, value: &str| items.iter().filter(|i| i[field] == value).count();
                let tally: Vec<String> = [
                    ("applied", count("outcome", "applied")),
                    ("unchanged", count("outcome", "unchanged")),
                    ("dlq", count("op", "dlq")),
                ]
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(what, n)| format!("{n} {what}"))
                .collect();
                format!(
                    "confirm    {} offsets {}..={}  {} items ({})",
                    source(&e["source_topic"], &e["partition"]),
                    text(&e["first_offset"]),
                    text(&e["last_offset"]),
                    items.len(),
                    tally.join(", ")
                )
            }
            "checkpoint" => format!(
                "checkpoint {} @{} root={} items={}",
                source(&e["source_topic"], &e["partition"]),
                text(&e["offset"]),
                short(e["state_root"].as_str().unwrap_or("?")),
                text(&e["item_count"])
            ),
            "dlq" => {
                let header = |name: &str| &e["headers"][name];
                format!(
                    "dlq        {} @{} key={} code={} reason={:?}",
                    source(header("sync-source-topic"), header("sync-source-partition")),
                    text(header("sync-source-offset")),
                    e["key"],
                    text(header("sync-error-code")),
                    header("sync-error-message").as_str().unwrap_or("?")
                )
            }
            _ => format!(
                "other      {}/{} @{}: not a sync-engine event ({} bytes)",
                self.topic, self.partition, self.offset, self.bytes
            ),
        }
    }
}

/// A JSON scalar as shown in a line: strings without quotes, `?` for what is missing.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "?".into(),
        other => other.to_string(),
    }
}

/// The first 12 hex digits of a root.
fn short(root: &str) -> String {
    match root.get(..12) {
        Some(head) if root.len() > 12 => format!("{head}…"),
        _ => root.to_string(),
    }
}

/// A record as `schemas/dlq-record.schema.json` renders it (`key`, `value`, `headers`, the last
/// value of a repeated header winning), and the fields that had to go in hex.
fn rendered(message: &BorrowedMessage<'_>) -> (Value, Vec<String>) {
    let mut hex = Vec::new();
    let mut string = |field: String, bytes: Option<&[u8]>| match bytes.map(std::str::from_utf8) {
        None => Value::Null,
        Some(Ok(text)) => Value::from(text),
        Some(Err(_)) => {
            hex.push(field);
            Value::from(hex::encode(bytes.unwrap_or_default()))
        }
    };
    let key = string("key".into(), message.key());
    let value = string("value".into(), message.payload());
    let mut headers = Map::new();
    for header in message.headers().into_iter().flat_map(|h| h.iter()) {
        let rendered = string(format!("headers.{}", header.key), header.value);
        headers.insert(header.key.to_string(), rendered);
    }
    (json!({"key": key, "value": value, "headers": headers}), hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &'static str, event: Value) -> Event {
        Event {
            kind,
            event,
            hex: Vec::new(),
            topic: "sync.confirm".into(),
            partition: 0,
            offset: 7,
            timestamp_ms: None,
            bytes: 0,
        }
    }

    #[test]
    fn one_line_per_event() {
        let items: Vec<Value> = (100..150)
            .map(|offset| match offset {
                100 | 101 => json!({"offset": offset, "op": "put", "outcome": "unchanged"}),
                102 => json!({"offset": offset, "op": "dlq", "error_code": "invalid_json"}),
                _ => json!({"offset": offset, "op": "put", "outcome": "applied"}),
            })
            .collect();
        let confirmation = json!({"type": "confirmation", "source_topic": "sync.submit",
            "partition": 2, "first_offset": 100, "last_offset": 149, "items": items});
        assert_eq!(
            event("confirmation", confirmation).text_line(),
            "confirm    sync.submit/2 offsets 100..=149  50 items (47 applied, 2 unchanged, 1 dlq)"
        );
        let checkpoint = json!({"type": "checkpoint", "source_topic": "sync.submit",
            "partition": 2, "offset": 149, "state_root": "ab".repeat(32), "item_count": 1234});
        assert_eq!(
            event("checkpoint", checkpoint).text_line(),
            "checkpoint sync.submit/2 @149 root=abababababab… items=1234"
        );
        let dlq = json!({"key": "user:1", "value": "{not json", "headers": {
            "sync-error-code": "invalid_json", "sync-error-message": "not JSON:\n{not",
            "sync-source-topic": "sync.submit", "sync-source-partition": "1",
            "sync-source-offset": "77"}});
        assert_eq!(
            event("dlq", dlq).text_line(),
            r#"dlq        sync.submit/1 @77 key="user:1" code=invalid_json reason="not JSON:\n{not""#
        );
        let line: Value = serde_json::from_str(&event("other", json!({})).json_line()).unwrap();
        assert_eq!(line["kind"], "other");
        assert_eq!(line["topic"], "sync.confirm");
        assert_eq!(line["offset"], 7);
        assert!(line.get("hex").is_none());
    }
}
