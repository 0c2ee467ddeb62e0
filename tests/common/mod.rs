//! Shared by the integration tests: the backends every scenario runs on.
//!
//! MariaDB comes from `SYNC_ENGINE_TEST_MYSQL_URL` (set by `scripts/test`), or without it from a
//! container (`common::containers`, where a Docker API answers); each engine gets a database of
//! its own on that server, so tests never see each other's rows. Neither fails the test: a
//! skipped backend would look like a pass. The Redis servers are in
//! `common::redis`; Kafka (kafka.rs) and the reference Merkle implementation (merkle_ref.rs)
//! are declared by the test binaries that use them.
#![allow(dead_code)] // each test binary uses its own subset

pub mod containers;
pub mod redis;

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;
use sync_engine::{SyncEngine, SyncEngineConfig};
use tokio::sync::watch;

pub const MYSQL_ENV: &str = "SYNC_ENGINE_TEST_MYSQL_URL";

/// The test MariaDB server's URL (its database is the prefix of the tests' own databases):
/// `SYNC_ENGINE_TEST_MYSQL_URL`, or a container's.
pub fn mysql_url() -> String {
    containers::url_or_container(MYSQL_ENV, |s| &s.mysql_url)
}

/// A database an engine can be (re)started on.
pub struct Backend {
    pub name: &'static str,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    pub fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("l3.db").display());
        Backend {
            name: "sqlite",
            url,
            _dir: Some(dir),
        }
    }

    /// A database at `url` that someone else made (e.g. a test's own TLS server).
    pub fn at(name: &'static str, url: String) -> Backend {
        Backend {
            name,
            url,
            _dir: None,
        }
    }

    /// A fresh, empty database on the test MariaDB server, named after the run's database.
    pub async fn mariadb() -> Backend {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = mysql_url();
        let (server, base_db) = base.rsplit_once('/').expect("url ends in /database");
        // scripts/test drops `<its database>_*` when the run ends
        let db = format!(
            "{base_db}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut conn = sqlx::MySqlConnection::connect(&base)
            .await
            .expect("connect to MariaDB");
        for sql in [
            format!("DROP DATABASE IF EXISTS `{db}`"),
            format!("CREATE DATABASE `{db}`"),
        ] {
            sqlx::query(&sql)
                .execute(&mut conn)
                .await
                .expect("create the test database");
        }
        Backend {
            name: "mariadb",
            url: format!("{server}/{db}"),
            _dir: None,
        }
    }

    pub fn config(&self) -> SyncEngineConfig {
        SyncEngineConfig {
            sql_url: Some(self.url.clone()),
            ..Default::default()
        }
    }

    pub async fn engine(&self) -> SyncEngine {
        self.engine_with(self.config()).await
    }

    pub async fn engine_with(&self, config: SyncEngineConfig) -> SyncEngine {
        let (_tx, rx) = watch::channel(config.clone());
        let mut engine = SyncEngine::new(config, rx);
        engine.start().await.expect("engine starts");
        engine
    }

    /// A raw connection for asserting on the tables themselves.
    pub async fn raw(&self) -> Raw {
        if self.name == "sqlite" {
            Raw::Sqlite(sqlx::SqliteConnection::connect(&self.url).await.unwrap())
        } else {
            Raw::MySql(sqlx::MySqlConnection::connect(&self.url).await.unwrap())
        }
    }
}

/// A row of `sync_items` as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    pub id: Vec<u8>,
    pub payload: Option<String>,
    pub payload_blob: Option<Vec<u8>>,
    pub content_hash: String,
    pub state: Vec<u8>,
    pub version: i64,
}

type RowTuple = (
    Vec<u8>,
    Option<String>,
    Option<Vec<u8>>,
    String,
    Vec<u8>,
    i64,
);

impl RawRow {
    /// The payload bytes, from whichever column holds them (`payload` for JSON, else the blob).
    pub fn content(&self) -> Vec<u8> {
        match (&self.payload, &self.payload_blob) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(blob)) => blob.clone(),
            (None, None) => Vec::new(),
        }
    }
}

