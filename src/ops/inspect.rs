//! `sync-engine inspect --pipeline FILE ID...`: what SQL and Redis hold for each id, and
//! whether they agree ([`sync_engine::inspect`]). Exit 0 when every id agrees (an id neither
//! tier has agrees), 2 when any differs, 1 on errors, which name the failing service by its
//! URL with the password masked.

use std::path::Path;

use serde_json::json;
use sync_engine::config::redacted;
use sync_engine::inspect::{Inspection, Inspector, ItemCopy, RedisView, SqlView, Status};
use sync_engine::sidecar::config::PipelineConfig;
use sync_engine::{SyncEngineConfig, SyncError};

use crate::audit::DIVERGENT;

pub async fn inspect(pipeline: &Path, ids: &[String], json: bool) -> anyhow::Result<i32> {
    let config = PipelineConfig::load(pipeline)?;
    let engine = &config.engine;
    let inspector = Inspector::connect(engine)
        .await
        .map_err(|e| naming_service(e, engine))?;
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        let inspection = inspector.inspect(id).await;
        found.push(inspection.map_err(|e| naming_service(e, engine))?);
    }
    let differ = found.iter().filter(|i| i.status == Status::Differ).count();
    if json {
        let out = json!({"ok": differ == 0, "items": found});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for inspection in &found {
            print(inspection);
        }
        let absent = found.iter().filter(|i| i.status == Status::Absent).count();
        println!(
            "{} ids: {} agree, {absent} absent from both, {differ} differ",
            found.len(),
            found.len() - absent - differ
        );
    }
    Ok(if differ > 0 { DIVERGENT } else { 0 })
}

/// `e`, said to come from SQL or Redis as the configuration names them.
fn naming_service(e: SyncError, config: &SyncEngineConfig) -> anyhow::Error {
    let url = |url: &Option<String>| redacted(url.as_deref().unwrap_or_default());
    match e {
        SyncError::Sql(_) | SyncError::Migrate(_) => {
            anyhow::anyhow!("SQL at {}: {e}", url(&config.sql_url))
        }
        SyncError::Redis(_) => anyhow::anyhow!("Redis at {}: {e}", url(&config.redis_url)),
        e => e.into(),
    }
}

fn print(i: &Inspection) {
    let status = match i.status {
        Status::Agree => "agree",
        Status::Absent => "absent from both tiers",
        Status::Differ => "DIFFER",
    };
    println!("{}: {status}", i.id);
    let sql_hash = match &i.sql {
        SqlView::Live {
            copy,
            source,
            offset,
            redis_ttl_ms,
            updated_at,
        } => {
            let route = match redis_ttl_ms {
                None => "not routed to Redis".to_string(),
                Some(0) => "cached in Redis without TTL".to_string(),
                Some(ms) => format!("cached in Redis with a TTL of {} s", ms / 1000),
            };
            println!(
                "  sql:   {}, version {} ({}), {route}, updated {updated_at}",
                describe(copy),
                copy.version,
                origin(source, *offset)
            );
            println!("         {}", copy.payload_preview);
            Some(&copy.content_hash)
        }
        SqlView::Deleted {
            source,
            offset,
            version,
            deleted_at,
        } => {
            println!(
                "  sql:   deleted at version {version} ({}), {deleted_at}",
                origin(source, *offset)
            );
            None
        }
        SqlView::Absent => {
            println!("  sql:   absent");
            None
        }
    };
    match &i.redis {
        Some(RedisView::Item {
            copy,
            key_type,
            ttl_ms,
        }) => {
            let ttl = ttl_ms.map_or("no TTL".to_string(), |ms| format!("TTL {} s", ms / 1000));
            println!(
                "  redis: {key_type}, {}, version {}, {ttl}",
                describe(copy),
                copy.version
            );
            if sql_hash != Some(&copy.content_hash) {
                println!("         {}", copy.payload_preview);
            }
        }
        Some(RedisView::Unreadable { key_type, error }) => {
            println!("  redis: unreadable {key_type} key: {error}")
        }
        Some(RedisView::Absent) => println!("  redis: absent"),
        None => println!("  redis: not configured"),
    }
    if i.redis_repair_pending {
        println!("  a Redis repair is pending: the sidecar rewrites this id from SQL");
    }
    for d in &i.differences {
        let tier = serde_json::to_value(d.tier).unwrap_or_default();
        let kind = serde_json::to_value(d.kind).unwrap_or_default();
        println!(
            "  differs: {} {}: {}",
            tier.as_str().unwrap_or("?"),
            kind.as_str().unwrap_or("?"),
            d.detail
        );
    }
}

fn describe(copy: &ItemCopy) -> String {
    format!(
        "{} {} bytes, sha256 {}{}, state {:?}",
        copy.content_type,
        copy.bytes,
        copy.content_hash,
        if copy.payload_ok {
            ""
        } else {
            " (NOT the payload's hash)"
        },
        copy.state
    )
}

/// Where a write came from: a sidecar partition's offset, or the library.
fn origin(source: &str, offset: Option<u64>) -> String {
    match offset {
        Some(offset) => format!("{source} offset {offset}"),
        None => source.to_string(),
    }
}
