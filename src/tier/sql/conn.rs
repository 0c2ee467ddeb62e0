//! Opening the tier: the pool on MySQL/MariaDB or SQLite, the first connection that says why
//! a server refuses, and the migrations (`schemas/sql/<backend>/`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::sqlite::SqliteSynchronous;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::ConnectOptions;

use super::dialect::Dialect;
use super::rows::Pool;
use crate::error::{Result, SyncError};

pub struct SqlTier {
    pub(super) pool: Pool,
    pub(super) dialect: Dialect,
    /// Bytes one statement may carry (MySQL: below `max_allowed_packet`).
    pub(super) max_statement_bytes: usize,
    /// Whether batches move the Merkle digests.
    pub(super) merkle: bool,
}

/// How long a connection to MySQL may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `mariadb://…` as sqlx's `mysql://…`: the scheme only, since a host may be called `mariadb`
/// (docker-compose.yml's is).
fn mysql_scheme(url: &str) -> std::borrow::Cow<'_, str> {
    match url.strip_prefix("mariadb:") {
        Some(rest) => format!("mysql:{rest}").into(),
        None => url.into(),
    }
}

impl SqlTier {
    /// Connects to `url` with `password` (MySQL only) overriding the URL's, and applies the
    /// migrations; [`SqlTier::connect`] then backfills the digests.
    pub(super) async fn open(url: &str, password: Option<&str>) -> Result<Self> {
        let tier = if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            let mut options = MySqlConnectOptions::from_str(&mysql_scheme(url))?;
            if let Some(password) = password {
                options = options.password(password);
            }
            // One connection of its own first: the pool retries a refused connection until
            // its acquire timeout and then reports only "pool timed out"; this says why
            // (refused, unknown host, TLS, access denied) at once.
            match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
                Ok(Ok(connection)) => {
                    let _ = sqlx::Connection::close(connection).await;
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(SyncError::Unavailable(format!(
                        "SQL ({}) did not answer within {} s",
                        crate::config::redacted(url),
                        CONNECT_TIMEOUT.as_secs()
                    )))
                }
            }
            let pool = MySqlPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(CONNECT_TIMEOUT)
                .connect_with(options)
                .await?;
            migrate_mysql(&pool).await?;
            let packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
                .fetch_one(&pool)
                .await?;
            SqlTier {
                pool: Pool::MySql(pool),
                dialect: Dialect::MySql,
                // leave room for the statement text and protocol framing
                max_statement_bytes: (packet as usize).saturating_sub(64 * 1024).max(64 * 1024),
                merkle: true,
            }
        } else if url.starts_with("sqlite:") {
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a committed batch survives power loss, not only a process crash.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                // an in-memory database exists per connection: keep exactly one
                .max_connections(if in_memory { 1 } else { 4 })
                .connect_with(options)
                .await?;
            sqlx::migrate!("schemas/sql/sqlite").run(&pool).await?;
            SqlTier {
                pool: Pool::Sqlite(pool),
                dialect: Dialect::Sqlite,
                max_statement_bytes: 16 * 1024 * 1024,
                merkle: true,
            }
        } else {
            return Err(SyncError::Config(format!(
                "sql_url must start with mysql://, mariadb:// or sqlite: (got {:?})",
                crate::config::redacted(url)
            )));
        };
        Ok(tier)
    }

    /// Stops maintaining the Merkle digests (to measure their cost).
    pub fn without_merkle(mut self) -> Self {
        self.merkle = false;
        self
    }

    /// Which backend this is, for logs.
    pub fn backend(&self) -> &'static str {
        match self.dialect {
            Dialect::MySql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }
}

/// Applies the MySQL migrations under a lock that really waits. (sqlx's own lock is
/// `GET_LOCK(name, -1)`, which MariaDB answers with NULL at once instead of waiting, so two
/// engines starting together on a fresh database would both migrate and one would fail.)
async fn migrate_mysql(pool: &MySqlPool) -> Result<()> {
    const LOCK: &str = "sync_engine_migrations";
    let mut conn = pool.acquire().await?;
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 120)")
        .bind(LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if locked != Some(1) {
        return Err(SyncError::Config(
            "could not take the migration lock within 120 s (another engine is migrating?)".into(),
        ));
    }
    let mut migrator = sqlx::migrate!("schemas/sql/mysql");
    migrator.set_locking(false); // ours is held
    let migrated = migrator.run_direct(&mut *conn).await;
    let _: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
        .bind(LOCK)
        .fetch_one(&mut *conn)
        .await?;
    Ok(migrated?)
}

#[cfg(test)]
mod tests {
    use super::mysql_scheme;

    #[test]
    fn only_the_scheme_of_a_mariadb_url_is_rewritten() {
        assert_eq!(
            mysql_scheme("mariadb://sync:sync@db:3306/sync"),
            "mysql://sync:sync@db:3306/sync"
        );
        // a host called `mariadb` (docker-compose.yml's) was once rewritten to `mysql`
        assert_eq!(
            mysql_scheme("mysql://sync:sync@mariadb:3306/sync"),
            "mysql://sync:sync@mariadb:3306/sync"
        );
        assert_eq!(
            mysql_scheme("mariadb://u:p@mariadb:3306/mariadb"),
            "mysql://u:p@mariadb:3306/mariadb"
        );
    }
}
