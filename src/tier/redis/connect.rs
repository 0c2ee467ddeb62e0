//! Reaching Redis: the client a URL and [`RedisAccess`] make (TLS, credentials), how a
//! failure is classed (connection-level or an answer), the circuit breaker that turns calls
//! away while Redis is gone (see the module doc of [`super`]), and what a server can do.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{RedisError, Value};
use tracing::{info, warn};

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection-level failures in a row that open the breaker.
const TRIP_AFTER: u32 = 2;
const FIRST_OPEN: Duration = Duration::from_millis(500);
const LONGEST_OPEN: Duration = Duration::from_secs(2);

/// The Redis circuit breaker (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Breaker {
    Closed {
        failures: u32,
    },
    /// Calls fail at once until `until`; the next failure after it waits `delay` × 2.
    Open {
        until: Instant,
        delay: Duration,
    },
}

impl Breaker {
    pub(super) fn allows(&self, now: Instant) -> bool {
        match self {
            Breaker::Closed { .. } => true,
            Breaker::Open { until, .. } => now >= *until,
        }
    }

    pub(super) fn succeeded(&mut self) {
        if let Breaker::Open { .. } = self {
            info!("Redis answers again: circuit closed");
            metrics::gauge!("sync_engine_redis_circuit_open").set(0.0);
        }
        *self = Breaker::Closed { failures: 0 };
    }

    pub(super) fn failed(&mut self, now: Instant, error: &RedisError) {
        *self = match *self {
            Breaker::Closed { failures } if failures + 1 < TRIP_AFTER => Breaker::Closed {
                failures: failures + 1,
            },
            Breaker::Closed { .. } => {
                warn!(error = %error, open_for = ?FIRST_OPEN,
                    "Redis unreachable: circuit open; reads go to SQL, writes are repaired in Redis once it answers");
                metrics::gauge!("sync_engine_redis_circuit_open").set(1.0);
                Breaker::Open {
                    until: now + FIRST_OPEN,
                    delay: FIRST_OPEN,
                }
            }
            Breaker::Open { delay, .. } => {
                let delay = (delay * 2).min(LONGEST_OPEN);
                tracing::debug!(error = %error, open_for = ?delay, "Redis probe failed: circuit stays open");
                Breaker::Open {
                    until: now + delay,
                    delay,
                }
            }
        };
    }
}

pub(super) fn unavailable(why: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, why))
}

/// The connection failed (refused, reset, timed out): Redis may be away, not wrong.
pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// How to reach Redis beyond what its URL says.
#[derive(Debug, Clone, Default)]
pub struct RedisAccess {
    /// Overrides the URL's password.
    pub password: Option<String>,
    /// `rediss://`: PEM file of the CA(s) to trust besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `rediss://`: client certificate (PEM), with [`RedisAccess::key_file`].
    pub cert_file: Option<PathBuf>,
    /// `rediss://`: the client certificate's key (PEM, PKCS#8).
    pub key_file: Option<PathBuf>,
}

impl RedisAccess {
    /// A client for `url`; reads the certificate files now, so a missing one is reported at
    /// start, with its path.
    pub fn client(&self, url: &str) -> Result<redis::Client, RedisError> {
        use redis::IntoConnectionInfo;
        let mut info = url.into_connection_info()?;
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        if !tls {
            if self.ca_file.is_some() || self.cert_file.is_some() {
                return Err(RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "redis_ca_file/redis_cert_file need a rediss:// URL",
                )));
            }
            return redis::Client::open(info);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot read a certificate file",
                    format!("{}: {e}", path.display()),
                ))
            })
        };
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "redis_cert_file and redis_key_file go together",
                )))
            }
        };
        let root_cert = self.ca_file.as_ref().map(read).transpose()?;
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
    }
}

/// Whether the server a `rediss://` URL names speaks plain RESP instead of TLS: a TLS
/// handshake with a plaintext Redis does not fail, it times out (Redis waits for the end of
/// an inline command that never comes), which looks like an unreachable server. Asked only
/// after a TLS connection failed, so that the operator gets the real reason.
pub(crate) async fn answers_plaintext(url: &str) -> bool {
    use redis::IntoConnectionInfo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(info) = url.into_connection_info() else {
        return false;
    };
    let redis::ConnectionAddr::TcpTls { host, port, .. } = info.addr() else {
        return false;
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await?;
        // `+PONG`, or `-NOAUTH …`: a RESP reply, in plaintext
        Ok::<bool, std::io::Error>(matches!(answer[0], b'+' | b'-'))
    };
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, probe).await,
        Ok(Ok(true))
    )
}

/// Whether the server knows `command` (modules add commands; `COMMAND INFO` answers nil).
pub(super) async fn has_command(
    connection: &mut ConnectionManager,
    command: &str,
) -> Result<bool, RedisError> {
    let info: Vec<Value> = redis::cmd("COMMAND")
        .arg("INFO")
        .arg(command)
        .query_async(connection)
        .await?;
    Ok(info.first().is_some_and(|v| !matches!(v, Value::Nil)))
}
