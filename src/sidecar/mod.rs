//! The sidecar, top-down: Kafka submit topic → engine → confirmation topic → offset commit.
//!
//! ```text
//! poll ─► decode ─┬─► engine.submit/delete (version = offset + 1, source = topic/partition)
//!                 └─► DLQ record (delivery awaited)            ─┐
//!                                                              ├─ pending, per partition
//! every batch_flush_ms / batch_flush_count records:            ─┘
//!   engine.flush() (durable) ─► one confirmation per partition (delivery awaited) ─► commit
//! ```
//!
//! Offsets are committed only after what they cover is durable and confirmed; a crash
//! anywhere replays from the last commit, and the version guard makes replays no-ops on the
//! stores (confirmations repeat with the same (topic, partition, offset) identities). When
//! partitions are revoked, the same checkpoint runs inside the rebalance callback, before
//! they are released. The consumer runs on its own thread (librdkafka's callbacks are
//! synchronous) and drives the async engine through a runtime handle.

pub mod checkpoints;
pub mod config;
pub mod events;
pub mod record;
pub mod trace;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::engine::SyncEngine;
use crate::error::{Result, SyncError};
use config::PipelineConfig;
use events::{Checkpoint, Confirmation, ConfirmedItem, Op};
use record::{RawRecord, Rejection, Write};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a checkpoint waits for the engine to be durable before it pauses the partitions
/// and lets the poll loop go on (rebalances and heartbeats must not wait for SQL).
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// Room the pending budget must have for consumption to go on (one large record).
const BACKPRESSURE_ROOM: usize = 1 << 20;

/// Counts of one run, logged at exit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub written: u64,
    pub dlq: u64,
    pub confirmations: u64,
    pub checkpoints: u64,
}

/// Runs the sidecar until `stop` becomes true, then drains: everything consumed is made
/// durable, confirmed and committed before it returns.
pub async fn run(config: PipelineConfig, stop: Arc<AtomicBool>) -> Result<Summary> {
    let (_tx, rx) = watch::channel(config.engine.clone());
    let mut engine = SyncEngine::new(config.engine.clone(), rx);
    engine.start().await?;
    let engine = Arc::new(engine);
    let producer: FutureProducer = producer_config(&config).create()?;
    let pipeline = Arc::new(Mutex::new(Pipeline {
        engine: engine.clone(),
        producer,
        handle: Handle::current(),
        config: config.clone(),
        pending: BTreeMap::new(),
        pending_since: None,
        stalled: false,
        paused: false,
        dlq_deliveries: Vec::new(),
        checkpoints: BTreeMap::new(),
        summary: Summary::default(),
    }));
    let consumer_pipeline = pipeline.clone();
    let result = tokio::task::spawn_blocking(move || consume(config, consumer_pipeline, stop))
        .await
        .map_err(|e| SyncError::Config(format!("consumer thread: {e}")))?;
    engine.shutdown().await;
    let summary = pipeline.lock().expect("pipeline lock").summary;
    info!(?summary, "sidecar stopped");
    result.map(|()| summary)
}

/// Waits for Kafka to acknowledge one produced record.
fn wait_delivery(handle: &Handle, delivery: DeliveryFuture) -> Result<()> {
    use rdkafka::error::KafkaError;
    match handle.block_on(tokio::time::timeout(DELIVERY_TIMEOUT, delivery)) {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err((e, _)))) => Err(SyncError::Kafka(e)),
        Ok(Err(_canceled)) => Err(SyncError::Kafka(KafkaError::Canceled)),
        Err(_elapsed) => Err(SyncError::Kafka(KafkaError::MessageProduction(
            rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
        ))),
    }
}

fn producer_config(config: &PipelineConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    for (k, v) in &config.kafka.producer {
        c.set(k, v);
    }
    c
}

fn consumer_config(config: &PipelineConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (k, v) in &config.kafka.consumer {
        c.set(k, v);
    }
    c
}

