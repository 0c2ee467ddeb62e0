//! The operator's commands on a real sidecar (tansu broker, MariaDB, Redis Stack): `inspect`
//! reports what SQL and Redis hold for JSON, binary, TTL'd, SQL-only, deleted, dead-lettered
//! and unknown ids — hashes, states, source offsets — and exits 2 naming the tier and the
//! disagreement once Redis is changed behind the engine's back, 1 with the password masked
//! when SQL is unreachable; `tail` shows confirmations covering exactly the produced offsets,
//! every partition's final checkpoint and the DLQ record with its code; `--log-format json`
//! (flag or environment) makes every log line on stderr a JSON object.

mod common;
#[path = "common/kafka.rs"]
mod kafka;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::redis::{Redis, STACK_ENV};
use common::Backend;
use kafka::{confirmed, delete, put, Pipeline, Rec};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `sync-engine args…` with `RUST_LOG` = `log`, outside any `SYNC_ENGINE_*` of the environment.
fn sync_engine(args: &[&str], log: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sync-engine"));
    command.args(args).env("RUST_LOG", log);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SYNC_ENGINE_") {
            command.env_remove(name);
        }
    }
    command.output().unwrap()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A run, for a failing assertion's message.
fn shown(run: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        run.status,
        lossy(&run.stdout),
        lossy(&run.stderr)
    )
}

fn inspect(pipeline: &Path, ids: &[&str], extra: &[&str]) -> Output {
    let mut args = vec!["inspect", "--pipeline", pipeline.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(ids);
    sync_engine(&args, "warn")
}

/// `inspect --json`: the document, and each item by id.
fn inspect_json(pipeline: &Path, ids: &[&str]) -> (Output, Value, BTreeMap<String, Value>) {
    let ran = inspect(pipeline, ids, &["--json"]);
    let report: Value = serde_json::from_str(&lossy(&ran.stdout))
        .unwrap_or_else(|e| panic!("{e}: {}", shown(&ran)));
    let items = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_string(), i.clone()))
        .collect();
    (ran, report, items)
}

