//! The tests' container path (`tests/common/containers.rs`), the way a laptop without
//! `scripts/test` uses it, exercised here through podman's Docker API: a `podman system service`
//! of this test's own on a private socket as `DOCKER_HOST`, the stand-in images
//! (`scripts/stand-in-images`) as the service images. MariaDB, Redis, Redis Stack and the
//! Kafka-protocol broker start in containers and answer; an engine writes through the MariaDB
//! and Redis Stack containers and reads back exactly; a sidecar consumes from the broker
//! container and confirms every record into the MariaDB container; a second start finds the
//! same containers again (what the next test binary does). Under `SYNC_ENGINE_TEST_IMAGE=1`,
//! like the image and compose tests; the containers are removed at the end.

mod common;
#[path = "common/deploy.rs"]
mod deploy;
#[path = "common/kafka.rs"]
mod kafka;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::containers::{self, Images, MARIADB_DATABASE};
use common::Backend;
use deploy::run;
use kafka::{confirmed, put, Pipeline};
use sqlx::Connection;
use sync_engine::{SyncEngineConfig, SyncItem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_start_in_containers_through_the_docker_api() {
    if !deploy::images_wanted() {
        return;
    }
    if deploy::engine() != "podman" {
        eprintln!("SKIPPED: this exercise serves podman's Docker API; with docker, unset the SYNC_ENGINE_TEST_* URLs and run cargo test");
        return;
    }
    deploy::build_stand_ins();
    let api = DockerApi::start();
    // read by testcontainers when it first connects, below
    std::env::set_var("DOCKER_HOST", format!("unix://{}", api.socket.display()));

    let started = Instant::now();
    let services = containers::start_blocking(Images::stand_ins());
    eprintln!(
        "services in containers after {:.1?}: {services:?}",
        started.elapsed()
    );
    let _cleanup = Cleanup;
    for url in [
        &services.mysql_url,
        &services.redis_url,
        &services.redis_stack_url,
    ] {
        assert!(
            !url.contains(":3306/") && !url.ends_with(":6379") && !url.ends_with(":6380"),
            "a container's published port, not the machine's own service: {url}"
        );
    }

    // an engine on the MariaDB and Redis Stack containers: bytes in, the same bytes out
    let sql = fresh_database(&services.mysql_url, "engine").await;
    let engine = sql
        .engine_with(SyncEngineConfig {
            redis_url: Some(services.redis_stack_url.clone()),
            redis_prefix: Some(format!("tc{}:", std::process::id())),
            ..sql.config()
        })
        .await;
    let items: Vec<SyncItem> = (0..50)
        .map(|i| SyncItem::from_json(format!("doc:{i:02}"), serde_json::json!({"n": i})))
        .collect();
    for item in &items {
        engine.submit(item.clone()).await.unwrap();
    }
    engine
        .submit(SyncItem::new("blob".into(), vec![0, 255, 1]))
        .await
        .unwrap();
    engine.flush().await.unwrap();
    engine.clear_l1();
    for item in &items {
        let got = engine.get(item.id()).await.unwrap().expect("stored");
        assert_eq!(got.content(), item.content(), "{}", item.id());
    }
    let blob = engine.get("blob").await.unwrap().expect("stored");
    assert_eq!(blob.content(), &[0, 255, 1][..]);
    let rows = sql.raw().await.contents().await;
    assert_eq!(rows.len(), 51, "rows in the MariaDB container");
    let mut redis = redis::Client::open(services.redis_stack_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let doc: String = redis::cmd("JSON.GET")
        .arg(format!("tc{}:doc:07", std::process::id()))
        .arg("payload")
        .query_async(&mut redis)
        .await
        .expect("a RedisJSON document in the Redis Stack container");
    assert_eq!(doc, "{\"n\":7}");
    engine.shutdown().await;

    // a sidecar between the broker container and the MariaDB container
    let p = Pipeline::on_brokers(
        "containers",
        2,
        fresh_database(&services.mysql_url, "sidecar").await,
        services.kafka_brokers.clone(),
    )
    .await;
    let records: Vec<_> = (0..200)
        .map(|i| {
            put(
                &format!("k{i:03}"),
                format!("{{\"v\":{i}}}").as_bytes(),
                &[],
            )
        })
        .collect();
    let positions = p.produce(&records).await;
    let mut sidecar = p.start("");
    let outs = p.read_until("out", Duration::from_secs(120), |o| {
        confirmed(o).len() >= positions.len()
    });
    assert_eq!(confirmed(&outs).len(), positions.len(), "{}", sidecar.log());
    sidecar.stop();
    let rows = p.sql.raw().await.payloads().await;
    assert_eq!(rows.len(), 200);
    assert_eq!(rows[b"k123".as_slice()], b"{\"v\":123}");

    // what the next test binary does: the same containers, found again by name
    let again = containers::start_blocking(Images::stand_ins());
    assert_eq!(
        (
            &again.mysql_url,
            &again.redis_url,
            &again.redis_stack_url,
            &again.kafka_brokers
        ),
        (
            &services.mysql_url,
            &services.redis_url,
            &services.redis_stack_url,
            &services.kafka_brokers
        ),
        "a second start reuses the running containers"
    );
}

/// A database of this test's own on the MariaDB container, named as `Backend::mariadb` names
/// them (so the next start's clean-up knows whose it is).
async fn fresh_database(server_url: &str, what: &str) -> Backend {
    let (server, _) = server_url.rsplit_once('/').unwrap();
    let name = format!("{MARIADB_DATABASE}_{}_{what}", std::process::id());
    let mut conn = sqlx::MySqlConnection::connect(server_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS `{name}`"))
        .execute(&mut conn)
        .await
        .unwrap();
    Backend::at("mariadb", format!("{server}/{name}"))
}

/// `podman system service` on a socket of its own, stopped on drop.
struct DockerApi {
    child: Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl DockerApi {
    fn start() -> DockerApi {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("podman.sock");
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service");
        let api = DockerApi {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !api.answers() {
            assert!(
                Instant::now() < deadline,
                "podman's Docker API did not answer on {}",
                api.socket.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        api
    }

    /// `GET /_ping` on the socket answers `OK`.
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if stream
            .write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply.ends_with("OK")
    }
}

impl Drop for DockerApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the containers the test started (they are kept for reuse otherwise).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = run(
            "podman",
            &["ps", "-aq", "--filter", "label=sync-engine.test-service"],
        );
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-t", "2"];
            args.extend(ids.iter().map(String::as_str));
            let _ = run("podman", &args);
        }
    }
}
