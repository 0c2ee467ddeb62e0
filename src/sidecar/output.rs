//! What the sidecar produces, and the waiting for Kafka to acknowledge it: DLQ records,
//! confirmations (split to fit the message size limits) and checkpoint events.
//!
//! Nothing here waits unless asked: confirmations and checkpoint events are sent, and their
//! acknowledgements looked at later ([`Output::delivered`]), so the poll loop goes on
//! consuming meanwhile. Nothing here retries by itself either: a failed send or delivery is
//! returned, classified, and the pipeline decides (retry the cycle later, or stop). Confirmations and checkpoints are
//! idempotent for consumers, so producing one again after a timeout is harmless.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

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

    /// Produces one partition's confirmation of a sealed batch, split into as many events as
    /// the size limit needs; the deliveries are awaited by [`Output::delivered`]. A send
    /// refused at once (queue full, broker unknown) is returned; what was sent before it is
    /// dropped, and the whole confirmation goes again at the next attempt (its consumers
    /// deduplicate on item identities).
    pub fn send_confirmation(
        &self,
        template: &Confirmation,
        items: &[ConfirmedItem],
    ) -> Result<InFlight> {
        let events = Confirmation::split(template, items, self.max_event_bytes);
        let key = template.key();
        self.send_all(events.iter().map(|body| (key.as_str(), body.as_slice())))
    }

    /// Produces checkpoint events; the deliveries are awaited by [`Output::delivered`].
    pub fn send_checkpoints<'a>(
        &self,
        checkpoints: impl Iterator<Item = &'a Checkpoint>,
    ) -> Result<InFlight> {
        let events: Vec<(String, Vec<u8>)> = checkpoints
            .map(|c| {
                (
                    c.key(),
                    serde_json::to_vec(c).expect("a checkpoint serializes"),
                )
            })
            .collect();
        self.send_all(events.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }

    fn send_all<'a>(&self, events: impl Iterator<Item = (&'a str, &'a [u8])>) -> Result<InFlight> {
        let mut deliveries = VecDeque::new();
        for (key, body) in events {
            let record = FutureRecord::to(&self.output_topic).key(key).payload(body);
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| SyncError::Kafka(e))?;
            deliveries.push_back(delivery);
        }
        Ok(InFlight {
            events: deliveries.len(),
            deliveries,
            sent: Instant::now(),
        })
    }

    /// Whether everything `flight` produced is acknowledged: `Some(Ok(events))` when all is,
    /// `Some(Err)` at the first failure (the rest is dropped; the caller produces it all
    /// again), `None` while some is in flight. With `wait`, waits for the answer (up to
    /// [`DELIVERY_TIMEOUT`] from the send); without, only looks, and a flight older than
    /// that fails. A broker that refuses an event as too large lowers the limit for good,
    /// so the next attempt splits smaller.
    pub fn delivered(&mut self, flight: &mut InFlight, wait: bool) -> Option<Result<usize>> {
        while let Some(delivery) = flight.deliveries.front_mut() {
            let answer = if wait {
                let left = DELIVERY_TIMEOUT.saturating_sub(flight.sent.elapsed());
                match self.handle.block_on(tokio::time::timeout(left, delivery)) {
                    Ok(answer) => answer,
                    Err(_elapsed) => return Some(Err(not_acknowledged())),
                }
            } else {
                let mut look = Context::from_waker(Waker::noop());
                match Pin::new(delivery).poll(&mut look) {
                    Poll::Ready(answer) => answer,
                    Poll::Pending if flight.sent.elapsed() >= DELIVERY_TIMEOUT => {
                        return Some(Err(not_acknowledged()))
                    }
                    Poll::Pending => return None,
                }
            };
            flight.deliveries.pop_front();
            let failure = match answer {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => SyncError::Kafka(e),
                Err(_canceled) => SyncError::Kafka(KafkaError::Canceled),
            };
            flight.deliveries.clear();
            if too_large(&failure) && self.max_event_bytes / 2 >= SMALLEST_EVENT {
                self.max_event_bytes /= 2;
                warn!(
                    max_event_bytes = self.max_event_bytes,
                    "an event was too large for the broker; splitting smaller"
                );
            }
            return Some(Err(failure));
        }
        Some(Ok(flight.events))
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
            Err(_elapsed) => Err(not_acknowledged()),
        }
    }
}

/// Events produced together (one partition's confirmation, or checkpoint events), waiting for
/// Kafka to acknowledge them.
pub(super) struct InFlight {
    deliveries: VecDeque<DeliveryFuture>,
    events: usize,
    sent: Instant,
}

fn not_acknowledged() -> SyncError {
    SyncError::Unavailable(format!(
        "Kafka did not acknowledge a record within {DELIVERY_TIMEOUT:?}"
    ))
}

fn too_large(e: &SyncError) -> bool {
    matches!(e, SyncError::Kafka(k) if k.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge))
}
