//! Start-up wiring: what [`SyncEngine::start`] connects and in which order.
//!
//! 1. The durable tier: the one given to `with_tier`, else SQL from `sql_url` (migrations
//!    applied), else an in-memory tier (with a warning: nothing survives the process).
//! 2. Its limits: `max_payload_bytes` is lowered to what the SQL server accepts, and the
//!    version clock starts above the highest version stored.
//! 3. L2: Redis from `redis_url`. Redis being away at start is not an error (writes and reads
//!    go on without it and it is repaired when it answers); Redis answering and refusing us
//!    (password, ACL, TLS, plaintext on a TLS URL) is, because an operator must act.
//! 4. The Redis repair marks SQL holds (ids a previous process could not write to Redis) are
//!    read into the dirty set, so no read reaches a stale Redis copy before its repair.
//! 5. The writer task, which owns the queue from here on.

use std::sync::Arc;

use tracing::{info, warn};

use super::{EngineState, Sequencer, SyncEngine};
use crate::config::{redacted, SyncEngineConfig};
use crate::error::{Result, SyncError};
use crate::filter::L3Filter;
use crate::repair::Repairs;
use crate::tier::cache::Cache;
use crate::tier::memory::MemoryTier;
use crate::tier::redis::{answers_plaintext, is_connection_error, RedisAccess, RedisTier};
use crate::tier::sql::SqlTier;
use crate::tier::DurableTier;
use crate::writer::{Writer, WriterParts};

impl SyncEngine {
    /// Connects the durable tier (applying migrations) and starts the writer.
    pub async fn start(&mut self) -> Result<()> {
        if *self.state.borrow() != EngineState::Created {
            return Err(SyncError::Config("start() may be called once".into()));
        }
        self.config.validate()?;
        let tier = match &self.tier {
            Some(tier) => tier.clone(),
            None => durable_tier(&self.config).await?,
        };
        if let Some(limit) = tier.payload_limit().filter(|l| *l < self.max_payload_bytes) {
            warn!(
                configured = self.max_payload_bytes,
                limit,
                "max_payload_bytes lowered to what the SQL server accepts (max_allowed_packet)"
            );
            self.max_payload_bytes = limit;
        }
        let clock = tier.max_version().await?;
        if let Some(url) = &self.config.redis_url {
            let redis = Arc::new(connect_redis(&self.config, url).await?);
            self.cache = Some(redis.clone() as Arc<dyn Cache>);
            self.redis = Some(redis);
        }
        let mut repairs = Repairs::new(self.dirty.clone());
        if self.cache.is_some() {
            repairs.load(&*tier).await?;
        }
        let filter = self.config.l3_filter.then(|| Arc::new(L3Filter::new(1024)));
        let (writer, queue) = Writer::new(WriterParts {
            tier: tier.clone(),
            cache: self.cache.clone(),
            l1: self.l1.clone(),
            filter: filter.clone(),
            config: self.config_rx.clone(),
            horizons: self.horizons.clone(),
            repairs,
            failure: self.failure.clone(),
        });
        *self.writer.lock().expect("writer lock") = Some(tokio::spawn(writer.run()));
        *self.sequencer.lock().expect("sequencer lock") = Sequencer {
            clock,
            queue: Some(queue),
        };
        self.tier = Some(tier);
        self.filter = filter;
        self.state.send_replace(EngineState::Running);
        Ok(())
    }
}

/// Step 1: SQL from `sql_url`, else memory.
async fn durable_tier(config: &SyncEngineConfig) -> Result<Arc<dyn DurableTier>> {
    let Some(url) = &config.sql_url else {
        warn!("no sql_url: L3 is in memory and nothing survives this process");
        return Ok(Arc::new(MemoryTier::new()));
    };
    let mut sql = SqlTier::connect_with_password(url, config.sql_password.as_deref()).await?;
    info!(backend = sql.backend(), "L3 connected, migrations applied");
    if !config.merkle {
        warn!("merkle = false: state roots are not maintained");
        sql = sql.without_merkle();
    }
    Ok(Arc::new(sql))
}

/// Step 3: Redis from `redis_url`, connected now if it answers.
async fn connect_redis(config: &SyncEngineConfig, url: &str) -> Result<RedisTier> {
    let prefix = config.redis_prefix.as_deref().unwrap_or_default();
    let access = RedisAccess {
        password: config.redis_password.clone(),
        ca_file: config.redis_ca_file.clone(),
        cert_file: config.redis_cert_file.clone(),
        key_file: config.redis_key_file.clone(),
    };
    let redis = RedisTier::with_access(url, prefix, &access)
        .map_err(|e| SyncError::Config(format!("redis_url: {e}")))?;
    match redis.connect().await {
        Ok(()) => {}
        // away: writes and reads go on without it, and it is repaired on return
        Err(e) if url.starts_with("rediss:") && answers_plaintext(url).await => {
            return Err(SyncError::Config(format!(
                "Redis ({}) answers in plaintext, not TLS: use redis:// or its TLS port ({e})",
                redacted(url)
            )))
        }
        Err(e) if is_connection_error(&e) => {
            warn!(error = %e, "L2 Redis unreachable at start; writes and reads go on without it")
        }
        // it answered, and refused us (password, ACL, TLS): an operator must act
        Err(e) => {
            return Err(SyncError::Config(format!(
                "Redis ({}) refused the connection: {e}",
                redacted(url)
            )))
        }
    }
    Ok(redis)
}