/// The poll loop (blocking thread).
fn consume(
    config: PipelineConfig,
    pipeline: Arc<Mutex<Pipeline>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let context = Revocations {
        pipeline: pipeline.clone(),
    };
    let consumer: BaseConsumer<Revocations> =
        consumer_config(&config).create_with_context(context)?;
    consumer.subscribe(&[&config.kafka.input_topic])?;
    info!(
        topic = config.kafka.input_topic,
        group = config.kafka.group_id,
        "consuming"
    );
    while !stop.load(Ordering::SeqCst) {
        pipeline
            .lock()
            .expect("pipeline lock")
            .backpressure(&consumer)?;
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            match message {
                Ok(message) => pipeline.lock().expect("pipeline lock").accept(&message)?,
                Err(e) => warn!(error = %e, "consumer error (librdkafka retries)"),
            }
        }
        let mut pipeline = pipeline.lock().expect("pipeline lock");
        if pipeline.checkpoint_due() {
            pipeline.checkpoint(&consumer)?;
        }
        // a partition that went quiet still gets its checkpoint after the interval
        pipeline.publish_checkpoints(false)?;
    }
    info!("stopping: draining what was consumed");
    loop {
        let mut pipeline = pipeline.lock().expect("pipeline lock");
        pipeline.checkpoint(&consumer)?;
        if pipeline.pending.is_empty() {
            break;
        }
        warn!("SQL is not taking the last records yet; still draining");
    }
    pipeline
        .lock()
        .expect("pipeline lock")
        .publish_checkpoints(true)?;
    consumer.unsubscribe();
    Ok(())
}

/// Finishes, confirms and commits revoked partitions before librdkafka releases them.
struct Revocations {
    pipeline: Arc<Mutex<Pipeline>>,
}

impl ClientContext for Revocations {}

impl ConsumerContext for Revocations {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            info!(
                count = partitions.count(),
                "partitions revoked: checkpointing first"
            );
            let mut pipeline = self.pipeline.lock().expect("pipeline lock");
            if let Err(e) = pipeline
                .checkpoint(consumer)
                .and_then(|()| pipeline.publish_checkpoints(true))
            {
                // not committed: the next owner replays them (no loss, only duplicates)
                error!(error = %e, "checkpoint before revocation failed");
            }
        }
    }
}

/// What has been consumed but not yet committed.
struct Pipeline {
    engine: Arc<SyncEngine>,
    producer: FutureProducer,
    handle: Handle,
    config: PipelineConfig,
    /// Per partition, the records consumed since the last checkpoint, in offset order.
    /// Per (topic, partition) — the record's own topic, so confirmations, commits and DLQ
    /// headers always name the same one.
    pending: BTreeMap<(String, i32), Vec<ConfirmedItem>>,
    pending_since: Option<Instant>,
    /// The last checkpoint could not make the engine durable in time (SQL slow or down).
    stalled: bool,
    /// Partitions are paused for backpressure.
    paused: bool,
    /// DLQ records sent but not yet acknowledged; awaited before the next commit.
    dlq_deliveries: Vec<DeliveryFuture>,
    /// Per partition, the state confirmed since its last checkpoint event.
    checkpoints: BTreeMap<(String, i32), Unpublished>,
    summary: Summary,
}

/// A partition's newest confirmed state that no checkpoint event carries yet.
struct Unpublished {
    checkpoint: Checkpoint,
    batches: u32,
    since: Instant,
}

