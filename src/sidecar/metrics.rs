//! Every metric the sidecar exports, described once (the `# HELP` lines of `/metrics`; the
//! README's table says the same), and the two families that are sampled rather than counted
//! where things happen: the engine's memory and the consumer lag.
//!
//! Everything else is recorded with the `metrics` macros at its source — the pipeline, the
//! writer, the SQL and Redis tiers — once per batch, cycle or partition, never per record:
//! a labelled macro call allocates its labels and searches the registry, so code that runs per
//! record keeps a handle instead. The library records the same way; without a recorder (no
//! sidecar, or `[http] listen` empty) the macros do nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{describe_counter, describe_gauge, describe_histogram, gauge, Gauge, Unit};
use rdkafka::statistics::{Partition, Statistics};

use crate::engine::SyncEngine;
pub(super) use crate::writer::BATCH_RECORDS;

/// How often the memory gauges are sampled: reading L1's counters first settles the cache's
/// pending maintenance, which is not worth doing on every turn of the poll loop.
const MEMORY_EVERY: Duration = Duration::from_secs(1);

/// Registers every metric's help text and unit, and gives the state gauges and the unlabelled
/// counters a value from the start: an alert on `sync_engine_stalled == 1`, or on
/// `sync_engine_commits_total` not increasing, needs the series before the first event.
pub(super) fn describe() {
    use Unit::{Bytes, Count, Seconds};
    let counters: [(&str, Unit, &str); 9] = [
        ("sync_engine_records_received_total", Count, "Records consumed from the input topic."),
        ("sync_engine_dlq_records_total", Count, "Records sent to the DLQ topic, by rejection code."),
        ("sync_engine_confirmed_records_total", Count, "Records confirmed on the output topic, by op and outcome."),
        ("sync_engine_confirmations_total", Count, "Confirmation events produced."),
        ("sync_engine_checkpoints_total", Count, "Checkpoint events produced."),
        ("sync_engine_commits_total", Count, "Offset commits the broker accepted."),
        ("sync_engine_cycle_failures_total", Count, "Failed commit cycles, by class (retryable: retried; fatal: the run ends, or for SQL the pipeline stalls)."),
        ("sync_engine_sql_errors_total", Count, "Failed SQL batch transactions, by error class (retryable, fatal)."),
        ("sync_engine_redis_errors_total", Count, "Failed Redis calls, by class (connection: refused, reset or timed out; response: Redis answered with an error)."),
    ];
    for (name, unit, help) in counters {
        describe_counter!(name, unit, help);
    }
    let gauges: [(&str, Unit, &str); 11] = [
        ("sync_engine_last_commit_timestamp_seconds", Seconds, "Unix time of the last offset commit the broker accepted."),
        ("sync_engine_pending_records", Count, "Records consumed and not yet confirmed."),
        ("sync_engine_paused", Count, "1 while consumption is paused (backpressure or a failing cycle)."),
        ("sync_engine_stalled", Count, "1 while the pipeline is stalled (a fatal SQL error, or a failure outlasting [stall] after_ms)."),
        ("sync_engine_ready", Count, "1 when /readyz answers 200 (judged at each scrape)."),
        ("sync_engine_build_info", Count, "Always 1; the version is a label."),
        ("sync_engine_consumer_lag_records", Count, "Per assigned partition: log end minus the committed offset (librdkafka statistics; the log end is the larger of the broker's high watermark and what was consumed). 0 once the partition is no longer this member's."),
        ("sync_engine_pending_bytes", Bytes, "Bytes of writes accepted by the engine and not yet durable."),
        ("sync_engine_l1_bytes", Bytes, "Bytes held in L1: cached items plus pending writes (the sidecar caches nothing: pending writes only)."),
        ("sync_engine_memory_pressure_ratio", Count, "L1 bytes over l1_max_bytes (consumption pauses before pending writes pass backpressure_critical)."),
        ("sync_engine_redis_circuit_open", Count, "1 while the Redis circuit breaker is open (reads go to SQL, writes are repaired later)."),
    ];
    for (name, unit, help) in gauges {
        describe_gauge!(name, unit, help);
    }
    let histograms: [(&str, Unit, &str); 6] = [
        ("sync_engine_cycle_duration_seconds", Seconds, "A successful pass of the commit cycle that did something: sealing a batch, DLQ acks, confirmations, checkpoints, commit (the writes of a sealed batch overlap consumption; a revocation or stop also waits for them)."),
        ("sync_engine_confirm_commit_duration_seconds", Seconds, "From the engine being durable to the commit: confirmations (deliveries awaited), checkpoint events, offset commit."),
        ("sync_engine_produce_to_confirmation_seconds", Seconds, "Per confirmed partition batch: from the Kafka timestamp of its oldest record to its confirmation's delivery."),
        (BATCH_RECORDS, Count, "Records per engine batch (one SQL transaction)."),
        ("sync_engine_sql_transaction_duration_seconds", Seconds, "A batch transaction that committed: reads, upserts, Merkle digests, progress, commit."),
        ("sync_engine_redis_pipeline_duration_seconds", Seconds, "One MULTI/EXEC pipeline of a batch's Redis writes."),
    ];
    for (name, unit, help) in histograms {
        describe_histogram!(name, unit, help);
    }
    metrics::gauge!("sync_engine_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for state in [
        "sync_engine_stalled",
        "sync_engine_paused",
        "sync_engine_pending_records",
    ] {
        gauge!(state).set(0.0);
    }
    for count in [
        "sync_engine_commits_total",
        "sync_engine_confirmations_total",
        "sync_engine_checkpoints_total",
    ] {
        metrics::counter!(count).absolute(0);
    }
}

