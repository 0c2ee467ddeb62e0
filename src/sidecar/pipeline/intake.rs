//! Intake: a consumed Kafka record becomes an engine write (a put or a delete; version =
//! offset + 1, source = topic/partition) or, when it does not decode, a DLQ record; either way
//! it waits in `pending` for its partition's confirmation. Backpressure pauses consumption
//! while the engine is full or a cycle is stuck.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use tracing::{debug, info, warn};

use super::{Consumed, Pipeline};
use crate::error::Result;
use crate::sidecar::events::{ConfirmedItem, ConfirmedOp, DLQ_HEADERS};
use crate::sidecar::output::DeadLetter;
use crate::sidecar::record::{self, RawRecord, Rejection, Write};
use crate::sidecar::trace;

/// Room the pending budget must have for consumption to go on (one large record).
const BACKPRESSURE_ROOM: usize = 1 << 20;
/// At most one WARN about DLQ records per this interval.
pub(super) const DLQ_REPORT_EVERY: Duration = Duration::from_secs(10);

impl Pipeline {
    /// Hands one record to the engine, or to the DLQ.
    pub fn accept(&mut self, message: &BorrowedMessage<'_>) -> Result<()> {
        let headers: Vec<(&str, Option<&[u8]>)> = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let (partition, offset) = (message.partition(), message.offset());
        self.received
            .entry(partition)
            .or_insert_with(|| {
                counter!(
                    "sync_engine_records_received_total",
                    "topic" => message.topic().to_string(),
                    "partition" => partition.to_string()
                )
            })
            .increment(1);
        let span = trace::record_span(&headers, message.topic(), partition, offset);
        let _in_span = span.enter();
        let raw = RawRecord {
            key: message.key(),
            value: message.payload(),
            headers,
        };
        let source: Arc<str> = Arc::from(format!("{}/{partition}", message.topic()));
        let version = offset as u64 + 1; // offsets start at 0; version 0 means "unversioned"
        let has_redis = self.config.engine.redis_url.is_some();
        let (item, durable) = match record::decode(&raw, self.engine.max_payload_bytes(), has_redis)
        {
            Ok(Write::Put { item, options }) => {
                let tiers = self.tiers(options.sql, options.redis);
                let confirmed = ConfirmedItem {
                    offset,
                    id: Some(item.id().to_string()),
                    op: ConfirmedOp::Put,
                    outcome: None,
                    content_hash: Some(item.content_hash().to_string()),
                    tiers,
                    error_code: None,
                };
                let durable = options.sql;
                self.handle.block_on(self.engine.submit_from(
                    source,
                    item.with_version(version),
                    options,
                ))?;
                (confirmed, durable)
            }
            Ok(Write::Delete { id }) => {
                self.handle
                    .block_on(self.engine.delete_from(source, &id, version))?;
                let confirmed = ConfirmedItem {
                    offset,
                    id: Some(id),
                    op: ConfirmedOp::Delete,
                    outcome: None,
                    content_hash: None,
                    tiers: self.tiers(true, true),
                    error_code: None,
                };
                (confirmed, true)
            }
            Err(rejection) => {
                self.dead_letter(message, &raw, &rejection);
                let confirmed = ConfirmedItem {
                    offset,
                    id: message
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .map(str::to_string),
                    op: ConfirmedOp::Dlq,
                    outcome: None,
                    content_hash: None,
                    tiers: Vec::new(),
                    error_code: Some(rejection.code.as_str()),
                };
                (confirmed, false)
            }
        };
        match item.op {
            ConfirmedOp::Dlq => self.summary.dlq += 1,
            _ => self.summary.written += 1,
        }
        let unconfirmed = self
            .pending
            .entry((message.topic().to_string(), partition))
            .or_default();
        unconfirmed.records.push(Consumed { item, durable });
        if let Some(ms) = message.timestamp().to_millis() {
            unconfirmed.oldest_ms = Some(unconfirmed.oldest_ms.map_or(ms, |t| t.min(ms)));
        }
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

    /// Queues a bad record for the DLQ with its reason. It is sent now; the cycle waits for
    /// its acknowledgement (sending it again if needed) before any confirmation.
    fn dead_letter(&mut self, message: &BorrowedMessage<'_>, raw: &RawRecord<'_>, why: &Rejection) {
        let mut headers: Vec<(String, Option<Vec<u8>>)> = raw
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
            .collect();
        let (partition, offset) = (
            message.partition().to_string(),
            message.offset().to_string(),
        );
        for (key, value) in DLQ_HEADERS.iter().zip([
            why.code.as_str(),
            why.message.as_str(),
            message.topic(),
            partition.as_str(),
            offset.as_str(),
        ]) {
            headers.push((key.to_string(), Some(value.as_bytes().to_vec())));
        }
        debug!(
            code = why.code.as_str(),
            partition, offset, "record sent to the DLQ"
        );
        counter!("sync_engine_dlq_records_total", "code" => why.code.as_str()).increment(1);
        *self.dlq_unreported.entry(why.code.as_str()).or_default() += 1;
        let mut letter = DeadLetter {
            source: (message.topic().to_string(), message.partition()),
            key: raw.key.map(<[u8]>::to_vec),
            value: raw.value.map(<[u8]>::to_vec),
            headers,
            delivery: None,
        };
        if let Err(e) = self.output.send_dead_letter(&mut letter) {
            debug!(error = %e, "DLQ send refused for now; retried by the next cycle");
        }
        self.dead_letters.push(letter);
    }

    /// One WARN with the DLQ records per code since the last one, if any, and if the last one
    /// is at least [`DLQ_REPORT_EVERY`] old (`now`: in any case, e.g. when draining).
    pub(super) fn report_dead_letters(&mut self, now: bool) {
        if self.dlq_unreported.is_empty()
            || !now
                && self
                    .dlq_reported_at
                    .is_some_and(|t| t.elapsed() < DLQ_REPORT_EVERY)
        {
            return;
        }
        let codes = std::mem::take(&mut self.dlq_unreported);
        let total: u64 = codes.values().sum();
        warn!(total, ?codes, "records sent to the DLQ (the codes are in schemas/README.md; each record at debug level)");
        self.dlq_reported_at = Some(Instant::now());
    }

    /// Pauses every assigned partition while the engine cannot take more (pending budget full
    /// or a write it keeps retrying) or a cycle is stuck on something (SQL, Redis, the DLQ or
    /// output topic); resumes when they clear. Paused, the loop keeps polling, so group membership and rebalances carry on.
    pub fn backpressure<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.meters.memory.sample(&self.engine);
        // a write the engine keeps retrying holds up every batch after it: consuming more
        // would only fill memory (the cycle notices too, once the batch is overdue)
        let blocked = self.halted
            || self.waiting
            || self.engine.write_failure().is_some()
            || !self.engine.has_room(BACKPRESSURE_ROOM);
        if !blocked && !self.paused {
            return;
        }
        let Ok(assigned) = consumer.assignment() else {
            return;
        };
        if blocked {
            if !self.paused {
                warn!(
                    waiting = self.waiting,
                    "pausing partitions: the engine is full or a checkpoint is waiting on SQL, Redis or Kafka"
                );
            }
            // every time: a rebalance may have assigned partitions since
            let _ = consumer.pause(&assigned);
        } else if self.paused {
            info!("resuming partitions");
            let _ = consumer.resume(&assigned);
        }
        self.paused = blocked;
        gauge!("sync_engine_paused").set(if blocked { 1.0 } else { 0.0 });
    }
}
