//! The engine on real SQL: every scenario runs on SQLite and on MariaDB.

mod common;

use common::Backend;
use serde_json::json;
use sync_engine::item::content_hash;
use sync_engine::{ContentType, SubmitOptions, SyncError, SyncItem};

fn json_item(id: &str, text: &str) -> SyncItem {
    let item = SyncItem::new(id.into(), text.as_bytes().to_vec());
    assert_eq!(item.content_type(), ContentType::Json, "{text}");
    item
}

async fn byte_exact_round_trip(backend: Backend) {
    let engine = backend.engine().await;
    let json_texts = [
        ("j.space", "{ \"b\" :  1 ,\n\t\"a\" : [ 1 , 2 ] }  "),
        ("j.order", r#"{"z":1,"a":2,"m":{"y":null,"b":true}}"#),
        ("j.unicode", r#"{"name":"Zoë ☃ 𝄞 日本","esc":"\u00e9\n"}"#),
        (
            "j.numbers",
            r#"{"big":123456789012345678901234567890,"f":1.0e-7,"neg":-0.0}"#,
        ),
        ("j.scalar", "  42  "),
    ];
    let binary = b"\x00bin\x00\xff\xfe\x00".to_vec();
    for (id, text) in json_texts {
        engine.submit(json_item(id, text)).await.unwrap();
    }
    engine
        .submit(SyncItem::new("b.nul".into(), binary.clone()))
        .await
        .unwrap();
    engine
        .submit(SyncItem::new("b.empty".into(), Vec::new()))
        .await
        .unwrap();

    // pending, durable, and read back from SQL with L1 cleared
    for phase in ["pending", "flushed", "from-sql"] {
        match phase {
            "flushed" => engine.flush().await.unwrap(),
            "from-sql" => engine.clear_l1(),
            _ => {}
        }
        for (id, text) in json_texts {
            let got = engine.get_verified(id).await.unwrap().expect(id);
            assert_eq!(got.content(), text.as_bytes(), "{phase} {id}");
            assert_eq!(got.content_type(), ContentType::Json);
        }
        let got = engine.get_verified("b.nul").await.unwrap().unwrap();
        assert_eq!(got.content(), &binary[..], "{phase}");
        assert_eq!(got.content_type(), ContentType::Binary);
        assert_eq!(engine.get("b.empty").await.unwrap().unwrap().content(), b"");
    }
    assert_eq!(engine.l1_stats().cached_items, 7, "reads from SQL warm L1");

    // the table holds the text verbatim in `payload`, bytes in `payload_blob`
    let mut raw = backend.raw().await;
    for (id, text) in json_texts {
        let row = raw.row(id).await.unwrap();
        assert_eq!(row.payload.as_deref(), Some(text));
        assert_eq!(row.payload_blob, None);
        assert_eq!(row.content_hash, content_hash(text.as_bytes()));
    }
    let row = raw.row("b.nul").await.unwrap();
    assert_eq!(
        (row.payload, row.payload_blob),
        (None, Some(binary.clone()))
    );
    assert_eq!(row.content_hash, content_hash(&binary));
    engine.shutdown().await;
}

async fn ids_are_exact_and_prefixes_literal(backend: Backend) {
    let engine = backend.engine().await;
    let ids = [
        "Key", "key", "KEY", "a", "a ", "a%", "a%b", "ab", "a_", "a_b", "aXb", "a\\", "a\\b",
        "a.b", "a:b", "a:", "b", "%", "_",
    ];
    for (i, id) in ids.iter().enumerate() {
        engine
            .submit(SyncItem::new(id.to_string(), format!("v{i}").into_bytes()))
            .await
            .unwrap();
    }
    engine.flush().await.unwrap();
    engine.clear_l1();
    for (i, id) in ids.iter().enumerate() {
        let got = engine
            .get(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id:?} missing"));
        assert_eq!(got.id(), *id);
        assert_eq!(got.content(), format!("v{i}").as_bytes(), "{id:?}");
    }
    let expect = |prefix: &str| -> Vec<&str> {
        let mut want: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| id.starts_with(prefix))
            .collect();
        want.sort();
        want
    };
    for prefix in ["a%", "a_", "a\\", "a.", "a:", "K", "k", "a ", "%", "_", ""] {
        let got: Vec<String> = engine
            .scan_prefix(prefix, 1000)
            .await
            .unwrap()
            .iter()
            .map(|i| i.id().to_string())
            .collect();
        assert_eq!(got, expect(prefix), "scan_prefix({prefix:?})");
        assert_eq!(
            engine.count_prefix(prefix).await.unwrap(),
            expect(prefix).len() as u64
        );
    }
    assert_eq!(engine.scan_prefix("a", 3).await.unwrap().len(), 3, "limit");

    assert_eq!(engine.delete_prefix("a_").await.unwrap(), 2);
    assert_eq!(engine.delete_prefix("a%").await.unwrap(), 2);
    assert_eq!(engine.delete_prefix("a\\").await.unwrap(), 2);
    let left: Vec<Vec<u8>> = backend.raw().await.ids().await;
    let mut want: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !id.starts_with("a_") && !id.starts_with("a%") && !id.starts_with("a\\"))
        .collect();
    want.sort();
    assert_eq!(
        left,
        want.iter()
            .map(|s| s.as_bytes().to_vec())
            .collect::<Vec<_>>()
    );
    assert!(engine.get("a_b").await.unwrap().is_none());
    assert!(
        engine.get("aXb").await.unwrap().is_some(),
        "_ is not a wildcard"
    );
    engine.shutdown().await;
}

