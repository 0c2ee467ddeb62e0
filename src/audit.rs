//! `verify`, `prove` and `check-proof`: the auditor's commands.
//!
//! `verify` recomputes every partition's root from SQL, holds the stored digests, Redis and
//! the newest checkpoint on the output topic against it, prints one line per partition and
//! every divergent id with the tier to blame, and exits 2 on any divergence (1 on errors).
//! A broker it cannot reach skips the checkpoint comparison (said in the output), not the
//! verification of SQL and Redis.
//! `--repair` makes Redis equal SQL for those ids and verifies again.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sync_engine::merkle::{PartitionDigest, Proof};
use sync_engine::sidecar::checkpoints;
use sync_engine::sidecar::config::PipelineConfig;
use sync_engine::verify::VerifyReport;
use sync_engine::SyncEngine;

/// Exit status of `verify` when it finds a divergence.
pub const DIVERGENT: i32 = 2;

/// How a partition's newest checkpoint compares with SQL now.
#[derive(Debug, Serialize)]
struct CheckpointCheck {
    partition: String,
    offset: i64,
    state_root: String,
    /// `match`, `moved_on` (SQL holds later writes: not comparable) or `divergent`.
    status: &'static str,
}

/// The checkpoint comparison: one check per partition, or why it was skipped.
struct Checks {
    checks: Vec<CheckpointCheck>,
    skipped: Option<String>,
}

/// The pipeline's engine, for reading: no L3 filter (it would scan SQL for nothing).
async fn engine(config: &PipelineConfig) -> anyhow::Result<SyncEngine> {
    let mut engine = config.engine.clone();
    engine.l3_filter = false;
    crate::start(&engine).await
}

pub async fn verify(pipeline: &Path, repair: bool, json: bool) -> anyhow::Result<i32> {
    let config = PipelineConfig::load(pipeline)?;
    let engine = engine(&config).await?;
    let mut report = run(&engine, json).await?;
    let mut checks = against_checkpoints(&engine, &config, &report).await?;
    print(&report, &checks, json)?;
    let mut ok = is_ok(&report, &checks.checks);
    if repair && !ok {
        let summary = engine.repair(&report).await?;
        eprintln!(
            "repair: {} Redis items rewritten, {} deleted, {} mirrors reset, digests re-anchored for {:?}; verifying again",
            summary.redis_rewritten,
            summary.redis_deleted,
            summary.mirrors_reset,
            summary.digests_reanchored
        );
        report = run(&engine, json).await?;
        checks = against_checkpoints(&engine, &config, &report).await?;
        print(&report, &checks, json)?;
        ok = is_ok(&report, &checks.checks);
    }
    engine.shutdown().await;
    Ok(if ok { 0 } else { DIVERGENT })
}

fn is_ok(report: &VerifyReport, checks: &[CheckpointCheck]) -> bool {
    report.is_ok() && checks.iter().all(|c| c.status != "divergent")
}

async fn run(engine: &SyncEngine, quiet: bool) -> anyhow::Result<VerifyReport> {
    let total = engine.count_prefix("").await?;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("verify {bar:40} {pos}/{len} rows ({per_sec}, {eta})")
            .expect("template"),
    );
    let started = std::time::Instant::now();
    let report = engine.verify(&|rows| bar.set_position(rows)).await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "verified {} rows in {secs:.2} s ({:.0} rows/s)",
        report.rows,
        report.rows as f64 / secs.max(1e-9)
    );
    Ok(report)
}

async fn against_checkpoints(
    engine: &SyncEngine,
    config: &PipelineConfig,
    report: &VerifyReport,
) -> anyhow::Result<Checks> {
    // sidecar partitions are `<topic>/<partition>`; library writes (`local`) have none.
    // (A partition whose items were all deleted in the batches that wrote them has no rows
    // and no digests; its checkpoints are still compared, with the empty root.)
    let wanted: BTreeSet<String> = report
        .partitions
        .iter()
        .map(|p| p.partition.clone())
        .filter(|p| p.contains('/'))
        .collect();
    let latest = match tokio::task::block_in_place(|| checkpoints::latest(config, &wanted)) {
        Ok(latest) => latest,
        Err(e) => {
            let reason = format!(
                "the output topic {} could not be read ({e})",
                config.kafka.output_topic
            );
            eprintln!("checkpoints skipped: {reason}; SQL and Redis are verified all the same");
            return Ok(Checks {
                checks: Vec::new(),
                skipped: Some(reason),
            });
        }
    };
    let mut checks = Vec::new();
    for (partition, checkpoint) in latest {
        let computed = report.partition(&partition).map_or_else(
            || hex::encode(PartitionDigest::default().root()),
            |p| p.computed.root.clone(),
        );
        let sql_version = engine.source_version(&partition).await?.unwrap_or(0);
        let status = if computed == checkpoint.state_root {
            "match"
        } else if sql_version > checkpoint.offset as u64 + 1 {
            "moved_on"
        } else {
            "divergent"
        };
        checks.push(CheckpointCheck {
            partition,
            offset: checkpoint.offset,
            state_root: checkpoint.state_root,
            status,
        });
    }
    Ok(Checks {
        checks,
        skipped: None,
    })
}

