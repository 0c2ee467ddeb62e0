//! The services of the integration tests in containers, for machines where `scripts/test` does
//! not run (a laptop with Docker, any OS): when a `SYNC_ENGINE_TEST_*` URL is not set and a
//! Docker API answers (`DOCKER_HOST`, else `/var/run/docker.sock`), MariaDB, Redis, Redis Stack
//! and a Kafka-protocol broker are started with testcontainers and the tests use those instead.
//! With the URLs set (what `scripts/test`, and so CI, does) nothing here runs.
//!
//! Images, each overridable (upstream defaults; `scripts/stand-in-images` builds local stand-ins
//! where no registry is reachable):
//!
//! | variable                            | default                             |
//! |-------------------------------------|-------------------------------------|
//! | `SYNC_ENGINE_TEST_MARIADB_IMAGE`     | `mariadb:10.11`                     |
//! | `SYNC_ENGINE_TEST_REDIS_IMAGE`       | `redis:7.2`                         |
//! | `SYNC_ENGINE_TEST_REDIS_STACK_IMAGE` | `redis/redis-stack-server:7.4.0-v1` |
//! | `SYNC_ENGINE_TEST_KAFKA_IMAGE`       | `apache/kafka:3.9.1`                |
//!
//! Cargo runs each test file as its own process, so the containers are *reused*: named
//! `sync-engine-test-<service>-<digest of image and settings>`, started by the first test
//! process that needs them and found again by the next ones (and by the next `cargo test`).
//! They keep running afterwards; `docker rm -f $(docker ps -aq --filter
//! label=sync-engine.test-service)` removes them. The Kafka container advertises the host port
//! it is published on, which is chosen when it is created.
//!
//! Tests that start private servers of their own (fault injection, TLS, Redis restarts) still
//! need those programs on the machine, as `scripts/test` installs them.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use testcontainers::core::{ContainerPort, IntoContainerPort};
use testcontainers::{ContainerAsync, GenericImage, ImageExt, ReuseDirective};

/// The URLs the tests' `SYNC_ENGINE_TEST_*` variables would hold.
#[derive(Debug, Clone)]
pub struct Services {
    pub mysql_url: String,
    pub redis_url: String,
    pub redis_stack_url: String,
    pub kafka_brokers: String,
}

/// Image names (`name:tag`) of the four services.
#[derive(Debug, Clone)]
pub struct Images {
    pub mariadb: String,
    pub redis: String,
    pub redis_stack: String,
    pub kafka: String,
}

impl Images {
    /// From the `SYNC_ENGINE_TEST_*_IMAGE` variables, upstream images where unset.
    pub fn from_env() -> Images {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
        Images {
            mariadb: var("SYNC_ENGINE_TEST_MARIADB_IMAGE", "mariadb:10.11"),
            redis: var("SYNC_ENGINE_TEST_REDIS_IMAGE", "redis:7.2"),
            redis_stack: var(
                "SYNC_ENGINE_TEST_REDIS_STACK_IMAGE",
                "redis/redis-stack-server:7.4.0-v1",
            ),
            kafka: var("SYNC_ENGINE_TEST_KAFKA_IMAGE", "apache/kafka:3.9.1"),
        }
    }

    /// The stand-ins `scripts/stand-in-images` builds.
    pub fn stand_ins() -> Images {
        let image = |name: &str| format!("localhost/sync-engine-stand-in/{name}:dev");
        Images {
            mariadb: image("mariadb"),
            redis: image("redis"),
            redis_stack: image("redis-stack"),
            kafka: image("kafka"),
        }
    }
}

const MARIADB_PASSWORD: &str = "sync-engine-test";
/// The database the URL names; each test makes its own databases named after it.
pub const MARIADB_DATABASE: &str = "sync_engine_test";
const READY: Duration = Duration::from_secs(180);