/// Every line of `text` is a JSON log object; returns them.
fn json_log_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let line: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
            assert!(
                line["timestamp"].is_string() && line["level"].is_string(),
                "{l}"
            );
            assert!(line["message"].is_string(), "{l}");
            line
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_tail_on_a_running_sidecar() {
    let redis = Redis::from_env(STACK_ENV);
    let p = Pipeline::on("ops-cli", 2, Backend::mariadb().await).await;
    let mut sidecar = p.start_with(
        &format!(
            "redis_url = \"{}\"\nredis_prefix = \"{}\"",
            redis.url, redis.prefix
        ),
        &[("SYNC_ENGINE_LOG_FORMAT", "json")],
    );
    let doc = br#"{"name": "Ada", "n": 1}"#;
    let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(300));
    let blob = [0u8, 1, 2, 0xFF, 0xFE, b'x'];
    let records: Vec<Rec> = vec![
        put("ops:json", doc, &[("sync-state", "active")]),
        put("ops:long", long.as_bytes(), &[]),
        put(
            "ops:bin",
            &blob,
            &[("content-type", "application/octet-stream")],
        ),
        put("ops:ttl", br#"{"s":1}"#, &[("sync-ttl", "hour")]),
        put("ops:sqlonly", br#"{"q":1}"#, &[("sync-route", "sql")]),
        put("ops:gone", br#"{"g":1}"#, &[]),
        delete("ops:gone"),
        put(
            "ops:bad",
            b"{not json",
            &[("content-type", "application/json")],
        ),
    ];
    let sent = p.produce(&records).await;
    let at = |n: usize| sent[n];
    p.reader("out").until(Duration::from_secs(60), |outs| {
        let seen = confirmed(outs);
        sent.iter().all(|pos| seen.contains_key(pos))
    });

    // the sidecar's logs (SYNC_ENGINE_LOG_FORMAT=json): JSON lines only, the usual ones among them
    let logged = json_log_lines(&sidecar.log());
    assert!(
        logged.iter().any(|l| l["message"] == "consuming"),
        "{}",
        sidecar.log()
    );

    // 1. inspect: every id as stored, the tiers agreeing
    let ids = [
        "ops:json",
        "ops:long",
        "ops:bin",
        "ops:ttl",
        "ops:sqlonly",
        "ops:gone",
        "ops:bad",
        "ops:never",
    ];
    let pipeline = sidecar.pipeline.clone();
    let (ran, report, items) = inspect_json(&pipeline, &ids);
    assert_eq!(ran.status.code(), Some(0), "{}", shown(&ran));
    assert_eq!(report["ok"], true);
    let source = |n: usize| format!("{}/{}", p.topic("in"), at(n).0);
    let json = &items["ops:json"];
    assert_eq!(json["status"], "agree", "{json}");
    assert_eq!(json["sql"]["status"], "live");
    assert_eq!(json["sql"]["content_hash"], sha256(doc));
    assert_eq!(json["sql"]["payload_ok"], true);
    assert_eq!(json["sql"]["content_type"], "json");
    assert_eq!(
        json["sql"]["payload_preview"],
        std::str::from_utf8(doc).unwrap()
    );
    assert_eq!(json["sql"]["state"], "active");
    assert_eq!(json["sql"]["source"], source(0));
    assert_eq!(json["sql"]["offset"], at(0).1);
    assert_eq!(json["sql"]["version"], at(0).1 + 1);
    assert_eq!(json["sql"]["redis_ttl_ms"], 0);
    assert_eq!(json["redis"]["status"], "item");
    assert_eq!(json["redis"]["key_type"], "ReJSON-RL");
    assert_eq!(json["redis"]["content_hash"], sha256(doc));
    assert_eq!(json["redis"]["state"], "active");
    assert_eq!(json["redis"]["ttl_ms"], Value::Null);
    assert_eq!(json["differences"], serde_json::json!([]));

    let preview = items["ops:long"]["sql"]["payload_preview"]
        .as_str()
        .unwrap();
    assert_eq!(preview.chars().count(), 201, "{preview}");
    assert!(preview.ends_with('…') && long.starts_with(preview.trim_end_matches('…')));
    assert_eq!(items["ops:long"]["sql"]["bytes"], long.len());

    let bin = &items["ops:bin"];
    assert_eq!(bin["status"], "agree", "{bin}");
    assert_eq!(bin["sql"]["content_type"], "binary");
    assert_eq!(bin["sql"]["payload_preview"], hex::encode(blob));
    assert_eq!(bin["sql"]["content_hash"], sha256(&blob));
    assert_eq!(bin["redis"]["key_type"], "hash");
    assert_eq!(bin["redis"]["content_hash"], sha256(&blob));

    let ttl = &items["ops:ttl"];
    assert_eq!(ttl["status"], "agree", "{ttl}");
    assert_eq!(ttl["sql"]["redis_ttl_ms"], 3_600_000);
    let left = ttl["redis"]["ttl_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 3_600_000, "{ttl}");

    let sql_only = &items["ops:sqlonly"];
    assert_eq!(sql_only["status"], "agree", "{sql_only}");
    assert_eq!(sql_only["sql"]["redis_ttl_ms"], Value::Null);
    assert_eq!(sql_only["redis"]["status"], "absent");

    let gone = &items["ops:gone"];
    assert_eq!(gone["status"], "agree", "{gone}");
    assert_eq!(gone["sql"]["status"], "deleted");
    assert_eq!(gone["sql"]["offset"], at(6).1, "the delete's offset");
    assert_eq!(gone["sql"]["source"], source(6));
    assert_eq!(gone["redis"]["status"], "absent");
    for id in ["ops:bad", "ops:never"] {
        assert_eq!(items[id]["status"], "absent", "{}", items[id]);
        assert_eq!(items[id]["sql"]["status"], "absent");
        assert_eq!(items[id]["redis"]["status"], "absent");
    }

    let text = inspect(&pipeline, &ids, &[]);
    assert_eq!(text.status.code(), Some(0), "{}", shown(&text));
    for expected in [
        "ops:json: agree".to_string(),
        format!("sha256 {}", sha256(&blob)),
        format!("{} offset {}", source(0), at(0).1),
        format!("  sql:   deleted at version {}", at(6).1 + 1),
        "ops:never: absent from both tiers".into(),
        "8 ids: 6 agree, 2 absent from both, 0 differ".into(),
    ] {
        assert!(
            lossy(&text.stdout).contains(&expected),
            "{expected:?} in\n{}",
            shown(&text)
        );
    }

    // 2. tail, text: the one DLQ record so far
    let dlq = sync_engine(
        &[
            "tail",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--from-beginning",
            "--dlq-only",
            "--max",
            "1",
        ],
        "warn",
    );
    assert_eq!(dlq.status.code(), Some(0), "{}", shown(&dlq));
    let stdout = lossy(&dlq.stdout);
    let line = stdout.trim_end();
    assert!(
        line.starts_with(&format!("dlq        {} @{} ", source(7), at(7).1))
            && line.contains("key=\"ops:bad\" code=invalid_json reason="),
        "{}",
        shown(&dlq)
    );

    // 3. Redis changed behind the engine's back: exit 2, the tier and what differs named
    let mut conn = redis.raw().await;
    let _: () = redis::cmd("HSET")
        .arg(redis.key("ops:bin"))
        .arg("hash")
        .arg("0".repeat(64))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(redis.key("ops:json"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(redis.key("ops:sqlonly"))
        .arg("not an item")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (ran, report, items) = inspect_json(&pipeline, &ids);
    assert_eq!(ran.status.code(), Some(2), "{}", shown(&ran));
    assert_eq!(report["ok"], false);
    let differences = |id: &str| -> BTreeSet<(String, String)> {
        items[id]["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["tier"].as_str().unwrap().into(),
                    d["kind"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let redis_says = |kinds: &[&str]| -> BTreeSet<(String, String)> {
        kinds
            .iter()
            .map(|k| ("redis".into(), k.to_string()))
            .collect()
    };
    assert_eq!(items["ops:bin"]["status"], "differ");
    assert_eq!(
        differences("ops:bin"),
        redis_says(&["hash_differs", "payload_mismatch"])
    );
    assert_eq!(differences("ops:json"), redis_says(&["missing_in_redis"]));
    assert_eq!(
        differences("ops:sqlonly"),
        redis_says(&["unreadable_in_redis"])
    );
    for id in ["ops:long", "ops:ttl", "ops:gone", "ops:bad", "ops:never"] {
        assert!(differences(id).is_empty(), "{}", items[id]);
    }
    let text = inspect(&pipeline, &["ops:bin", "ops:long"], &[]);
    assert_eq!(text.status.code(), Some(2), "{}", shown(&text));
    for expected in [
        "ops:bin: DIFFER",
        "  differs: redis hash_differs: SQL ",
        "ops:long: agree",
        "2 ids: 1 agree, 0 absent from both, 1 differ",
    ] {
        assert!(
            lossy(&text.stdout).contains(expected),
            "{expected:?} in\n{}",
            shown(&text)
        );
    }

    // 4. --log-format json on a command: stderr is JSON lines (Redis connecting, at least)
    let logged = sync_engine(
        &[
            "--log-format",
            "json",
            "inspect",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "ops:long",
        ],
        "info",
    );
    assert_eq!(logged.status.code(), Some(0), "{}", shown(&logged));
    assert!(
        !json_log_lines(&lossy(&logged.stderr)).is_empty(),
        "{}",
        shown(&logged)
    );

    // 5. tail --json from the beginning, after the sidecar drained: everything, once
    sidecar.stop();
    let outs = p.read_all("out", Duration::from_secs(60)).await;
    let dead = p.read_all("dlq", Duration::from_secs(60)).await;
    // read_all appended an end marker to each partition of both topics: tail shows them too
    let markers = 2 * p.partitions as usize;
    let max = (outs.len() + dead.len() + markers).to_string();
    let tail = sync_engine(
        &[
            "tail",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--json",
            "--from-beginning",
            "--max",
            &max,
        ],
        "warn",
    );
    assert_eq!(tail.status.code(), Some(0), "{}", shown(&tail));
    let lines: Vec<Value> = lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len().to_string(), max, "{}", shown(&tail));
    let of_kind =
        |kind: &str| -> Vec<&Value> { lines.iter().filter(|l| l["kind"] == kind).collect() };

    let mut covered = BTreeMap::new();
    for line in of_kind("confirmation") {
        assert_eq!(line["topic"], p.topic("out"));
        let event = &line["event"];
        assert_eq!(event["source_topic"], p.topic("in"));
        for item in event["items"].as_array().unwrap() {
            let position = (
                event["partition"].as_i64().unwrap() as i32,
                item["offset"].as_i64().unwrap(),
            );
            *covered.entry(position).or_insert(0) += 1;
            if position == at(7) {
                assert_eq!(item["op"], "dlq");
                assert_eq!(item["error_code"], "invalid_json");
            }
        }
    }
    let produced: BTreeSet<(i32, i64)> = sent.iter().copied().collect();
    assert_eq!(
        covered.keys().copied().collect::<BTreeSet<_>>(),
        produced,
        "{}",
        shown(&tail)
    );
    assert_eq!(covered, confirmed(&outs), "tail shows what is on the topic");

    let mut raw = p.sql.raw().await;
    let mut newest: BTreeMap<i64, &Value> = BTreeMap::new();
    for line in of_kind("checkpoint") {
        let event = &line["event"];
        let partition = event["partition"].as_i64().unwrap();
        if newest
            .get(&partition)
            .is_none_or(|n| n["offset"].as_i64() <= event["offset"].as_i64())
        {
            newest.insert(partition, event);
        }
    }
    let last: BTreeMap<i64, i64> = sent.iter().fold(BTreeMap::new(), |mut m, (p, o)| {
        let e = m.entry(*p as i64).or_insert(*o);
        *e = (*e).max(*o);
        m
    });
    assert_eq!(
        newest.keys().collect::<Vec<_>>(),
        last.keys().collect::<Vec<_>>(),
        "a checkpoint per partition: {}",
        shown(&tail)
    );
    for (partition, checkpoint) in &newest {
        assert_eq!(checkpoint["offset"], last[partition], "{checkpoint}");
        let rows = raw.count(&format!("{}/{partition}", p.topic("in"))).await;
        assert_eq!(checkpoint["item_count"], rows, "{checkpoint}");
    }

    let dlq: Vec<&Value> = of_kind("dlq")
        .into_iter()
        .filter(|l| l["event"]["key"] != "__test_end_marker__")
        .collect();
    assert_eq!(dlq.len(), 1, "{}", shown(&tail));
    let record = &dlq[0]["event"];
    assert_eq!(dlq[0]["topic"], p.topic("dlq"));
    assert_eq!(record["key"], "ops:bad");
    assert_eq!(record["value"], "{not json");
    assert_eq!(record["headers"]["sync-error-code"], "invalid_json");
    assert_eq!(record["headers"]["content-type"], "application/json");
    assert_eq!(record["headers"]["sync-source-topic"], p.topic("in"));
    assert_eq!(record["headers"]["sync-source-offset"], at(7).1.to_string());
    assert_eq!(
        of_kind("other").len() + of_kind("dlq").len() - 1,
        markers,
        "only the end markers are left: {}",
        shown(&tail)
    );
}

#[test]
fn inspect_names_an_unreachable_sql_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        "sql_url = \"mysql://root:secretpw@127.0.0.1:1/nope\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let path = pipeline.to_str().unwrap();
    let text = sync_engine(&["inspect", "--pipeline", path, "some:id"], "warn");
    assert_eq!(text.status.code(), Some(1), "{}", shown(&text));
    assert!(
        lossy(&text.stderr).contains("SQL at mysql://root:***@127.0.0.1:1/nope"),
        "{}",
        shown(&text)
    );
    // in JSON logs the failure is a JSON line as well
    let ran = sync_engine(
        &[
            "--log-format",
            "json",
            "inspect",
            "--pipeline",
            path,
            "some:id",
        ],
        "warn",
    );
    assert_eq!(ran.status.code(), Some(1), "{}", shown(&ran));
    let lines = json_log_lines(&lossy(&ran.stderr));
    let failure = lines.last().unwrap();
    assert_eq!(failure["level"], "ERROR");
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .starts_with("SQL at mysql://root:***@127.0.0.1:1/nope"),
        "{}",
        shown(&ran)
    );
    for run in [&text, &ran] {
        assert!(!shown(run).contains("secretpw"), "{}", shown(run));
    }
}