async fn deletes_keep_their_order(backend: Backend) {
    let engine = backend.engine().await;
    // same batch: put, delete, put, delete
    engine
        .submit(SyncItem::new("same".into(), b"1".to_vec()))
        .await
        .unwrap();
    engine.delete("same").await.unwrap();
    engine
        .submit(SyncItem::new("revived".into(), b"1".to_vec()))
        .await
        .unwrap();
    engine.delete("revived").await.unwrap();
    engine
        .submit(SyncItem::new("revived".into(), b"2".to_vec()))
        .await
        .unwrap();
    assert!(
        engine.get("same").await.unwrap().is_none(),
        "pending delete hides the put"
    );
    engine.flush().await.unwrap();
    // across batches
    engine
        .submit(SyncItem::new("across".into(), b"1".to_vec()))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    engine.delete("across").await.unwrap();
    engine.flush().await.unwrap();
    engine.clear_l1();
    assert!(engine.get("same").await.unwrap().is_none());
    assert!(engine.get("across").await.unwrap().is_none());
    assert_eq!(
        engine.get("revived").await.unwrap().unwrap().content(),
        b"2"
    );
    let ids: Vec<Vec<u8>> = backend.raw().await.ids().await;
    assert_eq!(ids, vec![b"revived".to_vec()]);
    engine.shutdown().await;
}

async fn replaying_older_versions_changes_nothing(backend: Backend) {
    let engine = backend.engine().await;
    engine
        .submit(SyncItem::new("k".into(), b"new".to_vec()).with_version(100))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    let before = backend.raw().await.rows().await;

    engine
        .submit(SyncItem::new("k".into(), b"old".to_vec()).with_version(50))
        .await
        .unwrap();
    engine
        .submit(SyncItem::new("k".into(), b"same".to_vec()).with_version(100))
        .await
        .unwrap();
    engine.delete_at("k", 99).await.unwrap();
    assert_eq!(
        engine.get("k").await.unwrap().unwrap().content(),
        b"new",
        "L1 keeps the newer"
    );
    engine.flush().await.unwrap();
    assert_eq!(
        backend.raw().await.rows().await,
        before,
        "replays are no-ops in SQL"
    );
    engine.clear_l1();
    assert_eq!(engine.get("k").await.unwrap().unwrap().content(), b"new");

    // a delete leaves a tombstone: an older put replayed after it cannot resurrect the item
    engine.delete_at("k", 200).await.unwrap();
    engine.flush().await.unwrap();
    engine
        .submit(SyncItem::new("k".into(), b"older".to_vec()).with_version(150))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    engine.clear_l1();
    assert!(engine.get("k").await.unwrap().is_none());
    assert!(backend.raw().await.rows().await.is_empty());
    // a newer put does
    engine
        .submit(SyncItem::new("k".into(), b"newest".to_vec()).with_version(300))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    engine.clear_l1();
    assert_eq!(engine.get("k").await.unwrap().unwrap().content(), b"newest");
    engine.shutdown().await;
}

