//! What the sidecar produces, and the waiting for Kafka to acknowledge it: DLQ records,
//! confirmations (split to fit the message size limits) and checkpoint events.
//!
//! Nothing here retries by itself: a failed send or delivery is returned, classified, and the
//! pipeline decides (retry the cycle later, or stop). Confirmations and checkpoints are
//! idempotent for consumers, so producing one again after a timeout is harmless.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::runtime::Handle;
use tracing::warn;

use super::config::PipelineConfig;
use super::events::{Checkpoint, Confirmation, ConfirmedItem};
use crate::error::{Result, SyncError};

/// How long one delivery is waited for before the cycle gives up and tries again later.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room left in a message for the key, headers and protocol framing.
const FRAMING: usize = 512;
/// Below this an event cannot hold even one large item: the limit is misconfigured.
const SMALLEST_EVENT: usize = 2048;

/// A bad record on its way to the DLQ topic: what is sent, and its delivery while in flight.
pub(super) struct DeadLetter {
    /// The source (topic, partition) it came from.
    pub source: (String, i32),
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub delivery: Option<DeliveryFuture>,
}

pub(super) struct Output {
    producer: FutureProducer,
    handle: Handle,
    output_topic: String,
    dlq_topic: String,
    /// The largest confirmation event produced: the producer's `message.max.bytes`, halved
    /// whenever the broker refuses one as too large (its own limit can be lower).
    max_event_bytes: usize,
}

impl Output {
    pub fn new(config: &PipelineConfig, handle: Handle) -> Result<Output> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &config.kafka.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("reconnect.backoff.max.ms", super::RECONNECT_BACKOFF_MAX_MS);
        for (k, v) in config.kafka.producer_properties() {
            c.set(k, v);
        }
        let limit = config
            .kafka
            .producer
            .get("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        Ok(Output {
            producer: c.create()?,
            handle,
            output_topic: config.kafka.output_topic.clone(),
            dlq_topic: config.kafka.dlq_topic.clone(),
            max_event_bytes: limit.saturating_sub(FRAMING).max(SMALLEST_EVENT),
        })
    }

    /// Sends (again, if an earlier delivery failed) a DLQ record; its delivery is kept in it.
    /// A send that fails at once (queue full, broker unknown) is left for the next attempt.
    pub fn send_dead_letter(&self, letter: &mut DeadLetter) -> Result<()> {
        if letter.delivery.is_some() {
            return Ok(());
        }
        let mut headers = OwnedHeaders::new();
        for (key, value) in &letter.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.dlq_topic).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        if let Some(value) = &letter.value {
            record = record.payload(value);
        }
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| SyncError::Kafka(e))?;
        letter.delivery = Some(delivery);
        Ok(())
    }

    /// Waits for a DLQ record's delivery. On failure the delivery is dropped, so the next
    /// attempt sends the record again.
    pub fn await_dead_letter(&self, letter: &mut DeadLetter) -> Result<()> {
        self.send_dead_letter(letter)?;
        let delivery = letter.delivery.take().expect("sent above");
        self.wait(delivery)
    }

    /// Produces a sealed batch's confirmations — one per partition, each split into as many
    /// events as the size limit needs — all at once, then waits for every delivery (one
    /// linger and one acknowledgement for the batch, not one per partition). The answer has
    /// one entry per confirmation: the number of events delivered, or why not. A broker that
    /// refuses an event as too large lowers the limit for good, and the confirmations it hit
    /// are produced again (their consumers deduplicate on item identities).
    pub fn confirm(
        &mut self,
        confirmations: &[(Confirmation, Vec<ConfirmedItem>)],
    ) -> Vec<Result<usize>> {
        let mut results: Vec<Option<Result<usize>>> = confirmations.iter().map(|_| None).collect();
        loop {
            let mut in_flight = Vec::new();
            for (i, (template, items)) in confirmations.iter().enumerate() {
                if results[i].as_ref().is_some_and(|r| r.is_ok()) {
                    continue;
                }
                let events = Confirmation::split(template, items, self.max_event_bytes);
                let key = template.key();
                let mut deliveries = Vec::with_capacity(events.len());
                let mut refused = None;
                for body in &events {
                    let record = FutureRecord::to(&self.output_topic).key(&key).payload(body);
                    match self.producer.send_result(record) {
                        Ok(delivery) => deliveries.push(delivery),
                        Err((e, _)) => {
                            refused = Some(e);
                            break;
                        }
                    }
                }
                in_flight.push((i, events.len(), deliveries, refused));
            }
            let mut retry = false;
            for (i, events, deliveries, refused) in in_flight {
                let mut result = match refused {
                    Some(e) => Err(SyncError::Kafka(e)),
                    None => Ok(events),
                };
                for delivery in deliveries {
                    let delivered = self.wait(delivery);
                    if result.is_ok() {
                        result = delivered.map(|()| events);
                    }
                }
                retry |= result.as_ref().is_err_and(too_large);
                results[i] = Some(result);
            }
            if retry && self.max_event_bytes / 2 >= SMALLEST_EVENT {
                self.max_event_bytes /= 2;
                warn!(
                    max_event_bytes = self.max_event_bytes,
                    "a confirmation was too large for the broker; splitting smaller"
                );
                continue;
            }
            return results
                .into_iter()
                .map(|r| r.expect("every confirmation was produced"))
                .collect();
        }
    }

    /// Produces checkpoint events and waits for every delivery.
    pub fn publish(&self, checkpoints: &[&Checkpoint]) -> Result<()> {
        let mut deliveries = Vec::with_capacity(checkpoints.len());
        for checkpoint in checkpoints {
            let body = serde_json::to_vec(checkpoint).expect("a checkpoint serializes");
            let key = checkpoint.key();
            let record = FutureRecord::to(&self.output_topic)
                .key(&key)
                .payload(&body);
            deliveries.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| SyncError::Kafka(e))?,
            );
        }
        let mut result = Ok(());
        for delivery in deliveries {
            let delivered = self.wait(delivery);
            if result.is_ok() {
                result = delivered;
            }
        }
        result
    }

    /// Waits for Kafka to acknowledge one produced record.
    fn wait(&self, delivery: DeliveryFuture) -> Result<()> {
        match self
            .handle
            .block_on(tokio::time::timeout(DELIVERY_TIMEOUT, delivery))
        {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((e, _)))) => Err(SyncError::Kafka(e)),
            Ok(Err(_canceled)) => Err(SyncError::Kafka(KafkaError::Canceled)),
            Err(_elapsed) => Err(SyncError::Unavailable(format!(
                "Kafka did not acknowledge a record within {DELIVERY_TIMEOUT:?}"
            ))),
        }
    }
}

fn too_large(e: &SyncError) -> bool {
    matches!(e, SyncError::Kafka(k) if k.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge))
}
