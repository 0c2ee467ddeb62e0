//! The container image, built and run for real. `scripts/build-image` makes it from this test's
//! own `sync-engine` build (the Containerfile's `runtime-prebuilt` target, on the local Debian 12
//! base that stands in for distroless). The container runs as the image says (entry point,
//! default command, the pipeline file baked in), with a read-only root filesystem, a tmpfs /tmp
//! and user 65532, pointed at this test's topics, database and Redis prefix by `SYNC_ENGINE__*`
//! variables only: records become rows, Redis keys, confirmations and a DLQ record, /healthz,
//! /readyz and /metrics answer, and SIGTERM ends it with exit code 0 and plain-text logs.
//!
//! `SYNC_ENGINE_TEST_IMAGE` (scripts/test sets it to 1 unless it is set already, and logs it):
//! 1 builds and runs the image, 0 skips that. Unset fails, like any backend this suite needs: a
//! silently skipped test would look like a pass.

mod common;
#[path = "common/deploy.rs"]
mod deploy;
#[path = "common/kafka.rs"]
mod kafka;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http_get as get;
use common::Backend;
use deploy::{free_port, run};
use kafka::{confirmed, delete, put, Pipeline, Rec};
use serde_json::Value;

const TAG: &str = "localhost/sync-engine:test";

