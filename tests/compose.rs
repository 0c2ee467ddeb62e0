//! `docker-compose.yml`, the whole pipeline as a user starts it with `docker compose up`:
//!
//! - checked as files (`compose/tests/test_compose.py`, with the tools venv's Python): valid
//!   against the Compose Specification schema alone and merged with `docker-compose.local.yml`,
//!   wired as the README says, the override changing images only;
//! - run for real with podman (`SYNC_ENGINE_TEST_IMAGE=1`, as for `tests/image.rs`): the stack
//!   on `docker-compose.local.yml`'s local images (the sidecar image built from this test's
//!   binary, the stand-ins from `scripts/stand-in-images`), records produced with the Kafka
//!   image's console producer as the README does, then confirmations and the DLQ record read
//!   with `sync-engine tail` in a container of the stack, rows in MariaDB and JSON documents in
//!   Redis read through the published ports, Prometheus scraping the sidecar with the alert
//!   rules loaded, and `stop` draining the sidecar to exit code 0.

mod common;
#[path = "common/deploy.rs"]
mod deploy;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::http_get as get;
use deploy::{free_port, run, said};
use serde_json::Value;
use sqlx::Connection;

const TAG: &str = "localhost/sync-engine:compose-test";
/// Starting and health: generous, since a first run on a machine also joins a consumer group.
const PATIENCE: Duration = Duration::from_secs(180);