/// `var` if it is set; otherwise what the containers give for it (started on first use), or a
/// failure naming both ways to provide it.
pub fn url_or_container(var: &str, pick: impl Fn(&Services) -> &String) -> String {
    if let Ok(url) = std::env::var(var) {
        return url;
    }
    static SERVICES: OnceLock<Services> = OnceLock::new();
    let services = SERVICES.get_or_init(|| {
        if !docker_api_reachable() {
            panic!(
                "{var} is not set and no Docker API answers (DOCKER_HOST, /var/run/docker.sock): \
                 run the suite with scripts/test (it starts the services), or start Docker and \
                 the tests start them in containers"
            );
        }
        eprintln!("{var} is not set: starting the test services in containers (testcontainers)");
        start_blocking(Images::from_env())
    });
    pick(services).clone()
}

fn docker_api_reachable() -> bool {
    match std::env::var("DOCKER_HOST") {
        Ok(host) => host
            .strip_prefix("unix://")
            .is_none_or(|path| std::path::Path::new(path).exists()),
        Err(_) => std::path::Path::new("/var/run/docker.sock").exists(),
    }
}

/// [`start`] on a runtime of its own, so that sync and async callers alike can wait for it.
pub fn start_blocking(images: Images) -> Services {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(start(&images))
    })
    .join()
    .unwrap_or_else(|_| panic!("starting the test services in containers failed (see above)"))
}

/// Starts (or finds running) the four containers and waits until each answers: MariaDB a
/// query, Redis and Redis Stack a PING (Redis Stack with its modules), Kafka a metadata request.
pub async fn start(images: &Images) -> Services {
    let mariadb = reused(
        "mariadb",
        &images.mariadb,
        &[
            ("MARIADB_ROOT_PASSWORD", MARIADB_PASSWORD.to_string()),
            ("MARIADB_DATABASE", MARIADB_DATABASE.to_string()),
        ],
        &["--max-allowed-packet=64M"],
        3306.tcp(),
        None,
    )
    .await;
    let redis = reused("redis", &images.redis, &[], &[], 6379.tcp(), None).await;
    let stack = reused(
        "redis-stack",
        &images.redis_stack,
        &[],
        &[],
        6379.tcp(),
        None,
    )
    .await;
    // apache/kafka's variables for one KRaft node whose PLAINTEXT listener is advertised at the
    // host port it is published on (the stand-in reads the same two listener variables)
    let kafka_port = free_port();
    let kafka = reused(
        "kafka",
        &images.kafka,
        &[
            ("KAFKA_NODE_ID", "1".into()),
            ("KAFKA_PROCESS_ROLES", "broker,controller".into()),
            (
                "KAFKA_LISTENERS",
                "PLAINTEXT://:9092,CONTROLLER://:9093".into(),
            ),
            (
                "KAFKA_ADVERTISED_LISTENERS",
                format!("PLAINTEXT://127.0.0.1:{kafka_port}"),
            ),
            (
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".into(),
            ),
            ("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER".into()),
            ("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093".into()),
            ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1".into()),
            ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1".into()),
            ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1".into()),
            ("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0".into()),
        ],
        &[],
        9092.tcp(),
        Some(kafka_port),
    )
    .await;

    let services = Services {
        mysql_url: format!(
            "mysql://root:{MARIADB_PASSWORD}@127.0.0.1:{}/{MARIADB_DATABASE}",
            mariadb.get_host_port_ipv4(3306.tcp()).await.unwrap()
        ),
        redis_url: format!(
            "redis://127.0.0.1:{}",
            redis.get_host_port_ipv4(6379.tcp()).await.unwrap()
        ),
        redis_stack_url: format!(
            "redis://127.0.0.1:{}",
            stack.get_host_port_ipv4(6379.tcp()).await.unwrap()
        ),
        kafka_brokers: format!(
            "127.0.0.1:{}",
            kafka.get_host_port_ipv4(9092.tcp()).await.unwrap()
        ),
    };
    wait_ready(&services).await;
    drop_stale_databases(&services.mysql_url).await;
    eprintln!("test services in containers: {services:?}");
    services
}

