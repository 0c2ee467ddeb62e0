//! Typed errors of the library, each classified so callers (and the sidecar) know what to do:
//! retry later, reject the input, or stop.

use thiserror::Error;

/// What a caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A backend is unreachable or busy; the same call may succeed later.
    Retryable,
    /// The input itself is wrong; retrying the same input fails again.
    Data,
    /// The engine is misconfigured or not running, or a backend refuses what no retry can
    /// change (a dropped table, a revoked grant); needs an operator.
    Fatal,
}

impl ErrorClass {
    /// The class as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Data => "data",
            ErrorClass::Fatal => "fatal",
        }
    }
}

#[derive(Debug, Error)]
pub enum SyncError {
    #[error("invalid id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },

    #[error("invalid query: {0}")]
    InvalidQuery(String),

    #[error("invalid state {state:?}: {reason}")]
    InvalidState { state: String, reason: &'static str },

    #[error("payload of {id:?} is {size} bytes, over the limit of {max} bytes")]
    PayloadTooLarge { id: String, size: usize, max: usize },

    #[error("content of {id:?} does not match its hash: stored {stored}, computed {computed}")]
    Corrupt {
        id: String,
        stored: String,
        computed: String,
    },

    #[error("the engine is not running (start() it first, or it was shut down)")]
    NotRunning,

    #[error("configuration: {0}")]
    Config(String),

    /// A backend did not answer in time (or a step is waiting on one); try again later.
    #[error("unavailable: {0}")]
    Unavailable(String),

    #[error("SQL tier: {0}")]
    Sql(#[from] sqlx::Error),

    #[error("SQL migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    #[error("Redis tier: {0}")]
    Redis(#[from] redis::RedisError),

    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl SyncError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SyncError::InvalidId { .. }
            | SyncError::InvalidState { .. }
            | SyncError::PayloadTooLarge { .. }
            | SyncError::InvalidQuery(_)
            | SyncError::Corrupt { .. } => ErrorClass::Data,
            SyncError::Redis(_) | SyncError::Unavailable(_) => ErrorClass::Retryable,
            SyncError::Kafka(e) => kafka_class(e),
            SyncError::NotRunning | SyncError::Config(_) | SyncError::Migrate(_) => {
                ErrorClass::Fatal
            }
            SyncError::Sql(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_) => ErrorClass::Retryable,
                // a certificate that does not verify, or a server without TLS when TLS is
                // required: no retry changes that
                sqlx::Error::Tls(_) => ErrorClass::Fatal,
                sqlx::Error::Database(db) => {
                    let code = db.code().unwrap_or_default();
                    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                        sqlite_class(code.parse().unwrap_or(0))
                    } else {
                        sql_state_class(&code)
                    }
                }
                _ => ErrorClass::Fatal,
            },
        }
    }
}

/// A MySQL/MariaDB error by its SQLSTATE. Worth a retry:
/// - `08…`: connection exceptions the server reports itself (too many connections, shutting
///   down, a Galera node not ready yet);
/// - `40…`: transaction rollbacks (deadlock, serialization failure);
/// - `70100`: the query or the connection was killed (by an operator, or a failover);
/// - `25006`: a read-only transaction (an old primary right after a failover);
/// - `HY000`, MySQL's catch-all: lock wait timeouts, a read-only server, a full disk. More
///   often an outage than a permanent fault, and a permanent one still stalls the sidecar
///   once it has lasted `[stall] after_ms`.
///
/// Everything else needs an operator: no such table (`42S02`), access denied (`42000`,
/// `28000`), an unknown column (`42S22`), a constraint (`23000`).
fn sql_state_class(sql_state: &str) -> ErrorClass {
    if sql_state.starts_with("08")
        || sql_state.starts_with("40")
        || matches!(sql_state, "70100" | "25006" | "HY000")
    {
        ErrorClass::Retryable
    } else {
        ErrorClass::Fatal
    }
}

/// An SQLite error by its (extended) result code: BUSY and LOCKED, whatever their extended
/// variant (the low byte is the primary code), are worth a retry; anything else — no such
/// table, read-only file, corruption — is not.
fn sqlite_class(code: i32) -> ErrorClass {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    match code & 0xff {
        SQLITE_BUSY | SQLITE_LOCKED => ErrorClass::Retryable,
        _ => ErrorClass::Fatal,
    }
}

/// Kafka errors that no retry can fix: a topic that cannot exist or be written, a record the
/// broker will never take, a client that cannot be built. Everything else (timeouts, broker
/// or coordinator moves, network) is worth another try.
fn kafka_class(e: &rdkafka::error::KafkaError) -> ErrorClass {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
    if matches!(
        e,
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) | KafkaError::Nul(_)
    ) {
        return ErrorClass::Fatal;
    }
    match e.rdkafka_error_code() {
        Some(
            Code::InvalidTopic
            | Code::UnknownTopic
            | Code::UnknownTopicOrPartition
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::GroupAuthorizationFailed
            | Code::SaslAuthenticationFailed
            | Code::Authentication
            | Code::MessageSizeTooLarge
            | Code::InvalidRecord
            | Code::Fatal,
        ) => ErrorClass::Fatal,
        _ => ErrorClass::Retryable,
    }
}

pub type Result<T, E = SyncError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_errors_are_retried_only_when_waiting_can_fix_them() {
        use ErrorClass::{Fatal, Retryable};
        for (sql_state, class) in [
            ("42S02", Fatal),     // 1146: the table was dropped
            ("42000", Fatal),     // 1142: a grant was revoked
            ("28000", Fatal),     // 1045: access denied at login
            ("42S22", Fatal),     // 1054: an unknown column
            ("23000", Fatal),     // a constraint
            ("40001", Retryable), // 1213: deadlock
            ("HY000", Retryable), // 1205: lock wait timeout; 1290: read-only server
            ("08004", Retryable), // 1040: too many connections
            ("08S01", Retryable), // 1053: server shutdown; 1047: Galera node not ready
            ("70100", Retryable), // 1927: connection killed
            ("25006", Retryable), // 1792: read-only transaction
        ] {
            assert_eq!(sql_state_class(sql_state), class, "{sql_state}");
        }
        assert_eq!(sqlite_class(5), Retryable); // SQLITE_BUSY
        assert_eq!(sqlite_class(517), Retryable); // SQLITE_BUSY_SNAPSHOT
        assert_eq!(sqlite_class(262), Retryable); // SQLITE_LOCKED_SHAREDCACHE
        assert_eq!(sqlite_class(1), Fatal); // no such table
        assert_eq!(sqlite_class(8), Fatal); // SQLITE_READONLY
    }
}