/// A cache-only write that follows a durable one of the same id, before the batch commits,
/// must not take the durable one's place in the batch: SQL still gets it.
async fn a_cache_only_write_never_cancels_a_durable_one(backend: Backend) {
    let engine = backend.engine().await;
    engine
        .submit(SyncItem::new("k".into(), b"durable".to_vec()))
        .await
        .unwrap();
    engine
        .submit_with(
            SyncItem::new("k".into(), b"cached".to_vec()),
            SubmitOptions::cache(sync_engine::CacheTtl::Minute),
        )
        .await
        .unwrap();
    engine.flush().await.unwrap();
    let rows = backend.raw().await.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].content(), b"durable");
    engine.shutdown().await;
}

async fn shutdown_makes_everything_durable(backend: Backend) {
    let engine = backend
        .engine_with(sync_engine::SyncEngineConfig {
            batch_flush_ms: 60_000, // only count/bytes or shutdown can flush
            ..backend.config()
        })
        .await;
    let n = 2_500;
    for i in 0..n {
        let item = SyncItem::from_json(
            format!("item:{i:05}"),
            json!({"n": i, "pad": "x".repeat(100)}),
        );
        engine.submit(item).await.unwrap();
    }
    engine.delete("item:00007").await.unwrap();
    engine.shutdown().await;
    assert!(matches!(
        engine
            .submit(SyncItem::new("late".into(), b"x".to_vec()))
            .await,
        Err(SyncError::NotRunning)
    ));

    let rows = backend.raw().await.rows().await;
    assert_eq!(rows.len(), n - 1);
    // a new engine on the same database sees everything, and its clock continues above it
    let engine = backend.engine().await;
    assert_eq!(engine.count_prefix("item:").await.unwrap(), (n - 1) as u64);
    let got = engine.get("item:01234").await.unwrap().unwrap();
    assert_eq!(got.content_as_json().unwrap()["n"], 1234);
    engine
        .submit(SyncItem::new(
            "item:01234".into(),
            b"after restart".to_vec(),
        ))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    engine.clear_l1();
    assert_eq!(
        engine.get("item:01234").await.unwrap().unwrap().content(),
        b"after restart"
    );
    engine.shutdown().await;
}