/// A container of `image` for `service`, found by its name if it exists (running or not).
async fn reused(
    service: &str,
    image: &str,
    env: &[(&str, String)],
    cmd: &[&str],
    port: ContainerPort,
    host_port: Option<u16>,
) -> ContainerAsync<GenericImage> {
    // the settings that make a container what it is, minus the host port chosen at creation
    let mut digest = DefaultHasher::new();
    (image, cmd).hash(&mut digest);
    for (name, value) in env {
        if name != &"KAFKA_ADVERTISED_LISTENERS" {
            (name, value).hash(&mut digest);
        }
    }
    let name = format!("sync-engine-test-{service}-{:08x}", digest.finish() as u32);
    let (repository, tag) = split_image(image);
    let mut request = GenericImage::new(repository, tag)
        .with_exposed_port(port)
        .with_container_name(&name)
        .with_label("sync-engine.test-service", service)
        .with_reuse(ReuseDirective::Always)
        .with_cmd(cmd.iter().copied());
    for (key, value) in env {
        request = request.with_env_var(*key, value.clone());
    }
    // published on 127.0.0.1 only, at a port chosen here: podman's Docker API reports a
    // binding without a host IP as "", which testcontainers does not count as IPv4
    let request = request
        .with_mapped_port(host_port.unwrap_or_else(free_port), port)
        .with_host_config_modifier(|host_config| {
            for bindings in host_config
                .port_bindings
                .iter_mut()
                .flat_map(|m| m.values_mut())
            {
                for binding in bindings.iter_mut().flatten() {
                    binding.host_ip = Some("127.0.0.1".into());
                }
            }
        });
    testcontainers::runners::AsyncRunner::start(request)
        .await
        .unwrap_or_else(|e| panic!("start {name} ({image}): {e}"))
}

/// `name:tag` (a registry port is not a tag: `localhost:5000/x` has the tag `latest`).
fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository.into(), tag.into()),
        _ => (image.into(), "latest".into()),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

async fn wait_ready(services: &Services) {
    let deadline = Instant::now() + READY;
    let until = |what: &str, last: &str| {
        assert!(
            Instant::now() < deadline,
            "{what} in a container did not answer within {READY:?}: {last}"
        );
    };
    loop {
        use sqlx::Connection;
        match sqlx::MySqlConnection::connect(&services.mysql_url).await {
            Ok(conn) => {
                let _ = conn.close().await;
                break;
            }
            Err(e) => until("MariaDB", &e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (what, url, modules) in [
        ("Redis", &services.redis_url, false),
        ("Redis Stack", &services.redis_stack_url, true),
    ] {
        loop {
            let answer: redis::RedisResult<String> = async {
                let client = redis::Client::open(url.as_str())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                let list: redis::Value = redis::cmd("MODULE")
                    .arg("LIST")
                    .query_async(&mut conn)
                    .await?;
                Ok(format!("{list:?}"))
            }
            .await;
            match answer {
                Ok(list) if !modules || (list.contains("ReJSON") && list.contains("search")) => {
                    break
                }
                Ok(list) => until(
                    what,
                    &format!("no RedisJSON/RediSearch in MODULE LIST: {list}"),
                ),
                Err(e) => until(what, &e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let brokers = services.kafka_brokers.clone();
    loop {
        let brokers = brokers.clone();
        let answer = tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .map_err(|e| e.to_string())?;
            consumer
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap();
        match answer {
            Ok(()) => break,
            Err(e) => until("Kafka", &e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The databases earlier test processes made in the reused MariaDB (`<database>_<pid>_<n>`,
/// see `Backend::mariadb`), once those processes are gone: what scripts/test's clean-up does
/// for its own server.
async fn drop_stale_databases(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::MySqlConnection::connect(url).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE '{MARIADB_DATABASE}\\_%'"
    ))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for name in names {
        let pid = name[MARIADB_DATABASE.len() + 1..]
            .split('_')
            .next()
            .unwrap_or("");
        let alive = pid.parse::<u32>().is_ok_and(|pid| {
            std::process::Command::new("kill")
                .args(["-0", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !alive {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                .execute(&mut conn)
                .await;
        }
    }
}