impl Pipeline {
    /// Hands one record to the engine, or to the DLQ.
    fn accept(&mut self, message: &BorrowedMessage<'_>) -> Result<()> {
        let headers: Vec<(&str, Option<&[u8]>)> = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let (partition, offset) = (message.partition(), message.offset());
        let span = trace::record_span(&headers, message.topic(), partition, offset);
        let _in_span = span.enter();
        let raw = RawRecord {
            key: message.key(),
            value: message.payload(),
            headers,
        };
        let source: Arc<str> = Arc::from(format!("{}/{partition}", message.topic()));
        let version = offset as u64 + 1; // offsets start at 0; version 0 means "unversioned"
        let confirmed = match record::decode(
            &raw,
            self.engine.max_payload_bytes(),
            self.config.engine.redis_url.is_some(),
        ) {
            Ok(Write::Put { item, options }) => {
                let tiers = self.tiers(options.sql, options.redis);
                let hash = item.content_hash().to_string();
                let id = item.id().to_string();
                self.handle.block_on(self.engine.submit_from(
                    source,
                    item.with_version(version),
                    options,
                ))?;
                ConfirmedItem {
                    offset,
                    id: Some(id),
                    op: Op::Put,
                    content_hash: Some(hash),
                    tiers,
                    error_code: None,
                }
            }
            Ok(Write::Delete { id }) => {
                self.handle
                    .block_on(self.engine.delete_from(source, &id, version))?;
                let tiers = self.tiers(true, true);
                ConfirmedItem {
                    offset,
                    id: Some(id),
                    op: Op::Delete,
                    content_hash: None,
                    tiers,
                    error_code: None,
                }
            }
            Err(rejection) => {
                self.dead_letter(message, &rejection)?;
                ConfirmedItem {
                    offset,
                    id: message
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .map(str::to_string),
                    op: Op::Dlq,
                    content_hash: None,
                    tiers: Vec::new(),
                    error_code: Some(rejection.code.as_str()),
                }
            }
        };
        match confirmed.op {
            Op::Dlq => self.summary.dlq += 1,
            _ => self.summary.written += 1,
        }
        self.pending
            .entry((message.topic().to_string(), partition))
            .or_default()
            .push(confirmed);
        self.pending_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn tiers(&self, sql: bool, redis: bool) -> Vec<&'static str> {
        let mut tiers = Vec::new();
        if sql {
            tiers.push("sql");
        }
        if redis && self.config.engine.redis_url.is_some() {
            tiers.push("redis");
        }
        tiers
    }

