//! Per-item routing: which tiers receive an item, its cache TTL and an optional state override.

use std::time::Duration;

/// How long an item lives in the cache tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheTtl {
    Minute,
    /// 5 minutes.
    Short,
    /// 15 minutes.
    Medium,
    Hour,
    Day,
    Week,
    /// Any number of seconds.
    Custom(u64),
}

impl CacheTtl {
    pub fn as_duration(self) -> Duration {
        Duration::from_secs(match self {
            CacheTtl::Minute => 60,
            CacheTtl::Short => 5 * 60,
            CacheTtl::Medium => 15 * 60,
            CacheTtl::Hour => 3600,
            CacheTtl::Day => 86_400,
            CacheTtl::Week => 7 * 86_400,
            CacheTtl::Custom(secs) => secs,
        })
    }
}

/// Where an item goes. The default is both Redis and SQL, no TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitOptions {
    /// Write to the Redis tier.
    pub redis: bool,
    /// TTL of the Redis copy (and of the L1 copy of a cache-only item).
    pub redis_ttl: Option<CacheTtl>,
    /// Write to the SQL tier (ground truth). Without it an item is a cache entry only.
    pub sql: bool,
    /// Replaces the item's own state when set.
    pub state: Option<String>,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        SubmitOptions {
            redis: true,
            redis_ttl: None,
            sql: true,
            state: None,
        }
    }
}

impl SubmitOptions {
    /// Cache only (Redis), expiring after `ttl`. Never reaches SQL.
    pub fn cache(ttl: CacheTtl) -> Self {
        SubmitOptions {
            redis: true,
            redis_ttl: Some(ttl),
            sql: false,
            state: None,
        }
    }

    /// SQL only; skips Redis.
    pub fn durable() -> Self {
        SubmitOptions {
            redis: false,
            redis_ttl: None,
            sql: true,
            state: None,
        }
    }

    pub fn with_state(mut self, state: impl Into<String>) -> Self {
        self.state = Some(state.into());
        self
    }
}