/// `sync_engine_pending_bytes`, `sync_engine_l1_bytes` and `sync_engine_memory_pressure_ratio`.
pub(super) struct Memory {
    pending: Gauge,
    l1: Gauge,
    pressure: Gauge,
    sampled: Option<Instant>,
}

impl Memory {
    pub fn new() -> Memory {
        Memory {
            pending: gauge!("sync_engine_pending_bytes"),
            l1: gauge!("sync_engine_l1_bytes"),
            pressure: gauge!("sync_engine_memory_pressure_ratio"),
            sampled: None,
        }
    }

    /// Samples the engine's memory, if the last sample is [`MEMORY_EVERY`] old.
    pub fn sample(&mut self, engine: &SyncEngine) {
        if self.sampled.is_some_and(|t| t.elapsed() < MEMORY_EVERY) {
            return;
        }
        self.sampled = Some(Instant::now());
        let l1 = engine.l1_stats();
        self.pending.set(l1.pending_bytes as f64);
        self.l1.set((l1.cached_bytes + l1.pending_bytes) as f64);
        self.pressure.set(engine.memory_pressure());
    }
}

/// `sync_engine_consumer_lag_records{topic, partition}`, from librdkafka's statistics
/// (`statistics.interval.ms`, 5 s unless `[kafka.consumer]` says otherwise).
///
/// librdkafka's own `consumer_lag` is the high watermark minus the committed offset, and -1
/// whenever the committed offset is above the high watermark. Brokers whose watermarks trail
/// the log (tansu reports the last batch's base offset + 1) would leave it unknown most of the
/// time, so the log end here is the larger of the watermark and the position this member has
/// consumed up to: on a broker with true watermarks the same number, on the others a lower
/// bound that still counts every record consumed and not yet committed.
pub(super) struct Lag {
    topic: String,
    /// The partitions this member has reported, each with its series.
    reported: Mutex<BTreeMap<i32, Gauge>>,
}

impl Lag {
    pub fn new(topic: &str) -> Lag {
        Lag {
            topic: topic.to_string(),
            reported: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sets the lag of every partition assigned to this member; a partition that no longer
    /// is reads 0 (its new owner reports it: aggregate with `max by (topic, partition)`).
    pub fn record(&self, statistics: &Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut reported = self.reported.lock().expect("lag lock");
        for (number, partition) in &topic.partitions {
            if *number < 0 {
                continue; // librdkafka's internal partition of not-yet-partitioned messages
            }
            if !partition.desired {
                if let Some(gauge) = reported.remove(number) {
                    gauge.set(0.0);
                }
                continue;
            }
            if let Some(records) = lag(partition) {
                reported
                    .entry(*number)
                    .or_insert_with(|| {
                        gauge!(
                            "sync_engine_consumer_lag_records",
                            "topic" => self.topic.clone(),
                            "partition" => number.to_string()
                        )
                    })
                    .set(records as f64);
            }
        }
    }
}

/// Log end − committed offset of an assigned partition (see [`Lag`]); `None` while neither
/// the watermark nor a consumed position is known. With nothing committed yet, the group
/// starts at the log start (`auto.offset.reset = earliest`).
fn lag(partition: &Partition) -> Option<i64> {
    let end = partition.hi_offset.max(partition.app_offset);
    if end < 0 {
        return None;
    }
    let committed = if partition.committed_offset >= 0 {
        partition.committed_offset
    } else {
        partition.lo_offset.max(0)
    };
    Some((end - committed).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(hi: i64, consumed: i64, committed: i64) -> Partition {
        let json = format!(
            r#"{{"partition":0,"broker":1,"leader":1,"desired":true,"unknown":false,
            "msgq_cnt":0,"msgq_bytes":0,"xmit_msgq_cnt":0,"xmit_msgq_bytes":0,"fetchq_cnt":0,
            "fetchq_size":0,"fetch_state":"active","query_offset":-1001,"next_offset":0,
            "app_offset":{consumed},"stored_offset":-1001,"committed_offset":{committed},
            "eof_offset":-1001,"lo_offset":0,"hi_offset":{hi},"ls_offset":{hi},
            "consumer_lag":-1,"consumer_lag_stored":-1,"txmsgs":0,"txbytes":0,"rxmsgs":0,
            "rxbytes":0,"msgs":0,"rx_ver_drops":0,"msgs_inflight":0,"next_ack_seq":0,
            "next_err_seq":0,"acked_msgid":0}}"#
        );
        serde_json::from_str(&json).expect("librdkafka's partition statistics")
    }

    #[test]
    fn lag_counts_from_the_larger_of_watermark_and_position() {
        // a broker with true watermarks: 100 in the log, 40 consumed, 30 committed
        assert_eq!(lag(&partition(100, 40, 30)), Some(70));
        // a watermark trailing the log (tansu): 1, while 40 were consumed and 30 committed
        assert_eq!(lag(&partition(1, 40, 30)), Some(10));
        // nothing committed yet: from the log start
        assert_eq!(lag(&partition(100, -1001, -1001)), Some(100));
        assert_eq!(lag(&partition(-1001, -1001, 5)), None);
        assert_eq!(lag(&partition(50, 50, 50)), Some(0));
    }
}