pub enum Raw {
    MySql(sqlx::MySqlConnection),
    Sqlite(sqlx::SqliteConnection),
}

macro_rules! on_raw {
    ($raw:expr, $conn:ident => $body:expr) => {
        match $raw {
            Raw::MySql($conn) => $body,
            Raw::Sqlite($conn) => $body,
        }
    };
}

impl Raw {
    /// Every live row's payload, by id.
    pub async fn payloads(&mut self) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
        self.contents()
            .await
            .into_iter()
            .map(|(id, (payload, _))| (id, payload))
            .collect()
    }

    /// Every live row's payload and version, by id.
    pub async fn contents(&mut self) -> std::collections::BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
        self.rows()
            .await
            .into_iter()
            .map(|r| {
                let payload = r.content();
                (r.id, (payload, r.version))
            })
            .collect()
    }

    /// Every live row, by id.
    pub async fn rows(&mut self) -> Vec<RawRow> {
        let sql = "SELECT id, payload, payload_blob, content_hash, state, version FROM sync_items ORDER BY id";
        on_raw!(self, conn => {
            let rows: Vec<RowTuple> =
                sqlx::query_as(sql).fetch_all(&mut *conn).await.unwrap();
            rows.into_iter()
                .map(|(id, payload, payload_blob, content_hash, state, version)| RawRow {
                    id, payload, payload_blob, content_hash, state, version,
                })
                .collect()
        })
    }

    /// The ids of every live row, in id order.
    pub async fn ids(&mut self) -> Vec<Vec<u8>> {
        self.rows().await.into_iter().map(|r| r.id).collect()
    }

    pub async fn row(&mut self, id: &str) -> Option<RawRow> {
        self.rows()
            .await
            .into_iter()
            .find(|r| r.id == id.as_bytes())
    }

    /// `(id, content_hash)` of every row of partition `source`, straight from `sync_items`.
    pub async fn leaves(&mut self, source: &str) -> Vec<(Vec<u8>, String)> {
        // `source` is VARBINARY / BLOB: bind bytes (a text literal never equals a BLOB in SQLite)
        let sql = "SELECT id, content_hash FROM sync_items WHERE source = ?";
        on_raw!(self, conn => {
            let rows: Vec<(Vec<u8>, String)> =
                sqlx::query_as(sql).bind(source.as_bytes()).fetch_all(&mut *conn).await.unwrap();
            rows
        })
    }

    /// How many rows partition `source` holds.
    pub async fn count(&mut self, source: &str) -> u64 {
        let sql = "SELECT COUNT(*) FROM sync_items WHERE source = ?";
        let count: i64 = on_raw!(self, conn => {
            sqlx::query_scalar(sql).bind(source.as_bytes()).fetch_one(&mut *conn).await.unwrap()
        });
        count as u64
    }

    /// Runs a statement as is (for corrupting rows on purpose).
    pub async fn execute(&mut self, sql: &str) {
        on_raw!(self, conn => { sqlx::query(sql).execute(&mut *conn).await.unwrap(); })
    }
}

/// A small deterministic generator, so a failing sequence can be replayed from its seed.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

/// Runs an async scenario `fn(Backend)` on SQLite and on MariaDB, as two tests.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$scenario($crate::common::Backend::sqlite()).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mariadb() {
                    super::$scenario($crate::common::Backend::mariadb().await).await
                }
            }
        )*
    };
}

/// Runs Prometheus's `promtool` with `args` (and `stdin`, if any); a missing promtool fails
/// the test: scripts/test installs it (Debian's `prometheus` package).
pub fn promtool(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool cannot run ({e}): run the suite with scripts/test (it installs Debian's prometheus package, which carries promtool)")
        });
    let mut input = child.stdin.take().expect("promtool's stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// One HTTP/1.0 GET (the sidecar's endpoint): (status, body); status 0 when nothing answers
/// (yet).
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}
