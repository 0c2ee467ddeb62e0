//! The `sync-engine` binary's `verify`, `prove` and `check-proof`, run as a process against
//! real MariaDB and Redis, on plain Redis (hashes) and on Redis Stack (RedisJSON documents):
//! `verify` exits 0 / 2, names the id, `--repair` and `--json`; `prove` and `check-proof`
//! (file and stdin, tampered proof, another root); and stdout of `verify --json` and `prove`
//! is the document alone, so it can be piped to a file or a parser.
//!
//! The library's `verify` and `repair` are tested in verify.rs, proofs in merkle.rs.

#[macro_use] // `on_raw!`, used by verify_world
mod common;
#[path = "common/kafka.rs"]
mod kafka;
#[path = "common/verify_world.rs"]
mod verify_world;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use redis::AsyncCommands;
use serde_json::Value;
use sync_engine::item::content_hash;
use sync_engine::merkle::{Proof, StateRoot};
use sync_engine::{CacheTtl, SubmitOptions, SyncItem};

use common::redis::Redis;
use common::Backend;
use verify_world::{binary, json, membership, ttl_hour, Expected, World, LOCAL};

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `sync-engine args…` (with `stdin` piped in when given) at log level `warn`, outside
/// any `SYNC_ENGINE__*` override of the environment.
fn sync_engine(args: &[&str], stdin: Option<&str>) -> Ran {
    sync_engine_logging(args, stdin, Some("warn"))
}

