//! Backpressure in the sidecar, on a real broker: when the engine's pending budget is full, or
//! SQL stops taking writes, the sidecar pauses its partitions (it neither drops records nor
//! grows without bound) and resumes afterwards, with every record landing.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use std::time::{Duration, Instant};

use kafka::{confirmed, put, Pipeline, Rec};
use sqlx::Connection;

fn records(from: usize, n: usize) -> Vec<Rec> {
    (from..from + n)
        .map(|i| {
            put(
                &format!("bp:{i:05}"),
                format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(1000)).as_bytes(),
                &[],
            )
        })
        .collect()
}

fn wait_for_log(p: &Pipeline, needle: &str, deadline: Duration) {
    let end = Instant::now() + deadline;
    while !p.log().contains(needle) {
        assert!(
            Instant::now() < end,
            "no {needle:?} in the log:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_engine_pauses_partitions_instead_of_growing() {
    let p = Pipeline::new("full", 2).await;
    // a 3 MiB L1: pending may hold ~2.7 MiB; the sidecar pauses when 1 MiB more would not
    // fit, and only a checkpoint every 2 s drains it
    let extra = "l1_max_bytes = 3145728\nbatch_flush_count = 100000\nbatch_flush_bytes = 67108864";
    let wave = records(0, 5000);
    let positions = p.produce(&wave).await;
    let mut sidecar = p.start_with(extra, &[("SYNC_ENGINE__BATCH_FLUSH_MS", "2000")]);
    let mut out = p.reader("out");
    out.until(Duration::from_secs(120), |o| {
        confirmed(o).len() >= wave.len()
    });
    wait_for_log(&p, "pausing partitions", Duration::from_secs(5));
    wait_for_log(&p, "resuming partitions", Duration::from_secs(5));
    sidecar.sigterm();
    assert!(
        sidecar.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        p.log()
    );
    assert_eq!(
        {
            out.poll(Duration::from_millis(100));
            confirmed(&out.outs)
        }
        .len(),
        positions.len()
    );
    assert_eq!(p.sql.raw().await.rows().await.len(), wave.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sql_outage_pauses_then_everything_lands() {
    let p = Pipeline::new("outage", 2).await;
    let first = records(0, 500);
    p.produce(&first).await;
    let mut sidecar = p.start("");
    let mut out = p.reader("out");
    out.until(Duration::from_secs(90), |o| {
        confirmed(o).len() >= first.len()
    });

    // SQL stops taking writes: another connection holds SQLite's write lock
    let mut blocker = sqlx::SqliteConnection::connect(&p.sql.url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let second = records(500, 1500);
    p.produce(&second).await;
    wait_for_log(&p, "pausing partitions", Duration::from_secs(60));
    let during = {
        out.poll(Duration::from_millis(100));
        confirmed(&out.outs)
    }
    .len();
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    drop(blocker);

    out.until(Duration::from_secs(120), |o| {
        confirmed(o).len() >= first.len() + second.len()
    });
    wait_for_log(&p, "resuming partitions", Duration::from_secs(10));
    sidecar.sigterm();
    assert!(
        sidecar.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        p.log()
    );
    assert!(
        during < first.len() + second.len(),
        "nothing is confirmed before it is durable"
    );
    let rows = p.sql.raw().await.rows().await;
    assert_eq!(rows.len(), first.len() + second.len(), "nothing lost");
}
