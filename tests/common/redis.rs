//! The Redis servers scripts/test starts (L2): plain Redis, where items are hashes, and Redis
//! Stack, where JSON items are RedisJSON documents. Each test gets a key prefix of its own, so
//! tests share a server without seeing each other's keys.
#![allow(dead_code)] // each test binary uses its own subset

use sync_engine::SyncEngineConfig;

use super::Backend;

/// Plain Redis, no modules.
pub const PLAIN_ENV: &str = "SYNC_ENGINE_TEST_REDIS_URL";
/// Redis Stack (RedisJSON + RediSearch).
pub const STACK_ENV: &str = "SYNC_ENGINE_TEST_REDIS_STACK_URL";

/// The URL of the server `var` names (`PLAIN_ENV` or `STACK_ENV`); without the variable, a
/// container's (`common::containers`), or the test fails.
pub fn url(var: &str) -> String {
    super::containers::url_or_container(var, |s| {
        if var == STACK_ENV {
            &s.redis_stack_url
        } else {
            &s.redis_url
        }
    })
}

pub struct Redis {
    pub url: String,
    /// Unique per test: `<test binary><pid>:<nanos>:`.
    pub prefix: String,
    /// Redis Stack: JSON items are RedisJSON documents.
    pub stack: bool,
}

impl Redis {
    pub fn from_env(var: &str) -> Redis {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Redis {
            url: url(var),
            prefix: format!(
                "{}{}:{nanos}:",
                env!("CARGO_CRATE_NAME"),
                std::process::id()
            ),
            stack: var == STACK_ENV,
        }
    }

    /// A connection of its own, for reading and writing keys behind the engine's back.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// `sql`'s configuration with this server and prefix as L2.
    pub fn config(&self, sql: &Backend) -> SyncEngineConfig {
        SyncEngineConfig {
            redis_url: Some(self.url.clone()),
            redis_prefix: Some(self.prefix.clone()),
            ..sql.config()
        }
    }

    /// The key of item `id`.
    pub fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }
}

/// Runs an async scenario `fn(Redis)` on plain Redis and on Redis Stack, as two tests.
#[macro_export]
macro_rules! on_both_redis {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                use $crate::common::redis::{Redis, PLAIN_ENV, STACK_ENV};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn plain() {
                    super::$scenario(Redis::from_env(PLAIN_ENV)).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn stack() {
                    super::$scenario(Redis::from_env(STACK_ENV)).await
                }
            }
        )*
    };
}
