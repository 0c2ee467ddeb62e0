//! The sidecar's HTTP endpoint, as an operator meets it: `/metrics` counts what was produced,
//! `/healthz` and `/readyz` answer, and readiness fails while MariaDB is away (cut by the
//! fault proxy) and comes back with it. Real MariaDB and a real broker (tansu).

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
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Backend;
use fault::{Mode, Proxy};
use kafka::{confirmed, put, Pipeline, Rec, Sidecar};

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

/// `GET path` over HTTP/1.0: (status, body).
fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
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
    let mut sidecar = p.start("");
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

    proxy.restore();
    wait_until(
        "ready again once SQL is back",
        Duration::from_secs(60),
        || get(&address, "/readyz").0 == 200,
    );
    p.reader("out").until(Duration::from_secs(60), |outs| {
        confirmed(outs).len() >= sent.len()
    });
    sidecar.stop();
}
