//! `sync-engine dev`: the sidecar with no external service. librdkafka's in-process mock
//! cluster plays the broker, L3 is a local SQLite file, Redis is used only if a URL is given.
//! `--demo` also produces a sample workload and follows its confirmations to the end, on a
//! progress bar with the rate over the last seconds (log lines go above the bar).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;
use sync_engine::config::redacted;
use sync_engine::sidecar::config::{KafkaConfig, PipelineConfig};
use sync_engine::{SyncEngine, SyncEngineConfig};
use tokio::sync::watch;

use crate::logs::LogWriter;

const PARTITIONS: i32 = 4;
/// The progress bar's rate is measured over this long.
const RATE_WINDOW: Duration = Duration::from_secs(3);

pub struct DevOptions {
    pub demo: bool,
    pub items: usize,
    pub db: PathBuf,
    pub redis_url: Option<String>,
}

pub async fn dev(
    options: DevOptions,
    stop: Arc<AtomicBool>,
    log_writer: LogWriter,
) -> anyhow::Result<()> {
    let cluster = MockCluster::new(1).context("starting the mock Kafka cluster")?;
    let brokers = cluster.bootstrap_servers();
    let kafka = KafkaConfig {
        brokers: brokers.clone(),
        group_id: "sync-engine-dev".into(),
        ..KafkaConfig::default()
    };
    for topic in [&kafka.input_topic, &kafka.output_topic, &kafka.dlq_topic] {
        cluster.create_topic(topic, PARTITIONS, 1)?;
    }
    let engine = SyncEngineConfig {
        sql_url: Some(format!("sqlite://{}?mode=rwc", options.db.display())),
        redis_url: options.redis_url.clone(),
        redis_prefix: Some("dev:".into()),
        batch_flush_ms: 50,
        ..SyncEngineConfig::default()
    };
    let config = PipelineConfig {
        engine: engine.clone(),
        kafka: kafka.clone(),
        // no endpoint: `dev` is for one developer's machine, and tests run several at once
        http: sync_engine::sidecar::config::HttpConfig {
            listen: String::new(),
            ..Default::default()
        },
        ..Default::default()
    };
    println!(
        "mock Kafka broker: {brokers}  (topics {}, {}, {}; {PARTITIONS} partitions each)",
        kafka.input_topic, kafka.output_topic, kafka.dlq_topic
    );
    println!(
        "L3: {}   L2: {}",
        options.db.display(),
        options
            .redis_url
            .as_deref()
            .map_or("none (pass --redis-url)".into(), redacted)
    );
    println!("produce from another terminal, e.g.:");
    println!(
        "  echo '{{\"name\":\"Ada\"}}' | kcat -P -b {brokers} -t {} -k user:1 -H sync-state=active",
        kafka.input_topic
    );
    println!(
        "  kcat -C -b {brokers} -t {} -e   # confirmations",
        kafka.output_topic
    );

    let sidecar = tokio::spawn(sync_engine::sidecar::run(config, None, stop.clone()));
    if options.demo {
        let outcome = demo(
            &kafka,
            options.items,
            options.redis_url.is_some(),
            &log_writer,
        )
        .await;
        stop.store(true, Ordering::SeqCst);
        let summary = sidecar.await??;
        if summary.stalled {
            anyhow::bail!("the pipeline stalled (the log says why)");
        }
        let elapsed = outcome?;
        let persisted = count_rows(&engine).await?;
        println!(
            "demo done: {} records in {elapsed:.2?} ({:.0} records/s end to end), {persisted} items persisted in SQL, {} sent to the DLQ, {} confirmations",
            options.items,
            options.items as f64 / elapsed.as_secs_f64(),
            summary.dlq,
            summary.confirmations,
        );
    } else {
        println!(
            "running; Ctrl-C stops (everything consumed is flushed, confirmed and committed first)"
        );
        let summary = sidecar.await??;
        if summary.stalled {
            anyhow::bail!("the pipeline stalled (the log says why)");
        }
        println!(
            "stopped: {} written, {} to the DLQ, {} confirmations",
            summary.written, summary.dlq, summary.confirmations
        );
    }
    drop(cluster);
    Ok(())
}

/// Key, value (None: delete) and headers of one demo record.
type SampleRecord = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(&'static str, String)>,
);