async fn states_and_byte_accounting(backend: Backend) {
    let engine = backend.engine().await;
    for i in 0..30 {
        let state = ["delta", "base", "merged"][i % 3];
        let item = SyncItem::from_json(format!("s{i:02}"), json!({ "i": i })).with_state(state);
        engine.submit(item).await.unwrap();
    }
    engine
        .submit_with(
            SyncItem::new("opt".into(), b"x".to_vec()),
            SubmitOptions::default().with_state("delta"),
        )
        .await
        .unwrap();
    assert_eq!(engine.count_by_state("delta").await.unwrap(), 11);
    assert!(engine.l1_stats().cached_bytes > 0);
    assert_eq!(engine.l1_stats().pending_bytes, 0, "flushed by the count");

    assert!(engine.set_state("s00", "merged").await.unwrap());
    assert!(!engine.set_state("absent", "merged").await.unwrap());
    assert_eq!(engine.get("s00").await.unwrap().unwrap().state(), "merged");
    engine.clear_l1();
    assert_eq!(engine.get("s00").await.unwrap().unwrap().state(), "merged");
    let merged: Vec<String> = engine
        .get_by_state("merged", 100)
        .await
        .unwrap()
        .iter()
        .map(|i| i.id().to_string())
        .collect();
    assert_eq!(merged.len(), 11);
    assert!(merged.windows(2).all(|w| w[0] < w[1]), "by id");
    assert_eq!(engine.get_by_state("merged", 4).await.unwrap().len(), 4);

    // warm L1 with everything, then delete by id, prefix and state
    for i in 0..30 {
        engine.get(&format!("s{i:02}")).await.unwrap();
    }
    engine.delete("opt").await.unwrap();
    engine.delete("s01").await.unwrap();
    assert_eq!(engine.delete_by_state("merged").await.unwrap(), 11);
    assert_eq!(engine.delete_prefix("s").await.unwrap(), 18);
    engine.flush().await.unwrap();
    let stats = engine.l1_stats();
    assert_eq!(
        (stats.cached_bytes, stats.pending_bytes, stats.cached_items),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(engine.memory_pressure(), 0.0);
    assert!(backend.raw().await.rows().await.is_empty());
    engine.shutdown().await;
}

async fn bad_input_is_a_typed_error(backend: Backend) {
    let engine = backend
        .engine_with(sync_engine::SyncEngineConfig {
            max_payload_bytes: 1000,
            ..backend.config()
        })
        .await;
    engine
        .submit(SyncItem::new("good.1".into(), b"1".to_vec()))
        .await
        .unwrap();
    type Expect = fn(&SyncError) -> bool;
    let cases: Vec<(SyncItem, Expect)> = vec![
        (SyncItem::new(String::new(), b"x".to_vec()), |e| {
            matches!(e, SyncError::InvalidId { .. })
        }),
        (SyncItem::new("x".repeat(256), b"x".to_vec()), |e| {
            matches!(e, SyncError::InvalidId { .. })
        }),
        (SyncItem::new("big".into(), vec![0; 1001]), |e| {
            matches!(e, SyncError::PayloadTooLarge { .. })
        }),
        (
            SyncItem::new("st".into(), b"x".to_vec()).with_state(""),
            |e| matches!(e, SyncError::InvalidState { .. }),
        ),
    ];
    for (item, expected) in cases {
        let err = engine.submit(item).await.unwrap_err();
        assert!(expected(&err), "{err:?}");
        assert_eq!(err.class(), sync_engine::ErrorClass::Data);
    }
    assert!(matches!(
        engine.delete("").await,
        Err(SyncError::InvalidId { .. })
    ));
    assert!(matches!(
        engine.set_state("good.1", &"s".repeat(256)).await,
        Err(SyncError::InvalidState { .. })
    ));
    engine
        .submit(SyncItem::new("x".repeat(255), vec![0; 1000]))
        .await
        .unwrap();
    engine
        .submit(SyncItem::new("good.2".into(), b"2".to_vec()))
        .await
        .unwrap();
    engine.shutdown().await;
    let ids: Vec<Vec<u8>> = backend.raw().await.ids().await;
    assert_eq!(
        ids,
        vec![
            b"good.1".to_vec(),
            b"good.2".to_vec(),
            "x".repeat(255).into_bytes()
        ]
    );
    assert!(matches!(
        engine.get("good.1").await,
        Err(SyncError::NotRunning)
    ));
}

async fn large_batches_are_chunked(backend: Backend) {
    // 48 items of 512 KiB in one batch: 24 MiB, more than one MySQL packet (16 MiB)
    let engine = backend
        .engine_with(sync_engine::SyncEngineConfig {
            batch_flush_bytes: 64 * 1024 * 1024,
            batch_flush_ms: 60_000,
            ..backend.config()
        })
        .await;
    for i in 0..48u8 {
        engine
            .submit(SyncItem::new(format!("big{i:02}"), vec![i; 512 * 1024]))
            .await
            .unwrap();
    }
    engine.flush().await.unwrap();
    engine.clear_l1();
    for i in 0..48u8 {
        let got = engine
            .get_verified(&format!("big{i:02}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.content(), &vec![i; 512 * 1024][..]);
    }
    engine.shutdown().await;
}

/// Several engines (sidecar replicas) starting at once on a fresh MariaDB database: the
/// migrations run once, under a lock that waits, and every engine starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_starting_together_migrate_once() {
    let backend = Backend::mariadb().await;
    let starts = (0..4).map(|_| {
        let config = backend.config();
        tokio::spawn(async move {
            let (_tx, rx) = tokio::sync::watch::channel(config.clone());
            let mut engine = sync_engine::SyncEngine::new(config, rx);
            engine.start().await.map(|_| engine)
        })
    });
    let starts: Vec<_> = starts.collect();
    for start in starts {
        let engine = start.await.unwrap().expect("every engine starts");
        engine.shutdown().await;
    }
}

on_both_backends!(
    byte_exact_round_trip,
    ids_are_exact_and_prefixes_literal,
    deletes_keep_their_order,
    replaying_older_versions_changes_nothing,
    a_cache_only_write_never_cancels_a_durable_one,
    shutdown_makes_everything_durable,
    states_and_byte_accounting,
    bad_input_is_a_typed_error,
    large_batches_are_chunked,
);
