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
    /// The engine is misconfigured or not running; needs an operator.
    Fatal,
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
                // Deadlocks, lock wait timeouts and "database is locked" are worth a retry;
                // constraint or syntax errors are not.
                sqlx::Error::Database(db) => match db.code().as_deref() {
                    Some("40001") | Some("HY000") | Some("5") | Some("6") => ErrorClass::Retryable,
                    _ => ErrorClass::Fatal,
                },
                _ => ErrorClass::Fatal,
            },
        }
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