#[test]
fn the_compose_files_are_valid_and_wired_as_documented() {
    deploy::python_unittest("compose/tests/test_compose.py");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_confirms_what_the_readme_produces() {
    let Some(engine) = deploy::build_image(TAG) else {
        return;
    };
    deploy::build_stand_ins();
    let stack = Stack::up(&engine);

    // ready: joined its group, with SQL and Redis connected
    let sidecar = format!("127.0.0.1:{}", stack.port("SYNC_ENGINE_HOST_PORT"));
    stack.wait_for("the sidecar's /readyz to answer 200", || {
        get(&sidecar, "/readyz").0 == 200
    });

    // the README's produce command: `id|payload` lines, and one with an empty id for the DLQ
    let lines = "user.1|{\"name\":\"Ada\"}\nuser.2|{\"name\":\"Grace\"}\nuser.3|{\"name\":\"Edsger\"}\n|{\"name\":\"nobody\"}\nuser.1|{\"name\":\"Ada Lovelace\"}\n";
    let produced = stack.compose_with_input(
        &[
            "exec",
            "-T",
            "kafka",
            "/opt/kafka/bin/kafka-console-producer.sh",
            "--bootstrap-server",
            "kafka:9092",
            "--topic",
            "sync.submit",
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=|",
        ],
        lines,
    );
    assert!(
        produced.status.success(),
        "the console producer: {}",
        said(&produced)
    );

    // confirmations for all five records (one a DLQ record) and the DLQ record, through
    // `sync-engine tail` in a container of the stack, with a terminal (colour must stay off)
    let events = stack.tail_until(|events| {
        let confirmed: usize = events
            .iter()
            .filter(|e| e["kind"] == "confirmation")
            .map(|e| e["event"]["items"].as_array().map_or(0, Vec::len))
            .sum();
        confirmed >= 5 && events.iter().any(|e| e["kind"] == "dlq")
    });
    let mut confirmed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in events.iter().filter(|e| e["kind"] == "confirmation") {
        for record in event["event"]["items"].as_array().unwrap() {
            let id = record["id"].as_str().unwrap_or("").to_string();
            confirmed
                .entry(id)
                .or_default()
                .push(record["op"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        confirmed,
        BTreeMap::from([
            ("".into(), vec!["dlq".into()]),
            ("user.1".into(), vec!["put".into(), "put".into()]),
            ("user.2".into(), vec!["put".into()]),
            ("user.3".into(), vec!["put".into()]),
        ]),
        "confirmed records by id: {events:#?}"
    );
    let dlq: Vec<&Value> = events.iter().filter(|e| e["kind"] == "dlq").collect();
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    assert_eq!(
        dlq[0]["event"]["headers"]["sync-error-code"], "empty_key",
        "{dlq:#?}"
    );

    // rows in MariaDB (the last value of user.1), JSON documents in Redis Stack
    let expected: BTreeMap<String, String> = [
        ("user.1", "{\"name\":\"Ada Lovelace\"}"),
        ("user.2", "{\"name\":\"Grace\"}"),
        ("user.3", "{\"name\":\"Edsger\"}"),
    ]
    .into_iter()
    .map(|(id, payload)| (id.to_string(), payload.to_string()))
    .collect();
    let sql_url = format!(
        "mysql://sync:sync@127.0.0.1:{}/sync",
        stack.port("MARIADB_HOST_PORT")
    );
    let mut sql = sqlx::MySqlConnection::connect(&sql_url).await.unwrap();
    let rows: BTreeMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT CAST(id AS CHAR), CAST(payload AS CHAR) FROM sync_items",
    )
    .fetch_all(&mut sql)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(rows, expected, "sync_items");
    let redis_url = format!("redis://127.0.0.1:{}", stack.port("REDIS_HOST_PORT"));
    let mut redis = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (id, payload) in &expected {
        // the README's `JSON.GET sync:<id> payload`: the document's payload field
        let doc: String = redis::cmd("JSON.GET")
            .arg(format!("sync:{id}"))
            .arg("payload")
            .query_async(&mut redis)
            .await
            .unwrap_or_else(|e| panic!("JSON.GET sync:{id}: {e}"));
        let doc: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(doc, serde_json::from_str::<Value>(payload).unwrap(), "{id}");
    }

    // Prometheus: the sidecar scraped (its counters arrive), the alert rules loaded
    let prometheus = format!("127.0.0.1:{}", stack.port("PROMETHEUS_HOST_PORT"));
    stack.wait_for(
        "Prometheus to scrape the sidecar's confirmed records",
        || {
            let (status, body) = get(
                &prometheus,
                "/api/v1/query?query=sum(sync_engine_confirmed_records_total)",
            );
            status == 200
                && serde_json::from_str::<Value>(&body).is_ok_and(|v| {
                    v["data"]["result"][0]["value"][1]
                        .as_str()
                        .is_some_and(|n| n == "5")
                })
        },
    );
    let (_, targets) = get(&prometheus, "/api/v1/targets");
    let targets: Value = serde_json::from_str(&targets).unwrap();
    let active = targets["data"]["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 1, "{targets:#}");
    assert_eq!(active[0]["scrapeUrl"], "http://sync-engine:9464/metrics");
    assert_eq!(active[0]["health"], "up", "{targets:#}");
    let (_, rules) = get(&prometheus, "/api/v1/rules");
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let loaded: BTreeSet<&str> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        loaded.contains("SyncEngineLagGrowing"),
        "alert rules loaded: {loaded:?}"
    );

    // `stop` sends SIGTERM: the sidecar drains and exits 0
    let stopped = stack.compose(&["stop", "-t", "60", "sync-engine"]);
    assert!(stopped.status.success(), "stop: {}", said(&stopped));
    let container = stack.container("sync-engine");
    let code = run(
        &engine,
        &["inspect", "--format", "{{.State.ExitCode}}", &container],
    );
    let logs = said(&run(&engine, &["logs", &container]));
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "exit code after stop; logs:\n{logs}"
    );
    assert!(logs.contains("stopped cleanly"), "{logs}");
}

/// The stack of one test run: its own project name and host ports, torn down (volumes too)
/// on drop.
struct Stack {
    engine: String,
    project: String,
    ports: Vec<(&'static str, u16)>,
}

impl Stack {
    fn up(engine: &str) -> Stack {
        let stack = Stack {
            engine: engine.into(),
            project: format!("se-compose-{}", std::process::id()),
            ports: [
                "KAFKA_HOST_PORT",
                "MARIADB_HOST_PORT",
                "REDIS_HOST_PORT",
                "SYNC_ENGINE_HOST_PORT",
                "PROMETHEUS_HOST_PORT",
            ]
            .into_iter()
            .map(|name| (name, free_port()))
            .collect(),
        };
        // --no-deps: podman 4.3 cannot start a container whose dependencies depend on others
        // ("not found in input list"), and podman-compose ignores health conditions before
        // podman 4.6 anyway; the services start in dependency order and the sidecar retries
        // until SQL, Redis and its topics are there.
        let up = stack.compose(&["up", "-d", "--no-deps"]);
        assert!(up.status.success(), "compose up: {}", said(&up));
        stack
    }

    fn port(&self, name: &str) -> u16 {
        self.ports.iter().find(|(n, _)| *n == name).unwrap().1
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = if self.engine == "podman" {
            // podman-compose from the tools venv (scripts/services.sh ensure_compose_tools)
            let python = deploy::python();
            let bin = std::path::Path::new(&python).with_file_name("podman-compose");
            Command::new(bin)
        } else {
            let mut docker = Command::new("docker");
            docker.arg("compose");
            docker
        };
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["-p", &self.project])
            .args(["-f", "docker-compose.yml", "-f", "docker-compose.local.yml"])
            .args(args)
            .env("SYNC_ENGINE_IMAGE", TAG);
        for (name, port) in &self.ports {
            command.env(name, port.to_string());
        }
        command
    }

    fn compose(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("run compose")
    }

    fn compose_with_input(&self, args: &[&str], input: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run compose");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `sync-engine tail --json --from-beginning` in a container of the stack (with a
    /// terminal, as `docker compose run` gives one), until `done` holds for what it printed.
    /// Asserts no line carries colour codes.
    fn tail_until(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut child = self
            .command(&[
                "run",
                "--rm",
                "--no-deps",
                "--name",
                &format!("{}-tail", self.project),
                "sync-engine",
                "tail",
                "--pipeline",
                "/etc/sync-engine/pipeline.toml",
                "--json",
                "--from-beginning",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run compose run");
        let (tx, rx) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let deadline = Instant::now() + PATIENCE;
        let (mut events, mut seen) = (Vec::new(), Vec::new());
        while !done(&events) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    assert!(
                        !line.contains('\u{1b}'),
                        "colour codes (NO_COLOR): {line:?}"
                    );
                    if let Ok(event) = serde_json::from_str::<Value>(line.trim()) {
                        events.push(event);
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "tail did not show everything within {PATIENCE:?}; it printed:\n{}\nsidecar logs:\n{}",
                        seen.join("\n"),
                        said(&self.compose(&["logs", "sync-engine"]))
                    );
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = run(
            &self.engine,
            &["rm", "-f", &format!("{}-tail", self.project)],
        );
        events
    }

    /// The name of `service`'s container (the first replica).
    fn container(&self, service: &str) -> String {
        let out = run(
            &self.engine,
            &[
                "ps",
                "-a",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project),
                "--filter",
                &format!("label=com.docker.compose.service={service}"),
                "--format",
                "{{.Names}}",
            ],
        );
        let names = String::from_utf8_lossy(&out.stdout);
        names
            .lines()
            .find(|n| n.ends_with("_1") || n.ends_with("-1"))
            .unwrap_or_else(|| panic!("no container of {service} in {names:?}"))
            .to_string()
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; compose ps:\n{}\nsidecar logs:\n{}",
                said(&self.compose(&["ps"])),
                said(&self.compose(&["logs", "sync-engine"]))
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let down = self.compose(&["down", "-v", "-t", "5"]);
        if !down.status.success() {
            eprintln!("compose down: {}", said(&down));
        }
    }
}