    /// Sends a bad record to the DLQ with its reason. Its delivery is awaited before the next
    /// commit, so a DLQ that cannot be written stops the pipeline instead of losing the record.
    fn dead_letter(&mut self, message: &BorrowedMessage<'_>, rejection: &Rejection) -> Result<()> {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for h in original.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let (partition, offset) = (
            message.partition().to_string(),
            message.offset().to_string(),
        );
        for (key, value) in crate::sidecar::events::DLQ_HEADERS.iter().zip([
            rejection.code.as_str(),
            rejection.message.as_str(),
            message.topic(),
            partition.as_str(),
            offset.as_str(),
        ]) {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.config.kafka.dlq_topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload() {
            record = record.payload(value);
        }
        warn!(
            code = rejection.code.as_str(),
            partition, offset, "record sent to the DLQ"
        );
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| SyncError::Kafka(e))?;
        self.dlq_deliveries.push(delivery);
        Ok(())
    }

    /// Pauses every assigned partition while the engine cannot take more (pending budget full)
    /// or cannot make what it has durable (SQL failing); resumes when both clear. Paused, the
    /// loop keeps polling, so group membership and rebalances carry on.
    fn backpressure(&mut self, consumer: &BaseConsumer<Revocations>) -> Result<()> {
        let blocked = self.stalled || !self.engine.has_room(BACKPRESSURE_ROOM);
        if blocked {
            if !self.paused {
                warn!(
                    stalled = self.stalled,
                    "pausing partitions: the engine is full or SQL is failing"
                );
            }
            // every time: a rebalance may have assigned partitions since
            consumer.pause(&consumer.assignment()?)?;
        } else if self.paused {
            info!("resuming partitions");
            consumer.resume(&consumer.assignment()?)?;
        }
        self.paused = blocked;
        Ok(())
    }

    /// Sends the checkpoint events that are due (all of them with `all`), delivery awaited.
    fn publish_checkpoints(&mut self, all: bool) -> Result<()> {
        let every = self.config.kafka.checkpoint_every_batches.max(1);
        let interval = Duration::from_millis(self.config.kafka.checkpoint_interval_ms);
        let due: Vec<(String, i32)> = self
            .checkpoints
            .iter()
            .filter(|(_, u)| all || u.batches >= every || u.since.elapsed() >= interval)
            .map(|(k, _)| k.clone())
            .collect();
        let mut deliveries = Vec::with_capacity(due.len());
        for key in &due {
            let checkpoint = &self.checkpoints[key].checkpoint;
            let body = serde_json::to_vec(checkpoint).expect("a checkpoint serializes");
            let record_key = checkpoint.key();
            let record = FutureRecord::to(&self.config.kafka.output_topic)
                .key(&record_key)
                .payload(&body);
            deliveries.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| SyncError::Kafka(e))?,
            );
        }
        for delivery in deliveries {
            wait_delivery(&self.handle, delivery)?;
            self.summary.checkpoints += 1;
        }
        for key in due {
            self.checkpoints.remove(&key);
        }
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        let count: usize = self.pending.values().map(Vec::len).sum();
        let age = Duration::from_millis(self.config.engine.batch_flush_ms);
        count >= self.config.engine.batch_flush_count
            || self.pending_since.is_some_and(|t| t.elapsed() >= age)
    }

    /// Durable, then confirmed, then committed.
    fn checkpoint(&mut self, consumer: &BaseConsumer<Revocations>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match self
            .handle
            .block_on(tokio::time::timeout(FLUSH_WAIT, self.engine.flush()))
        {
            Ok(flushed) => flushed?,
            Err(_slow) => {
                // the writer keeps retrying; keep the records pending, pause, try again later
                self.stalled = true;
                return Ok(());
            }
        }
        self.stalled = false;
        for delivery in std::mem::take(&mut self.dlq_deliveries) {
            wait_delivery(&self.handle, delivery)?;
        }
        let mut offsets = TopicPartitionList::new();
        let mut confirmations = Vec::with_capacity(self.pending.len());
        for ((topic, partition), items) in &self.pending {
            // nothing else writes this partition while we own it: this is the root after
            // exactly these items
            let root = self
                .handle
                .block_on(self.engine.merkle_root(&format!("{topic}/{partition}")))?;
            let confirmation = Confirmation {
                kind: Confirmation::KIND,
                source_topic: topic.clone(),
                partition: *partition,
                first_offset: items.first().map_or(0, |i| i.offset),
                last_offset: items.last().map_or(0, |i| i.offset),
                items: items.clone(),
                state_root: root.root.clone(),
                item_count: root.item_count,
            };
            let unpublished = self
                .checkpoints
                .entry((topic.clone(), *partition))
                .or_insert_with(|| Unpublished {
                    checkpoint: Checkpoint {
                        kind: Checkpoint::KIND.to_string(),
                        source_topic: topic.clone(),
                        partition: *partition,
                        offset: 0,
                        state_root: String::new(),
                        item_count: 0,
                        algorithm: crate::merkle::ALGORITHM.to_string(),
                    },
                    batches: 0,
                    since: Instant::now(),
                });
            // after a crash, SQL may already hold later records of the partition (committed
            // to SQL, not to Kafka): the root is then that later state's, and the checkpoint
            // says so by naming SQL's offset
            let sql_offset = self
                .handle
                .block_on(self.engine.source_version(&format!("{topic}/{partition}")))?
                .map_or(-1, |v| v as i64 - 1);
            unpublished.checkpoint.offset = confirmation.last_offset.max(sql_offset);
            unpublished.checkpoint.state_root = root.root;
            unpublished.checkpoint.item_count = root.item_count;
            unpublished.batches += 1;
            let body = serde_json::to_vec(&confirmation).expect("a confirmation serializes");
            let key = confirmation.key();
            let record = FutureRecord::to(&self.config.kafka.output_topic)
                .key(&key)
                .payload(&body);
            confirmations.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| SyncError::Kafka(e))?,
            );
            offsets.add_partition_offset(
                topic,
                *partition,
                Offset::Offset(confirmation.last_offset + 1),
            )?;
        }
        for delivery in confirmations {
            wait_delivery(&self.handle, delivery)?;
            self.summary.confirmations += 1;
        }
        self.publish_checkpoints(false)?;
        consumer.commit(&offsets, CommitMode::Sync)?;
        self.pending.clear();
        self.pending_since = None;
        Ok(())
    }
}
