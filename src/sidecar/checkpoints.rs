//! Reading checkpoint events back from the output topic: the newest one per source
//! partition, for `verify`; and the consumer settings of every such reader of the sidecar's
//! topics (`verify`, `tail`).
//!
//! The output topic also carries confirmations, so this reads each output partition from the
//! end backwards in growing windows until every wanted source partition has a checkpoint or
//! the start of the log is reached.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::config::PipelineConfig;
use super::events::Checkpoint;
use crate::error::Result;

const TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_WINDOW: i64 = 10_000;

/// A consumer of the pipeline's topics that never touches the sidecar's group: `[kafka.client]`
/// and `[kafka.consumer]` apply (TLS, SASL, tuning) but for their group settings, the group is one of its own
/// (`sync-engine-<purpose>-<pid>`) and nothing is ever committed; read with `assign`.
pub fn reader_config(config: &PipelineConfig, purpose: &str) -> ClientConfig {
    const GROUP_SETTINGS: [&str; 3] = ["group.id", "group.instance.id", "enable.auto.commit"];
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers);
    for (k, v) in config.kafka.consumer_properties() {
        if !GROUP_SETTINGS.contains(&k.as_str()) {
            c.set(k, v);
        }
    }
    c.set(
        "group.id",
        format!("sync-engine-{purpose}-{}", std::process::id()),
    )
    .set("enable.auto.commit", "false");
    c
}

/// The newest checkpoint per source partition (`<topic>/<partition>`) found on the output
/// topic; `wanted` (engine partition names) decides how far back to look.
pub fn latest(
    config: &PipelineConfig,
    wanted: &BTreeSet<String>,
) -> Result<BTreeMap<String, Checkpoint>> {
    let consumer: BaseConsumer = reader_config(config, "verify")
        .set("enable.partition.eof", "true")
        .create()?;
    let topic = &config.kafka.output_topic;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut found: BTreeMap<String, (i64, Checkpoint)> = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
        let mut window = FIRST_WINDOW;
        let mut end = high;
        loop {
            let start = (end - window).max(low);
            if start >= end {
                break;
            }
            read_range(&consumer, topic, partition, start, end, &mut found)?;
            let missing = wanted.iter().any(|w| !found.contains_key(w));
            if !missing || start == low {
                break;
            }
            end = start;
            window *= 10;
        }
    }
    Ok(found.into_iter().map(|(k, (_, c))| (k, c)).collect())
}

/// Reads `[start, end)` of one partition, keeping the newest checkpoint per source partition.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
    found: &mut BTreeMap<String, (i64, Checkpoint)>,
) -> Result<()> {
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + TIMEOUT;
    let mut next = start;
    while next < end && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = match message {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => break,
            Err(e) => return Err(e.into()),
        };
        next = message.offset() + 1;
        if message.offset() >= end {
            break;
        }
        let Some(checkpoint) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<Checkpoint>(p).ok())
            .filter(|c| c.kind == Checkpoint::KIND)
        else {
            continue;
        };
        let offset = message.offset();
        let entry = found.entry(checkpoint.source());
        match entry {
            std::collections::btree_map::Entry::Occupied(mut e) if e.get().0 < offset => {
                e.insert((offset, checkpoint));
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert((offset, checkpoint));
            }
            _ => {}
        }
    }
    Ok(())
}