/// Like `sync_engine`, with `RUST_LOG` set to `log` (`None`: unset, the binary's default).
fn sync_engine_logging(args: &[&str], stdin: Option<&str>, log: Option<&str>) -> Ran {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sync-engine"));
    command.args(args);
    match log {
        Some(level) => command.env("RUST_LOG", level),
        None => command.env_remove("RUST_LOG"),
    };
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SYNC_ENGINE__") {
            command.env_remove(name);
        }
    }
    let output = match stdin {
        None => command.stdin(Stdio::null()).output().unwrap(),
        Some(input) => {
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
    };
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn verify_cli(pipeline: &Path, extra: &[&str]) -> Ran {
    let mut args = vec!["verify", "--pipeline", pipeline.to_str().unwrap()];
    args.extend_from_slice(extra);
    sync_engine(&args, None)
}

/// Every JSON document `verify --json` printed (two with `--repair` when it repaired).
/// Log lines are skipped: whether stdout carries nothing but the documents is
/// `cli_stdout_is_only_the_document`'s business, so that this test checks the rest.
fn json_reports(ran: &Ran) -> Vec<Value> {
    serde_json::Deserializer::from_str(&json_lines(&ran.stdout))
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {ran}"))
}

/// The lines of `stdout` that can belong to pretty-printed JSON (not log lines).
fn json_lines(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| l.is_empty() || l.starts_with(['{', '}', ' ']))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A pipeline file on `sql` and `redis` (its Kafka section names topics nobody creates:
/// only partitions `<topic>/<n>` make verify read checkpoints, library writes are `local`).
fn write_pipeline(dir: &Path, sql: &Backend, redis: &Redis) -> std::path::PathBuf {
    let pipeline = dir.join("pipeline.toml");
    let name = redis.prefix.trim_end_matches(':').replace(':', "-");
    std::fs::write(
        &pipeline,
        format!(
            r#"sql_url = "{sql}"
redis_url = "{redis_url}"
redis_prefix = "{prefix}"
[kafka]
brokers = "{brokers}"
group_id = "{name}.group"
input_topic = "{name}.in"
output_topic = "{name}.out"
dlq_topic = "{name}.dlq"
"#,
            sql = sql.url,
            redis_url = redis.url,
            prefix = redis.prefix,
            brokers = kafka::brokers(),
        ),
    )
    .unwrap();
    pipeline
}

/// Items on every route, written and flushed by an engine that is shut down again.
async fn cli_items(sql: &Backend, redis: &Redis) -> BTreeMap<String, Expected> {
    let engine = sql.engine_with(redis.config(sql)).await;
    let mut world = World {
        engine: &engine,
        items: BTreeMap::new(),
    };
    for n in 0..12u8 {
        let id = format!("cli:{n}");
        let content = if n % 3 == 0 {
            binary(&id, n)
        } else {
            json(&id, 0)
        };
        let options = match n % 4 {
            1 => ttl_hour(),
            2 => SubmitOptions::durable(),
            _ => SubmitOptions::default(),
        };
        world.put(&id, content, options).await;
    }
    world
        .put(
            "cli:cache",
            json("cli:cache", 0),
            SubmitOptions::cache(CacheTtl::Hour),
        )
        .await;
    world.delete("cli:4").await;
    engine.flush().await.unwrap();
    let items = world.items;
    engine.shutdown().await;
    items
}

async fn cli(redis: Redis) {
    let sql = Backend::mariadb().await;
    let items = cli_items(&sql, &redis).await;
    let victim = "cli:3";
    assert!(items[victim].mirrored());
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), &sql, &redis);
    let mut r = redis.raw().await;

    // clean: exit 0, one OK line for `local`
    let ran = verify_cli(&pipeline, &[]);
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(
        ran.stdout
            .lines()
            .any(|l| l.starts_with(LOCAL) && l.contains(" OK ")),
        "{ran}"
    );
    assert!(
        ran.stdout.lines().last().unwrap().starts_with("OK:"),
        "{ran}"
    );

    // a Redis key lost: exit 2, the id named with its tier and kind
    let _: () = r.del(redis.key(victim)).await.unwrap();
    let ran = verify_cli(&pipeline, &[]);
    assert_eq!(ran.code, Some(2), "{ran}");
    let line = ran
        .stdout
        .lines()
        .find(|l| l.contains(victim))
        .unwrap_or_else(|| panic!("{victim} named: {ran}"));
    assert!(
        line.contains("redis") && line.contains("missing_in_redis"),
        "{line}"
    );
    assert!(
        ran.stdout.lines().last().unwrap().starts_with("DIVERGENT:"),
        "{ran}"
    );
    assert!(
        !r.exists::<_, bool>(redis.key(victim)).await.unwrap(),
        "verify alone repairs nothing"
    );

    // --repair: names it, repairs, verifies again, exit 0
    let ran = verify_cli(&pipeline, &["--repair"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.contains(victim), "{ran}");
    assert!(ran.stderr.contains("repair:"), "{ran}");
    assert!(
        ran.stdout.lines().last().unwrap().starts_with("OK:"),
        "{ran}"
    );
    let back = redis.cached(victim).await.expect("rewritten from SQL");
    assert_eq!(back.payload, items[victim].content);
    assert_eq!(back.membership, Some(membership(victim, &back.payload)));

    // --json: one document with "ok"
    let ran = verify_cli(&pipeline, &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    let docs = json_reports(&ran);
    assert_eq!(docs.len(), 1, "{ran}");
    assert_eq!(docs[0]["ok"], Value::Bool(true), "{ran}");
    let report = &docs[0]["report"];
    assert_eq!(report["divergences"], serde_json::json!([]), "{ran}");
    let sql_rows = items.values().filter(|e| e.sql).count() as u64;
    assert_eq!(report["rows"].as_u64(), Some(sql_rows), "{ran}");
    let partitions = report["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 1, "{ran}");
    let local: StateRoot = serde_json::from_value(partitions[0]["computed"].clone()).unwrap();
    let stored: StateRoot = serde_json::from_value(partitions[0]["stored"].clone()).unwrap();
    assert_eq!(
        (local.partition.as_str(), local.item_count),
        (LOCAL, sql_rows)
    );
    assert_eq!(stored, local);
    assert_eq!(
        partitions[0]["mirror_buckets_diverging"],
        serde_json::json!([])
    );
    let root = local.root;

    // --json --repair on a stray: the failing report, then the clean one
    let _: () = r.hset(redis.key("cli:stray"), "hash", "x").await.unwrap();
    let ran = verify_cli(&pipeline, &["--json"]);
    assert_eq!(ran.code, Some(2), "{ran}");
    let docs = json_reports(&ran);
    assert_eq!(docs[0]["ok"], Value::Bool(false), "{ran}");
    assert_eq!(
        docs[0]["report"]["divergences"],
        serde_json::json!([{"id": "cli:stray", "partition": null, "tier": "redis", "kind": "stray"}]),
        "{ran}"
    );
    let ran = verify_cli(&pipeline, &["--json", "--repair"]);
    assert_eq!(ran.code, Some(0), "{ran}");
    let docs = json_reports(&ran);
    assert_eq!(docs.len(), 2, "{ran}");
    assert_eq!(
        (&docs[0]["ok"], &docs[1]["ok"]),
        (&Value::Bool(false), &Value::Bool(true)),
        "{ran}"
    );
    assert!(!r.exists::<_, bool>(redis.key("cli:stray")).await.unwrap());

    // prove: a JSON proof that checks, for the root verify computed
    let id = "cli:7";
    let ran = sync_engine(
        &["prove", "--pipeline", pipeline.to_str().unwrap(), id],
        None,
    );
    assert_eq!(ran.code, Some(0), "{ran}");
    let proof_text = json_lines(&ran.stdout);
    let proof: Proof = serde_json::from_str(&proof_text).unwrap_or_else(|e| panic!("{e}: {ran}"));
    assert_eq!(proof.check(), Ok(()));
    assert_eq!(
        (
            proof.id.as_str(),
            proof.partition.as_str(),
            proof.root.as_str()
        ),
        (id, LOCAL, root.as_str())
    );
    assert_eq!(proof.algorithm, "sync-engine-merkle-v1");
    assert_eq!(proof.content_hash, content_hash(&items[id].content));
    assert_eq!(proof.path.len(), 8);
    let ran = sync_engine(
        &[
            "prove",
            "--pipeline",
            pipeline.to_str().unwrap(),
            "cli:absent",
        ],
        None,
    );
    assert_eq!(ran.code, Some(1), "no proof of an absent id: {ran}");

    // check-proof: from a file, from stdin, against its own root: 0
    let file = dir.path().join("proof.json");
    std::fs::write(&file, &proof_text).unwrap();
    let file = file.to_str().unwrap();
    let ran = sync_engine(&["check-proof", file], None);
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.starts_with("OK:"), "{ran}");
    let text = std::fs::read_to_string(file).unwrap();
    let ran = sync_engine(&["check-proof"], Some(&text));
    assert_eq!(ran.code, Some(0), "from stdin: {ran}");
    let ran = sync_engine(&["check-proof", file, "--root", &root], None);
    assert_eq!(ran.code, Some(0), "{ran}");

    // a tampered content_hash: 1
    let mut tampered = proof.clone();
    tampered.content_hash = content_hash(b"something else");
    let tampered_file = dir.path().join("tampered.json");
    std::fs::write(&tampered_file, serde_json::to_string(&tampered).unwrap()).unwrap();
    let ran = sync_engine(&["check-proof", tampered_file.to_str().unwrap()], None);
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(ran.stdout.starts_with("INVALID"), "{ran}");
    let ran = sync_engine(
        &["check-proof"],
        Some(&serde_json::to_string(&tampered).unwrap()),
    );
    assert_eq!(ran.code, Some(1), "from stdin: {ran}");

    // another root (an empty partition's, then this one's after one more write): 1
    let empty = "c3526b2d8416b82ec1efbfaa8577fd962febbeba50d46f6f5f34114088addb83";
    let ran = sync_engine(&["check-proof", file, "--root", empty], None);
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(ran.stdout.starts_with("INVALID"), "{ran}");
    let engine = sql.engine_with(redis.config(&sql)).await;
    engine
        .submit(SyncItem::new("cli:more".into(), b"more".to_vec()))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    let newer = engine.merkle_root(LOCAL).await.unwrap().root;
    engine.shutdown().await;
    assert_ne!(newer, root);
    let ran = sync_engine(&["check-proof", file, "--root", &newer], None);
    assert_eq!(ran.code, Some(1), "a proof of the older state: {ran}");
    let ran = verify_cli(&pipeline, &[]);
    assert_eq!(ran.code, Some(0), "{ran}");
}

/// `verify --json` and `prove` print a document for other programs: stdout holds that
/// document and nothing else at the default log level (main.rs: logs go to stderr), so
/// `prove … > proof.json && check-proof proof.json` works.
async fn cli_stdout_is_only_the_document(redis: Redis) {
    let sql = Backend::mariadb().await;
    let items = cli_items(&sql, &redis).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), &sql, &redis);
    let pipeline = pipeline.to_str().unwrap();

    let ran = sync_engine_logging(&["verify", "--pipeline", pipeline, "--json"], None, None);
    assert_eq!(ran.code, Some(0), "{ran}");
    let doc: Value = serde_json::from_str(&ran.stdout).unwrap_or_else(|e| {
        panic!("stdout of verify --json is not one JSON document ({e}): {ran}")
    });
    assert_eq!(doc["ok"], Value::Bool(true), "{ran}");

    let ran = sync_engine_logging(&["prove", "--pipeline", pipeline, "cli:7"], None, None);
    assert_eq!(ran.code, Some(0), "{ran}");
    let proof: Proof = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("stdout of prove is not one proof ({e}): {ran}"));
    assert_eq!(proof.content_hash, content_hash(&items["cli:7"].content));
    let file = dir.path().join("proof.json");
    std::fs::write(&file, &ran.stdout).unwrap();
    let ran = sync_engine_logging(&["check-proof", file.to_str().unwrap()], None, None);
    assert_eq!(
        ran.code,
        Some(0),
        "prove > proof.json; check-proof proof.json: {ran}"
    );
}

on_both_redis!(cli, cli_stdout_is_only_the_document);