/// Record `i` of the demo: JSON and binary items, states, TTLs, deletes, and a few bad ones.
fn sample(i: usize, has_redis: bool) -> SampleRecord {
    let id = format!("demo:{:05}", i % 5000);
    match i % 50 {
        49 => (
            Some(id.into_bytes()),
            Some(b"{not json".to_vec()),
            vec![("content-type", "application/json".into())],
        ),
        48 => (None, Some(b"no key".to_vec()), vec![]),
        47 => (
            Some(id.into_bytes()),
            Some(b"x".to_vec()),
            vec![("sync-ttl", "soon".into())],
        ),
        n if n % 10 == 9 => (Some(id.into_bytes()), None, vec![]), // delete
        n if n % 7 == 0 => (
            Some(id.into_bytes()),
            Some(vec![0, 1, 2, 0xFF, (i % 256) as u8]),
            vec![("content-type", "application/octet-stream".into())],
        ),
        n if n % 5 == 0 => (
            Some(id.into_bytes()),
            Some(
                serde_json::to_vec(&json!({"session": i, "user": format!("u{}", i % 97)}))
                    .expect("json"),
            ),
            // sessions: cache-only with a TTL where there is a Redis, else kept in SQL too
            match has_redis {
                true => vec![("sync-route", "redis".into()), ("sync-ttl", "hour".into())],
                false => vec![("sync-ttl", "hour".into())],
            },
        ),
        _ => (
            Some(id.into_bytes()),
            Some(
                serde_json::to_vec(
                    &json!({"n": i, "name": format!("item {i}"), "tags": ["a", "b"]}),
                )
                .expect("json"),
            ),
            vec![(
                "sync-state",
                if i % 3 == 0 { "delta" } else { "base" }.into(),
            )],
        ),
    }
}

/// Produces the workload and follows the confirmations until every record is accounted for.
async fn demo(
    kafka: &KafkaConfig,
    items: usize,
    has_redis: bool,
    log_writer: &LogWriter,
) -> anyhow::Result<Duration> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("linger.ms", "5")
        .create()?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(items);
    for i in 0..items {
        let (key, value, headers) = sample(i, has_redis);
        let mut owned = OwnedHeaders::new();
        for (k, v) in &headers {
            owned = owned.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&kafka.input_topic).headers(owned);
        if let Some(key) = &key {
            record = record.key(key);
        }
        if let Some(value) = &value {
            record = record.payload(value);
        }
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for delivery in deliveries {
        delivery.await?.map_err(|(e, _)| e)?;
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "sync-engine-dev-demo")
        .create()?;
    let mut partitions = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        partitions.add_partition_offset(&kafka.output_topic, p, Offset::Beginning)?;
    }
    consumer.assign(&partitions)?;
    let bar = ProgressBar::new(items as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} records confirmed, {msg}",
    )?);
    log_writer.above(&bar);
    let mut rate = Rate::new(RATE_WINDOW);
    let mut last = "waiting for the sidecar to join its group".to_string();
    let mut confirmed = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while confirmed < items {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {confirmed} of {items} records confirmed after 5 minutes"
        );
        let consumer_poll =
            tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(100)));
        if let Some(message) = consumer_poll {
            let message = message?;
            let event: serde_json::Value =
                serde_json::from_slice(message.payload().unwrap_or_default())?;
            // checkpoint events share the topic; they confirm nothing
            if let Some(confirmed_items) = event["items"].as_array() {
                confirmed += confirmed_items.len();
                bar.set_position(confirmed as u64);
                last = format!(
                    "partition {} up to offset {}",
                    event["partition"], event["last_offset"]
                );
            }
        }
        let per_sec = rate.update(Instant::now(), confirmed as u64);
        bar.set_message(format!("{per_sec:.0} records/s, {last}"));
    }
    bar.finish();
    Ok(started.elapsed())
}

/// Records per second over the last `window`. (indicatif's `{per_sec}` is a double-smoothed
/// average over some 15 s since the bar appeared: here that includes the seconds before the
/// sidecar had joined its group, and it lags far behind confirmations that come in bursts —
/// it showed 30/s while 1 950/s went through.)
struct Rate {
    window: Duration,
    /// (when, position), oldest first: the last one at or before the window's start, then
    /// every one since.
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn new(window: Duration) -> Rate {
        Rate {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records `position` at `now`; the rate from the window's start to now.
    fn update(&mut self, now: Instant, position: u64) -> f64 {
        self.samples.push_back((now, position));
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
        let (since, from) = self.samples[0];
        let secs = now.duration_since(since).as_secs_f64();
        if secs > 0.0 {
            position.saturating_sub(from) as f64 / secs
        } else {
            0.0
        }
    }
}

async fn count_rows(config: &SyncEngineConfig) -> anyhow::Result<u64> {
    let (_tx, rx) = watch::channel(config.clone());
    let mut engine = SyncEngine::new(config.clone(), rx);
    engine.start().await?;
    let count = engine.count_prefix("").await?;
    engine.shutdown().await;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_what_went_through_in_the_window_even_in_bursts() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut rate = Rate::new(Duration::from_secs(3));
        // 3 s of nothing (the group forming), then 1 400 records at the end of every second,
        // sampled every 100 ms
        let mut shown = Vec::new();
        for tick in 0..=100u64 {
            let position = if tick < 30 { 0 } else { (tick / 10 - 2) * 1400 };
            shown.push(rate.update(at(tick * 100), position));
        }
        assert_eq!(shown[0], 0.0);
        assert_eq!(shown[29], 0.0);
        assert_eq!(shown[30], 1400.0 / 3.0, "one burst in the window");
        assert_eq!(shown[100], 1400.0, "three bursts in three seconds");
    }
}
