//! The sidecar as a process, against a real Kafka-protocol broker (tansu, started by
//! scripts/test): records become rows, every offset is confirmed, offsets are committed only
//! after that, bad records go to the DLQ, and crashes or SIGTERM lose nothing.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kafka::{confirmed, delete, log_ends, put, Pipeline, Rec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_become_rows_confirmations_and_commits() {
    let p = Pipeline::new("bulk", 3).await;
    let n = 10_000;
    let records: Vec<Rec> = (0..n)
        .map(|i| {
            let id = format!("item:{i:05}");
            match i % 5 {
                0 => put(
                    &id,
                    format!("{{ \"n\" : {i}, \"s\": \"é\" }}").as_bytes(),
                    &[("sync-state", "delta")],
                ),
                1 => put(
                    &id,
                    &[0, 1, 2, (i % 256) as u8],
                    &[("content-type", "application/octet-stream")],
                ),
                2 => put(
                    &id,
                    b"{\"x\":1}",
                    &[("sync-route", "sql"), ("content-type", "application/json")],
                ),
                3 => put(
                    &id,
                    b"cached",
                    &[("sync-route", "redis,sql"), ("sync-ttl", "hour")],
                ),
                _ => put(&id, format!("[{i}]").as_bytes(), &[]),
            }
        })
        .collect();
    let positions = p.produce(&records).await;
    let mut child = p.start("");
    let outs = p.read_until("out", Duration::from_secs(120), |o| confirmed(o).len() >= n);
    let seen = confirmed(&outs);
    let expected: BTreeSet<(i32, i64)> = positions.iter().copied().collect();
    assert_eq!(
        seen.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "a confirmation for every offset"
    );

    // the group's committed offsets reach the end of every partition
    p.wait_committed(
        &log_ends(positions.iter().copied()),
        Duration::from_secs(30),
    );
    child.sigterm();
    assert!(
        child.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        p.log()
    );

    // every row, byte for byte
    let rows = p.sql.raw().await.rows().await;
    assert_eq!(rows.len(), n);
    for (row, record) in rows.iter().zip(&records) {
        assert_eq!(Some(&row.id), record.key.as_ref());
        let value = record.value.as_ref().unwrap();
        match &row.payload {
            Some(text) => assert_eq!(text.as_bytes(), value.as_slice()),
            None => assert_eq!(row.payload_blob.as_ref(), Some(value)),
        }
        assert_eq!(row.content_hash, sync_engine::item::content_hash(value));
    }
    assert_eq!(rows.iter().filter(|r| r.state == b"delta").count(), n / 5);
    assert!(
        rows.iter()
            .filter(|r| r.id.ends_with(b"1"))
            .all(|r| r.payload_blob.is_some()),
        "octet-stream stays binary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_and_bad_records() {
    let p = Pipeline::new("order", 2).await;
    let long_key = "k".repeat(256);
    let mut records = Vec::new();
    for round in 0..3 {
        for i in 0..20 {
            let id = format!("key:{i}");
            records.push(put(&id, format!("v{round}").as_bytes(), &[]));
            if (i + round) % 3 == 0 {
                records.push(delete(&id));
            }
        }
    }
    let bad: Vec<(Rec, &str)> = vec![
        (
            Rec {
                key: None,
                value: Some(b"1".to_vec()),
                headers: vec![],
            },
            "missing_key",
        ),
        (put("", b"1", &[]), "empty_key"),
        (
            Rec {
                key: Some(b"\xff\xfe".to_vec()),
                value: Some(b"1".to_vec()),
                headers: vec![],
            },
            "key_not_utf8",
        ),
        (put(&long_key, b"1", &[]), "key_too_long"),
        (
            put(
                "bad:json",
                b"{nope",
                &[("content-type", "application/json")],
            ),
            "invalid_json",
        ),
        (
            put("bad:route", b"1", &[("sync-route", "disk")]),
            "unknown_route",
        ),
        (
            put("bad:ttl", b"1", &[("sync-ttl", "soon")]),
            "malformed_ttl",
        ),
        (
            put("bad:state", b"1", &[("sync-state", "")]),
            "invalid_state",
        ),
        (
            put(
                "bad:sqlttl",
                b"1",
                &[("sync-route", "sql"), ("sync-ttl", "60")],
            ),
            "ttl_without_redis",
        ),
        (put("bad:big", &vec![b'x'; 2048], &[]), "payload_too_large"),
    ];
    records.extend(bad.iter().map(|(r, _)| r.clone()));
    records.push(put("after:bad", b"still processed", &[]));
    let positions = p.produce(&records).await;
    let mut child = p.start("max_payload_bytes = 1024");
    let outs = p.read_until("out", Duration::from_secs(90), |o| {
        confirmed(o).len() >= records.len()
    });
    assert_eq!(confirmed(&outs).len(), positions.len());
    let dlq = p.read_until("dlq", Duration::from_secs(30), |o| o.len() >= bad.len());
    let codes: BTreeSet<&str> = dlq
        .iter()
        .map(|o| o.headers["sync-error-code"].as_str())
        .collect();
    let expected: BTreeSet<&str> = bad.iter().map(|(_, c)| *c).collect();
    assert_eq!(codes, expected);
    for out in &dlq {
        assert_eq!(out.headers["sync-source-topic"], p.topic("in"));
        assert!(!out.headers["sync-error-message"].is_empty());
        let original = bad
            .iter()
            .find(|(_, c)| *c == out.headers["sync-error-code"])
            .unwrap();
        assert_eq!(out.key, original.0.key, "original key kept");
        assert_eq!(out.value, original.0.value, "original value kept");
        assert!(out.headers.contains_key("sync-source-offset"));
    }
    child.sigterm();
    assert!(
        child.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        p.log()
    );

    let rows: BTreeMap<Vec<u8>, Vec<u8>> = p
        .sql
        .raw()
        .await
        .rows()
        .await
        .into_iter()
        .map(|r| {
            let content = r.content();
            (r.id, content)
        })
        .collect();
    for i in 0..20 {
        let id = format!("key:{i}").into_bytes();
        // last op of round 2: deleted when (i + 2) % 3 == 0, else v2
        let expect = ((i + 2) % 3 != 0).then(|| b"v2".to_vec());
        assert_eq!(rows.get(&id).cloned(), expect, "key:{i}");
    }
    assert_eq!(
        rows.get(b"after:bad".as_slice()).map(Vec::as_slice),
        Some(&b"still processed"[..])
    );
    assert!(!rows.keys().any(|k| k.starts_with(b"bad:")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_loses_nothing() {
    let p = Pipeline::new("crash", 2).await;
    let n = 6_000;
    let records: Vec<Rec> = (0..n)
        .map(|i| {
            put(
                &format!("c:{:04}", i % 1500),
                format!("{{\"i\":{i}}}").as_bytes(),
                &[],
            )
        })
        .collect();
    let positions = p.produce(&records).await;
    let mut child = p.start("batch_flush_count = 200");
    p.read_until("out", Duration::from_secs(90), |o| !o.is_empty());
    child.sigkill(); // mid-stream

    let mut child = p.start("batch_flush_count = 200");
    let outs = p.read_until("out", Duration::from_secs(120), |o| confirmed(o).len() >= n);
    child.sigterm();
    assert!(
        child.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        p.log()
    );
    let seen = confirmed(&outs);
    assert_eq!(
        seen.keys().copied().collect::<BTreeSet<_>>(),
        positions.iter().copied().collect::<BTreeSet<_>>()
    );

    // each id holds its last value: nothing lost, nothing regressed
    let rows = p.sql.raw().await.rows().await;
    assert_eq!(rows.len(), 1500);
    for row in rows {
        let i: usize = std::str::from_utf8(&row.id[2..]).unwrap().parse().unwrap();
        let last = (0..n).rev().find(|j| j % 1500 == i).unwrap();
        assert_eq!(
            row.payload.as_deref(),
            Some(format!("{{\"i\":{last}}}").as_str())
        );
    }
}
