//! The sidecar as an operator meets it: `/metrics` counts what was produced (and `promtool
//! check metrics` accepts the page), `/healthz` and `/readyz` answer, readiness fails while
//! MariaDB is away (cut by the fault proxy) and comes back with it, and the `[stall]` policy:
//! with `sync_items` gone under load, `exit` ends the process with code 75 and `wait` keeps it
//! up and unready until the table is back — committing, either way, nothing past what SQL
//! made durable. Real MariaDB, Redis and a real broker (tansu).

mod common;
#[path = "common/fault.rs"]
mod fault;
#[path = "common/kafka.rs"]
mod kafka;
#[path = "common/merkle_ref.rs"]
mod merkle_ref;
#[path = "common/stores.rs"]
mod stores;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::http_get as get;
use common::Backend;
use fault::{Mode, Proxy};
use kafka::{confirmed, log_ends, put, Feed, Pipeline, Rec, Sidecar};
use sqlx::Connection;

/// The address the sidecar logged for its endpoint (it listens on port 0 in tests).
fn endpoint(sidecar: &mut Sidecar) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let log = stores::strip_colors(&sidecar.log());
        if let Some(line) = log.lines().find(|l| l.contains("HTTP endpoint")) {
            let address = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("address="))
                .expect("the endpoint line names its address");
            return address.to_string();
        }
        assert!(sidecar.try_status().is_none(), "the sidecar exited:\n{log}");
        assert!(
            Instant::now() < end,
            "no endpoint logged within 60 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prometheus text: the sum of every sample of `name` whose labels contain all of `labels`.
fn sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && labels.iter().all(|want| series.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The partitions of the input topic that have a `sync_engine_consumer_lag_records` series,
/// with its value.
fn lags(metrics: &str, topic: &str) -> BTreeMap<i32, f64> {
    let topic = format!("topic=\"{topic}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("sync_engine_consumer_lag_records{") && l.contains(&topic))
        .filter_map(|l| {
            let partition = l.split("partition=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit_once(' ')?.1;
            Some((partition.parse().ok()?, value.parse().ok()?))
        })
        .collect()
}

/// `promtool check metrics` on a scrape: exit 0, or the test fails with what it said.
fn promtool_accepts(metrics: &str) {
    let checked = common::promtool(&["check", "metrics"], Some(metrics));
    assert!(
        checked.status.success(),
        "promtool check metrics: {}\n{}{}\n--- the scrape:\n{metrics}",
        checked.status,
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// What SQL has made durable per partition: the offset after the last record its
/// transactions committed (`sync_sources`, written with the rows).
async fn durable(p: &Pipeline) -> BTreeMap<i32, i64> {
    let mut conn = sqlx::MySqlConnection::connect(&p.sql.url).await.unwrap();
    let rows: Vec<(Vec<u8>, i64)> = sqlx::query_as("SELECT source, version FROM sync_sources")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let prefix = format!("{}/", p.topic("in"));
    rows.into_iter()
        .filter_map(|(source, version)| {
            let source = String::from_utf8(source).ok()?;
            Some((source.strip_prefix(&prefix)?.parse().ok()?, version))
        })
        .collect()
}

/// Every committed offset is at or below what SQL made durable for its partition.
async fn committed_only_what_is_durable(p: &Pipeline) -> BTreeMap<i32, i64> {
    let committed = p.committed();
    let durable = durable(p).await;
    for (partition, offset) in &committed {
        let made = durable.get(partition).copied().unwrap_or(0);
        assert!(
            *offset <= made,
            "partition {partition}: committed {offset}, but SQL made only {made} durable"
        );
    }
    committed
}

/// Runs one statement on the pipeline's database.
async fn sql(p: &Pipeline, statement: &str) {
    let mut conn = sqlx::MySqlConnection::connect(&p.sql.url).await.unwrap();
    sqlx::query(statement).execute(&mut conn).await.unwrap();
}

/// A continuous feed of puts to distinct ids.
fn feed(p: &Pipeline, prefix: &'static str) -> Feed {
    Feed::start(p.producer(), 20, Duration::from_millis(50), move |n| {
        put(&format!("{prefix}:{n:05}"), br#"{"n":3}"#, &[])
    })
}

fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_produced() {
    let p = Pipeline::on("ops-metrics", 2, Backend::mariadb().await).await;
    // a Redis prefix of its own: `verify` scans every key under it
    let redis_url = common::redis::url(common::redis::PLAIN_ENV);
    let mut sidecar = p.start(&format!(
        "redis_url = \"{redis_url}\"\nredis_prefix = \"{}:\"",
        p.name
    ));
    let address = endpoint(&mut sidecar);
    assert_eq!(get(&address, "/healthz").0, 200);

    let mut records: Vec<Rec> = (0..300)
        .map(|i| put(&format!("m:{i:03}"), br#"{"n":1}"#, &[]))
        .collect();
    records.extend((0..20).map(|i| put(&format!("bad:{i}"), b"{}", &[("sync-route", "nowhere")])));
    let sent = p.produce(&records).await;
    p.reader("out").until(Duration::from_secs(60), |outs| {
        confirmed(outs).len() >= sent.len()
    });

    let mut metrics = String::new();
    wait_until(
        "the counters reach what was produced",
        Duration::from_secs(30),
        || {
            metrics = get(&address, "/metrics").1;
            sum(&metrics, "sync_engine_confirmed_records_total", &[]) >= 320.0
        },
    );
    let topic = format!("topic=\"{}\"", p.topic("in"));
    assert_eq!(
        sum(&metrics, "sync_engine_records_received_total", &[&topic]),
        320.0,
        "{metrics}"
    );
    assert_eq!(
        sum(
            &metrics,
            "sync_engine_dlq_records_total",
            &["code=\"unknown_route\""]
        ),
        20.0,
        "{metrics}"
    );
    assert_eq!(
        sum(
            &metrics,
            "sync_engine_confirmed_records_total",
            &["op=\"put\"", "outcome=\"applied\""]
        ),
        300.0,
        "{metrics}"
    );
    assert_eq!(
        sum(
            &metrics,
            "sync_engine_confirmed_records_total",
            &["op=\"dlq\""]
        ),
        20.0
    );
    let per_partition: BTreeMap<i32, usize> = sent.iter().fold(BTreeMap::new(), |mut m, (p, _)| {
        *m.entry(*p).or_default() += 1;
        m
    });
    for (partition, count) in per_partition {
        let label = format!("partition=\"{partition}\"");
        assert_eq!(
            sum(
                &metrics,
                "sync_engine_records_received_total",
                &[&topic, &label]
            ),
            count as f64
        );
    }
    assert!(sum(&metrics, "sync_engine_confirmations_total", &[]) >= 1.0);
    assert!(sum(&metrics, "sync_engine_commits_total", &[]) >= 1.0);
    assert!(sum(&metrics, "sync_engine_last_commit_timestamp_seconds", &[]) > 1.6e9);
    assert!(metrics.contains("sync_engine_cycle_duration_seconds_bucket"));
    assert_eq!(sum(&metrics, "sync_engine_build_info", &[]), 1.0);
    assert_eq!(sum(&metrics, "sync_engine_paused", &[]), 0.0);
    assert!(metrics.contains("\nsync_engine_stalled 0\n"), "{metrics}");
    assert_eq!(
        sum(&metrics, "sync_engine_ready", &[]),
        1.0,
        "what /readyz says"
    );

    // the engine's side: every record that reached the engine was in exactly one batch (the
    // DLQ records never do), each batch one SQL transaction and one Redis pipeline at least
    assert_eq!(sum(&metrics, "sync_engine_batch_records_sum", &[]), 300.0);
    let batches = sum(&metrics, "sync_engine_batch_records_count", &[]);
    assert!(batches >= 1.0, "{metrics}");
    assert_eq!(
        sum(
            &metrics,
            "sync_engine_sql_transaction_duration_seconds_count",
            &[]
        ),
        batches
    );
    assert!(
        sum(
            &metrics,
            "sync_engine_redis_pipeline_duration_seconds_count",
            &[]
        ) >= batches
    );
    assert_eq!(sum(&metrics, "sync_engine_sql_errors_total", &[]), 0.0);
    assert_eq!(sum(&metrics, "sync_engine_redis_errors_total", &[]), 0.0);
    assert_eq!(sum(&metrics, "sync_engine_redis_circuit_open", &[]), 0.0);
    assert!(metrics.contains("\nsync_engine_redis_circuit_open 0\n"));
    // one confirm-and-commit per cycle that confirmed; one produce→confirmation sample per
    // confirmed partition batch (the test's producer stamps CreateTime)
    assert!(
        sum(
            &metrics,
            "sync_engine_confirm_commit_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    let confirmed_batches = sum(
        &metrics,
        "sync_engine_produce_to_confirmation_seconds_count",
        &[],
    );
    assert!(confirmed_batches >= 2.0, "one per partition at least");
    assert!(confirmed_batches <= sum(&metrics, "sync_engine_confirmations_total", &[]));
    assert!(
        sum(
            &metrics,
            "sync_engine_produce_to_confirmation_seconds_sum",
            &[]
        ) > 0.0
    );
    // in `run` L1 holds pending writes only (the sidecar serves no reads): with everything
    // committed, L1 holds nothing and the gauges, sampled again since, say so
    wait_until("the memory gauges sampled", Duration::from_secs(30), || {
        metrics = get(&address, "/metrics").1;
        ["l1_bytes", "pending_bytes", "memory_pressure_ratio"]
            .iter()
            .map(|g| format!("sync_engine_{g}"))
            .all(|g| metrics.contains(&format!("\n{g} ")) && sum(&metrics, &g, &[]) == 0.0)
    });
    // the lag of both partitions, from librdkafka's statistics (every 5 s): everything
    // consumed is committed, so 0 (on tansu, whose watermarks trail the log, as on a broker
    // whose watermarks do not)
    let input = p.topic("in");
    wait_until(
        "a lag of 0 on both partitions",
        Duration::from_secs(60),
        || {
            metrics = get(&address, "/metrics").1;
            let lags = lags(&metrics, &input);
            lags.len() == 2 && lags.values().all(|lag| *lag == 0.0)
        },
    );
    promtool_accepts(&metrics);
    let (status, body) = get(&address, "/readyz");
    assert_eq!(status, 200, "{body}");
    sidecar.stop();

    // the DLQ records are summarized, not logged one WARN each: one report per 10 s at most
    // (the 20 came in one or two cycles), everything reported by the end of the drain
    let log = stores::strip_colors(&sidecar.log());
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("records sent to the DLQ"))
        .collect();
    assert!(!reports.is_empty() && reports.len() <= 2, "{reports:#?}");
    let reported: u64 = reports
        .iter()
        .map(|l| {
            assert!(l.contains("WARN") && l.contains("unknown_route"), "{l}");
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("total="))
                .and_then(|n| n.parse::<u64>().ok())
                .expect("a total")
        })
        .sum();
    assert_eq!(reported, 20, "{reports:#?}");

    // `verify` with the broker unreachable: SQL verified, the checkpoint comparison skipped
    let ran = std::process::Command::new(env!("CARGO_BIN_EXE_sync-engine"))
        .args(["verify", "--pipeline"])
        .arg(&sidecar.pipeline)
        .env("SYNC_ENGINE__KAFKA__BROKERS", "127.0.0.1:1")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("checkpoints: skipped"), "{stdout}");
    assert!(stdout.contains("OK: 2 partitions, 300 rows"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_sql_is_away_and_returns_with_it() {
    let p = Pipeline::on("ops-ready", 2, Backend::mariadb().await).await;
    let proxy = Proxy::start(&stores::host_port(&p.sql.url));
    let through = stores::through(&p.sql.url, &proxy.addr());
    let mut sidecar = p.start_with(
        "",
        &[
            ("SYNC_ENGINE__SQL_URL", &through),
            ("SYNC_ENGINE__HTTP__UNREADY_AFTER_MS", "1000"),
            // stalled after 3 s of it, and waiting (the default would exit)
            ("SYNC_ENGINE__STALL__AFTER_MS", "3000"),
            ("SYNC_ENGINE__STALL__POLICY", "wait"),
        ],
    );
    let address = endpoint(&mut sidecar);
    wait_until(
        "ready once the group is joined",
        Duration::from_secs(60),
        || get(&address, "/readyz").0 == 200,
    );

    proxy.set(Mode::Reset);
    let records: Vec<Rec> = (0..50)
        .map(|i| put(&format!("r:{i:02}"), br#"{"n":2}"#, &[]))
        .collect();
    let sent = p.produce(&records).await;
    let mut body = String::new();
    wait_until(
        "not ready while SQL is away",
        Duration::from_secs(60),
        || {
            let (status, text) = get(&address, "/readyz");
            body = text;
            status == 503
        },
    );
    let reason: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reason["ready"], false);
    assert!(
        reason["reason"]
            .as_str()
            .unwrap()
            .contains("checkpoints failing"),
        "{body}"
    );
    assert_eq!(get(&address, "/healthz").0, 200, "alive while not ready");
    let metrics = get(&address, "/metrics").1;
    assert!(
        sum(
            &metrics,
            "sync_engine_cycle_failures_total",
            &["class=\"retryable\""]
        ) >= 1.0
    );
    assert_eq!(sum(&metrics, "sync_engine_paused", &[]), 1.0, "{metrics}");
    assert_eq!(
        sum(&metrics, "sync_engine_confirmed_records_total", &[]),
        0.0
    );
    // an outage is retryable: stalled once it has lasted [stall] after_ms, and still up
    let mut metrics = String::new();
    wait_until("stalled after 3 s", Duration::from_secs(60), || {
        metrics = get(&address, "/metrics").1;
        sum(&metrics, "sync_engine_stalled", &[]) == 1.0
    });
    assert_eq!(sum(&metrics, "sync_engine_ready", &[]), 0.0, "{metrics}");
    let (status, body) = get(&address, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stalled: checkpoints failing for"), "{body}");
    assert!(
        sum(
            &metrics,
            "sync_engine_sql_errors_total",
            &["class=\"retryable\""]
        ) >= 1.0,
        "{metrics}"
    );
    assert!(sidecar.try_status().is_none(), "policy wait: still running");

    proxy.restore();
    wait_until(
        "ready again once SQL is back",
        Duration::from_secs(60),
        || get(&address, "/readyz").0 == 200,
    );
    assert_eq!(
        sum(&get(&address, "/metrics").1, "sync_engine_stalled", &[]),
        0.0
    );
    p.reader("out").until(Duration::from_secs(60), |outs| {
        confirmed(outs).len() >= sent.len()
    });
    sidecar.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_table_under_policy_exit_ends_the_process_with_75_and_commits_nothing_more() {
    let p = Pipeline::on("ops-stall-exit", 2, Backend::mariadb().await).await;
    let mut sidecar = p.start("[stall]\npolicy = \"exit\"");
    let address = endpoint(&mut sidecar);
    let first: Vec<Rec> = (0..100)
        .map(|i| put(&format!("x:first:{i:03}"), br#"{"n":1}"#, &[]))
        .collect();
    let mut sent = p.produce(&first).await;
    p.wait_committed(&log_ends(sent.iter().copied()), Duration::from_secs(60));
    assert_eq!(get(&address, "/readyz").0, 200);

    // under load, the table disappears (renamed away, so it can come back whole)
    let load = feed(&p, "x:load");
    wait_until("the feed flowing", Duration::from_secs(30), || {
        load.sent().len() >= 40
    });
    sql(&p, "RENAME TABLE sync_items TO sync_items_away").await;
    let status = sidecar.wait_exit(Duration::from_secs(60));
    let fed = load.stop();
    assert_eq!(status.code(), Some(75), "{status}; log:\n{}", sidecar.log());
    let log = stores::strip_colors(&sidecar.log());
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("pipeline stalled")
            && l.contains("sync_items")
            && l.contains("policy = exit")),
        "{log}"
    );
    let committed = committed_only_what_is_durable(&p).await;
    let ends_before = log_ends(sent.iter().copied());
    for (partition, end) in &ends_before {
        assert!(committed[partition] >= *end, "the first wave was committed");
    }

    // the table back, a new process delivers everything: nothing was lost
    sql(&p, "RENAME TABLE sync_items_away TO sync_items").await;
    sent.extend(fed.iter().map(|(_, position)| *position));
    let mut next = p.start("");
    p.wait_committed(&log_ends(sent.iter().copied()), Duration::from_secs(120));
    let mut raw = p.sql.raw().await;
    assert_eq!(raw.ids().await.len(), first.len() + fed.len());
    next.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_table_under_policy_wait_keeps_the_process_up_and_unready_until_it_is_back() {
    let p = Pipeline::on("ops-stall-wait", 2, Backend::mariadb().await).await;
    // the policy from the environment, over the file's default
    let mut sidecar = p.start_with("", &[("SYNC_ENGINE__STALL__POLICY", "wait")]);
    let address = endpoint(&mut sidecar);
    wait_until(
        "ready once the group is joined",
        Duration::from_secs(60),
        || get(&address, "/readyz").0 == 200,
    );

    let load = feed(&p, "w:load");
    wait_until("the feed flowing", Duration::from_secs(30), || {
        load.sent().len() >= 40
    });
    sql(&p, "RENAME TABLE sync_items TO sync_items_away").await;
    let gone_at = Instant::now();
    let mut body = String::new();
    wait_until("unready, stalled", Duration::from_secs(60), || {
        let (status, text) = get(&address, "/readyz");
        body = text;
        status == 503 && body.contains("stalled")
    });
    assert!(
        body.contains("sync_items"),
        "the reason names the table: {body}"
    );
    assert_eq!(get(&address, "/healthz").0, 200, "alive while stalled");
    let mut metrics = String::new();
    // what was consumed and not committed shows as lag (librdkafka's statistics, every 5 s)
    let input = p.topic("in");
    wait_until(
        "the stuck records counted as lag",
        Duration::from_secs(60),
        || {
            metrics = get(&address, "/metrics").1;
            lags(&metrics, &input).values().sum::<f64>() >= 1.0
        },
    );
    assert_eq!(sum(&metrics, "sync_engine_stalled", &[]), 1.0, "{metrics}");
    assert_eq!(sum(&metrics, "sync_engine_paused", &[]), 1.0, "{metrics}");
    assert!(
        sum(
            &metrics,
            "sync_engine_sql_errors_total",
            &["class=\"fatal\""]
        ) >= 1.0,
        "{metrics}"
    );
    promtool_accepts(&metrics);
    assert!(sidecar.try_status().is_none(), "policy wait: still running");
    committed_only_what_is_durable(&p).await;
    let log = stores::strip_colors(&sidecar.log());
    let reports = log
        .lines()
        .filter(|l| l.contains("pipeline stalled"))
        .count();
    // the reason is logged once a minute, not on every retry (one every 5 s at most)
    let minutes = gone_at.elapsed().as_secs() / 60;
    assert!(
        reports >= 1 && reports as u64 <= 1 + minutes,
        "{reports} reports in {minutes} min:\n{log}"
    );

    // the table back: it carries on by itself, and delivers everything
    sql(&p, "RENAME TABLE sync_items_away TO sync_items").await;
    wait_until(
        "ready again once the table is back",
        Duration::from_secs(60),
        || get(&address, "/readyz").0 == 200,
    );
    let fed = load.stop();
    let positions: Vec<(i32, i64)> = fed.iter().map(|(_, position)| *position).collect();
    p.wait_committed(&log_ends(positions), Duration::from_secs(60));
    assert_eq!(
        sum(&get(&address, "/metrics").1, "sync_engine_stalled", &[]),
        0.0
    );
    let mut raw = p.sql.raw().await;
    assert_eq!(raw.ids().await.len(), fed.len());
    sidecar.stop();
}