#[test]
fn dockerfile_is_the_containerfile() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let containerfile = std::fs::read_to_string(root.join("Containerfile")).unwrap();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        containerfile == dockerfile,
        "Dockerfile must be a copy of Containerfile: cp Containerfile Dockerfile"
    );
    let version = format!("ARG VERSION={}\n", env!("CARGO_PKG_VERSION"));
    assert!(
        containerfile.contains(&version),
        "the Containerfile's version label default is not Cargo.toml's: want `{version}`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_the_sidecar() {
    let Some(engine) = deploy::build_image(TAG) else {
        return;
    };

    // `--help` through the image's entry point
    let help = run(&engine, &["run", "--rm", TAG, "--help"]);
    assert!(
        help.status.success()
            && String::from_utf8_lossy(&help.stdout).contains("Usage: sync-engine"),
        "--help: {help:?}"
    );

    // what the image declares
    let config: Value = serde_json::from_slice(
        &run(
            &engine,
            &["image", "inspect", "--format", "{{json .Config}}", TAG],
        )
        .stdout,
    )
    .expect("the image's config as JSON");
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/sync-engine"])
    );
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["run", "--pipeline", "/etc/sync-engine/pipeline.toml"])
    );
    assert!(config["ExposedPorts"].get("9464/tcp").is_some(), "{config}");
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "sync-engine");
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    // records for the container: JSON and binary puts, a delete, and one for the DLQ
    let p = Pipeline::on("image", 2, Backend::mariadb().await).await;
    let mut records: Vec<Rec> = (0..20)
        .map(|i| {
            put(
                &format!("item:{i:02}"),
                format!("{{\"n\":{i}}}").as_bytes(),
                &[],
            )
        })
        .collect();
    records.push(put("blob", &[0, 159, 146, 150], &[]));
    records.push(delete("item:03"));
    records.push(put(
        "bad:json",
        b"{nope",
        &[("content-type", "application/json")],
    ));
    let positions = p.produce(&records).await;

    let port = free_port();
    let redis_url = common::redis::url(common::redis::PLAIN_ENV);
    let prefix = format!("{}:", p.name);
    let settings = [
        ("SQL_URL", p.sql.url.clone()),
        ("REDIS_URL", redis_url.clone()),
        ("REDIS_PREFIX", prefix.clone()),
        ("BATCH_FLUSH_MS", "50".into()),
        ("HTTP__LISTEN", format!("127.0.0.1:{port}")),
        ("KAFKA__BROKERS", p.brokers.clone()),
        ("KAFKA__GROUP_ID", p.group()),
        ("KAFKA__INPUT_TOPIC", p.topic("in")),
        ("KAFKA__OUTPUT_TOPIC", p.topic("out")),
        ("KAFKA__DLQ_TOPIC", p.topic("dlq")),
        // tansu hands partitions out after about half the session timeout
        ("KAFKA__CONSUMER__SESSION__TIMEOUT__MS", "6000".into()),
        ("KAFKA__CONSUMER__HEARTBEAT__INTERVAL__MS", "500".into()),
    ];
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--name",
        &p.name,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--user",
        "65532:65532",
    ]
    .map(String::from)
    .to_vec();
    for (key, value) in &settings {
        args.push("-e".into());
        args.push(format!("SYNC_ENGINE__{key}={value}"));
    }
    args.push(TAG.into());
    let container = Container::start(&engine, &p.name, &args);

    // every offset confirmed, the bad record in the DLQ
    let deadline = Instant::now() + Duration::from_secs(120);
    let outs = p.read_until("out", Duration::from_secs(120), |o| {
        confirmed(o).len() >= positions.len() || container.exited()
    });
    let expected: BTreeSet<(i32, i64)> = positions.iter().copied().collect();
    assert_eq!(
        confirmed(&outs).keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "a confirmation for every offset; container logs:\n{}",
        container.logs()
    );
    let dlq = p.read_until("dlq", Duration::from_secs(30), |o| !o.is_empty());
    assert_eq!(dlq[0].headers["sync-error-code"], "invalid_json");

    // rows in MariaDB, keys in Redis
    let mut expected_rows: BTreeMap<Vec<u8>, Vec<u8>> = (0..20)
        .filter(|i| *i != 3)
        .map(|i| {
            (
                format!("item:{i:02}").into_bytes(),
                format!("{{\"n\":{i}}}").into_bytes(),
            )
        })
        .collect();
    expected_rows.insert(b"blob".to_vec(), vec![0, 159, 146, 150]);
    let rows = p.sql.raw().await.payloads().await;
    assert_eq!(rows, expected_rows, "sync_items after the run");
    let mut redis = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // (besides the items' keys, the prefix holds the engine's own, which are not UTF-8)
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let key = |id: &[u8]| [prefix.as_bytes(), id].concat();
    for id in expected_rows.keys() {
        assert!(
            keys.contains(&key(id)),
            "{} not in Redis",
            String::from_utf8_lossy(&key(id))
        );
    }
    assert!(!keys.contains(&key(b"item:03")), "deleted, yet in Redis");

    // the HTTP endpoint, from inside the container's (host) network
    let address = format!("127.0.0.1:{port}");
    assert_eq!(get(&address, "/healthz").0, 200);
    while get(&address, "/readyz").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            container.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, metrics) = get(&address, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("sync_engine_build_info"), "{metrics}");

    // SIGTERM to PID 1 drains and exits 0
    let stop = run(&engine, &["stop", "-t", "30", &p.name]);
    assert!(stop.status.success(), "{engine} stop: {stop:?}");
    let logs = container.logs();
    assert_eq!(
        container.exit_code(),
        "0",
        "exit code after SIGTERM; logs:\n{logs}"
    );
    assert!(logs.contains("stopped cleanly"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in the logs (NO_COLOR): {logs}"
    );
}

/// A detached container, removed on drop.
struct Container {
    engine: String,
    name: String,
}

impl Container {
    fn start(engine: &str, name: &str, args: &[String]) -> Container {
        let out = Command::new(engine).args(args).output().unwrap();
        assert!(out.status.success(), "{engine} run: {out:?}");
        Container {
            engine: engine.into(),
            name: name.into(),
        }
    }

    fn inspect(&self, format: &str) -> String {
        let out = run(&self.engine, &["inspect", "--format", format, &self.name]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn exited(&self) -> bool {
        self.inspect("{{.State.Running}}") != "true"
    }

    fn exit_code(&self) -> String {
        self.inspect("{{.State.ExitCode}}")
    }

    fn logs(&self) -> String {
        let out = run(&self.engine, &["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(&self.engine)
            .args(["rm", "-f", &self.name])
            .output();
    }
}
