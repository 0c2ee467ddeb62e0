//! Redis failures: a private redis-server (with an append-only file, so a restart brings old
//! data back) is killed and restarted under a running engine. SQL keeps the truth, reads fall
//! back, Redis never serves a value older than SQL through the engine, and Redis converges to
//! SQL by itself once it is back.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Backend;
use redis::AsyncCommands;
use sync_engine::{SyncEngine, SyncEngineConfig, SyncItem};

struct Server {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn redis_server_binary() -> PathBuf {
    std::env::var_os("SYNC_ENGINE_TEST_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

impl Server {
    fn new() -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Server {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let child = Command::new(redis_server_binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn engine(sql: &Backend, redis_url: String) -> SyncEngine {
    sql.engine_with(SyncEngineConfig {
        redis_url: Some(redis_url),
        ..sql.config()
    })
    .await
}

fn put(id: &str, value: &str) -> SyncItem {
    SyncItem::new(id.into(), value.as_bytes().to_vec())
}

/// Submits `probe` until a write reaches Redis (after its cool-down), or panics.
async fn until_redis_takes_writes(engine: &SyncEngine, server: &Server) {
    let mut raw = server.raw().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !raw.exists::<_, bool>("probe").await.unwrap() {
        assert!(
            Instant::now() < deadline,
            "writes never reached Redis again"
        );
        engine.submit(put("probe", "p")).await.unwrap();
        engine.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_before_start() {
    let mut server = Server::new();
    let sql = Backend::sqlite();
    let engine = engine(&sql, server.url()).await;
    for i in 0..50 {
        engine
            .submit(put(&format!("k{i}"), &format!("v{i}")))
            .await
            .unwrap();
    }
    engine.flush().await.unwrap();
    engine.clear_l1();
    for i in 0..50 {
        assert_eq!(
            engine
                .get(&format!("k{i}"))
                .await
                .unwrap()
                .unwrap()
                .content(),
            format!("v{i}").as_bytes()
        );
    }
    assert_eq!(sql.raw().await.rows().await.len(), 50);

    server.start().await;
    until_redis_takes_writes(&engine, &server).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_never_serves_stale_values() {
    let mut server = Server::new();
    server.start().await;
    let sql = Backend::sqlite();
    let engine = engine(&sql, server.url()).await;
    for i in 0..10 {
        engine.submit(put(&format!("k{i}"), "v1")).await.unwrap();
    }
    engine.flush().await.unwrap();
    assert!(server.raw().await.exists::<_, bool>("k9").await.unwrap());

    server.kill();
    for i in 0..5 {
        engine.submit(put(&format!("k{i}"), "v2")).await.unwrap();
    }
    engine.delete("k6").await.unwrap();
    engine.submit(put("during", "outage")).await.unwrap();
    engine.flush().await.unwrap();
    engine.clear_l1();
    assert_eq!(engine.get("k0").await.unwrap().unwrap().content(), b"v2");
    assert!(engine.get("k6").await.unwrap().is_none());

    // the restarted server replays its append-only file: k0..k9 = v1 again, in Redis only
    server.start().await;
    let mut raw = server.raw().await;
    assert!(
        raw.exists::<_, bool>("k0").await.unwrap(),
        "old data is back in Redis"
    );
    engine.clear_l1();
    for i in 0..5 {
        assert_eq!(
            engine
                .get(&format!("k{i}"))
                .await
                .unwrap()
                .unwrap()
                .content(),
            b"v2",
            "k{i}"
        );
    }
    assert!(
        engine.get("k6").await.unwrap().is_none(),
        "deleted while Redis was down"
    );
    assert_eq!(engine.get("k9").await.unwrap().unwrap().content(), b"v1");

    // with no further write, the repair rewrites every id the outage left stale from SQL
    let expected: Vec<(&str, Option<&[u8]>)> = vec![
        ("k0", Some(b"v2")),
        ("k4", Some(b"v2")),
        ("k6", None),
        ("during", Some(b"outage")),
        ("k9", Some(b"v1")),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut now = Vec::new();
        for (id, _) in &expected {
            let payload: Option<Vec<u8>> = raw.hget(*id, "payload").await.unwrap();
            now.push(payload);
        }
        let wanted: Vec<Option<Vec<u8>>> = expected
            .iter()
            .map(|(_, v)| v.map(<[u8]>::to_vec))
            .collect();
        if now == wanted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis did not converge to SQL: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sql.raw().await.rows().await.len(),
        10 - 1 + 1,
        "SQL has everything"
    );
    engine.shutdown().await;
}