fn print(report: &VerifyReport, all: &Checks, json: bool) -> anyhow::Result<()> {
    let checks = &all.checks;
    if json {
        let out = serde_json::json!({
            "ok": is_ok(report, checks),
            "report": report,
            "checkpoints": checks,
            "checkpoints_skipped": all.skipped,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for p in &report.partitions {
        let check = checks.iter().find(|c| c.partition == p.partition);
        let checkpoint = check.map_or(String::new(), |c| {
            format!("; checkpoint @{}: {}", c.offset, c.status)
        });
        if p.is_ok() && check.is_none_or(|c| c.status != "divergent") {
            println!(
                "{:<24} OK          root {} items {}{checkpoint}",
                p.partition, p.computed.root, p.computed.item_count
            );
            continue;
        }
        println!(
            "{:<24} DIVERGENT   rows {} ({} items), stored digests {} ({} items){checkpoint}",
            p.partition, p.computed.root, p.computed.item_count, p.stored.root, p.stored.item_count
        );
        if !p.stored_buckets_diverging.is_empty() {
            println!(
                "    SQL rows differ from their committed digests in buckets {:?}",
                p.stored_buckets_diverging
            );
        }
        if let Some(buckets) = p
            .mirror_buckets_diverging
            .as_ref()
            .filter(|b| !b.is_empty())
        {
            println!("    Redis mirror differs in buckets {buckets:?}");
        }
    }
    for c in checks
        .iter()
        .filter(|c| report.partition(&c.partition).is_none())
    {
        println!(
            "{:<24} {:<11} no rows; checkpoint @{}: {}",
            c.partition,
            if c.status == "divergent" {
                "DIVERGENT"
            } else {
                "OK"
            },
            c.offset,
            c.status
        );
    }
    for d in &report.divergences {
        println!(
            "  {:<40} {:<6} {:<20} {}",
            d.id,
            serde_json::to_value(d.tier)?.as_str().unwrap_or("?"),
            serde_json::to_value(d.kind)?.as_str().unwrap_or("?"),
            d.partition.as_deref().unwrap_or("-")
        );
    }
    if let Some(reason) = &all.skipped {
        println!("checkpoints: skipped, {reason}");
    }
    println!(
        "{}: {} partitions, {} rows, {} Redis keys scanned, {} divergent ids",
        if is_ok(report, checks) {
            "OK"
        } else {
            "DIVERGENT"
        },
        report.partitions.len(),
        report.rows,
        report
            .redis_keys_scanned
            .map_or("no".to_string(), |n| n.to_string()),
        report.divergences.len()
    );
    Ok(())
}

pub async fn prove(pipeline: &Path, id: &str) -> anyhow::Result<i32> {
    let config = PipelineConfig::load(pipeline)?;
    let engine = engine(&config).await?;
    let proof = engine.prove(id).await?;
    engine.shutdown().await;
    match proof {
        Some(proof) => {
            println!("{}", serde_json::to_string_pretty(&proof)?);
            Ok(0)
        }
        None => {
            eprintln!("{id:?} is not in SQL");
            Ok(1)
        }
    }
}

/// Checks a proof (from `file`, or stdin), against `root` when given.
pub fn check_proof(file: Option<&PathBuf>, root: Option<&str>) -> anyhow::Result<i32> {
    let mut text = String::new();
    match file {
        Some(path) => text = std::fs::read_to_string(path)?,
        None => {
            std::io::stdin().read_to_string(&mut text)?;
        }
    }
    let proof: Proof = serde_json::from_str(&text).context("not a sync-engine proof")?;
    if let Err(e) = proof.check() {
        println!("INVALID: {e}");
        return Ok(1);
    }
    if let Some(root) = root.filter(|r| *r != proof.root) {
        println!("INVALID: the proof is for root {}, not {root}", proof.root);
        return Ok(1);
    }
    println!(
        "OK: ({}, {}) is in partition {} at root {}",
        proof.id, proof.content_hash, proof.partition, proof.root
    );
    Ok(0)
}
