//! `sync-engine`: command-line entry point.
//!
//! `run` and `dev` are the sidecar (`dev`: with no external service, in `dev.rs`); `verify`,
//! `prove` and `check-proof` the auditor's commands (`audit.rs`); `inspect` and `tail` the
//! operator's (`ops/`); logs as text or JSON lines (`logs.rs`). `demo` runs the engine on an
//! embedded SQLite file (no external service): it writes a mixed workload, shuts down, reopens
//! the file and proves every item came back byte for byte.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

mod audit;
mod dev;
mod logs;
mod ops;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;
use sync_engine::sidecar::config::PipelineConfig;
use sync_engine::{SyncEngine, SyncEngineConfig, SyncItem};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    version,
    about = "Tiered sync engine: L1 memory, L3 MySQL/SQLite, version-guarded batches"
)]
struct Cli {
    /// Logs on stderr as `text` or as JSON lines (`json`), for log shippers.
    #[arg(
        long,
        global = true,
        env = "SYNC_ENGINE_LOG_FORMAT",
        value_enum,
        default_value_t = logs::LogFormat::Text
    )]
    log_format: logs::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: consume the submit topic, write SQL and Redis, confirm, commit.
    /// SIGTERM/SIGINT drain (flush, confirm, commit) and exit 0.
    Run {
        /// Pipeline file (TOML); `SYNC_ENGINE__<SECTION>__<KEY>` variables override it.
        #[arg(long)]
        pipeline: PathBuf,
    },
    /// The sidecar with no external service: an in-process mock Kafka cluster, L3 in a local
    /// SQLite file, Redis only if a URL is given. Ctrl-C stops it cleanly.
    Dev {
        /// Also produce a sample workload and follow its confirmations to a summary.
        #[arg(long)]
        demo: bool,
        /// Records the demo produces.
        #[arg(long, default_value_t = 20_000)]
        items: usize,
        /// SQLite file for L3.
        #[arg(long, default_value = "sync-engine-dev.db")]
        db: PathBuf,
        /// Use this Redis as L2 (e.g. redis://127.0.0.1:6379).
        #[arg(long)]
        redis_url: Option<String>,
    },
    /// Recompute every partition's Merkle root from SQL and compare it with the stored
    /// digests, Redis and the newest checkpoint. Exit 0 when all agree, 2 on divergence.
    Verify {
        /// Pipeline file, as for `run`.
        #[arg(long)]
        pipeline: PathBuf,
        /// Rewrite Redis from SQL for the divergent ids, then verify again.
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a JSON inclusion proof of an item in its partition's state root.
    Prove {
        #[arg(long)]
        pipeline: PathBuf,
        id: String,
    },
    /// Check a proof printed by `prove` (from a file or stdin); exit 1 when it fails.
    CheckProof {
        /// The proof's file (default: stdin).
        file: Option<PathBuf>,
        /// Also require this root (e.g. a checkpoint's state_root).
        #[arg(long)]
        root: Option<String>,
    },
    /// What SQL and Redis hold for each id, and whether they agree. Exit 0 when all agree
    /// (an id neither tier has agrees), 2 when any differs, 1 on errors.
    Inspect {
        /// Pipeline file, as for `run`.
        #[arg(long)]
        pipeline: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Follow the output topic (confirmations, checkpoints) and the DLQ topic, one line per
    /// event, with a consumer of its own (the sidecar's group is never touched). Ctrl-C stops.
    Tail {
        /// Pipeline file, as for `run` (`[kafka.client]` and `[kafka.consumer]` apply: TLS, SASL).
        #[arg(long)]
        pipeline: PathBuf,
        /// One JSON object per line: the event as published, and where it was read.
        #[arg(long)]
        json: bool,
        /// Start at the beginning of the topics instead of their end.
        #[arg(long)]
        from_beginning: bool,
        /// Only the DLQ topic.
        #[arg(long, conflicts_with = "output_only")]
        dlq_only: bool,
        /// Only the output topic.
        #[arg(long)]
        output_only: bool,
        /// Stop after this many events.
        #[arg(long)]
        max: Option<u64>,
    },
    /// Write a sample workload to SQLite (or `sql_url` from the config), restart, verify it.
    Demo {
        /// Engine config (TOML); `SYNC_ENGINE__*` variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// SQLite file used when the config names no `sql_url`.
        #[arg(long, default_value = "sync-engine-demo.db")]
        db: PathBuf,
        /// How many items to write.
        #[arg(long, default_value_t = 20_000)]
        items: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (traces, log_writer) = logs::init(cli.log_format)?;
    let result = dispatch(cli.command, log_writer).await;
    let json_logs = cli.log_format == logs::LogFormat::Json;
    if let (Err(e), true) = (&result, json_logs) {
        // a log shipper reads stderr: the reason goes there as a JSON line too
        tracing::error!(error = format!("{e:#}"), "sync-engine failed");
    }
    if let Some(provider) = traces {
        // export what is still buffered, also before a non-zero exit
        let _ = provider.shutdown();
    }
    match result {
        Ok(0) => Ok(()),
        Ok(code) => std::process::exit(code),
        Err(_) if json_logs => std::process::exit(1),
        Err(e) => Err(e),
    }
}

/// Runs the command; `Ok(code)` is the exit code (0: success).
async fn dispatch(command: Command, log_writer: logs::LogWriter) -> anyhow::Result<i32> {
    match command {
        Command::Run { pipeline } => run(pipeline).await,
        Command::Dev {
            demo,
            items,
            db,
            redis_url,
        } => dev::dev(
            dev::DevOptions {
                demo,
                items,
                db,
                redis_url,
            },
            stop_on_signal(),
            log_writer,
        )
        .await
        .map(|()| 0),
        Command::Demo { config, db, items } => demo(config, db, items).await.map(|()| 0),
        Command::Verify {
            pipeline,
            repair,
            json,
        } => exit_with(audit::verify(&pipeline, repair, json).await?),
        Command::Prove { pipeline, id } => exit_with(audit::prove(&pipeline, &id).await?),
        Command::CheckProof { file, root } => {
            exit_with(audit::check_proof(file.as_ref(), root.as_deref())?)
        }
        Command::Inspect {
            pipeline,
            json,
            ids,
        } => exit_with(ops::inspect::inspect(&pipeline, &ids, json).await?),
        Command::Tail {
            pipeline,
            json,
            from_beginning,
            dlq_only,
            output_only,
            max,
        } => {
            let topics = match (dlq_only, output_only) {
                (true, _) => ops::tail::Topics::DlqOnly,
                (_, true) => ops::tail::Topics::OutputOnly,
                _ => ops::tail::Topics::Both,
            };
            let options = ops::tail::TailOptions {
                pipeline,
                json,
                from_beginning,
                topics,
                max,
            };
            ops::tail::tail(options, stop_on_signal()).await.map(|()| 0)
        }
    }
}

/// The process's exit code, set once `main` has flushed what it must.
fn exit_with(code: i32) -> anyhow::Result<i32> {
    Ok(code)
}

async fn run(pipeline: PathBuf) -> anyhow::Result<i32> {
    let config = PipelineConfig::load(&pipeline)?;
    let summary = sync_engine::sidecar::run(config, Some(pipeline), stop_on_signal()).await?;
    if summary.stalled {
        return Ok(sync_engine::sidecar::EXIT_STALLED);
    }
    println!(
        "stopped cleanly: {} records written, {} to the DLQ, {} confirmations",
        summary.written, summary.dlq, summary.confirmations
    );
    Ok(0)
}

/// A flag that SIGTERM or SIGINT sets.
fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        flag.store(true, Ordering::SeqCst);
    });
    stop
}

async fn start(config: &SyncEngineConfig) -> anyhow::Result<SyncEngine> {
    let (_tx, rx) = watch::channel(config.clone());
    let mut engine = SyncEngine::new(config.clone(), rx);
    engine.start().await.context("starting the engine")?;
    Ok(engine)
}

/// The demo's item `i`: JSON for most, binary with NUL bytes for every 7th.
fn sample(run: u64, i: usize) -> SyncItem {
    let id = format!("demo:{run}:{i:06}");
    if i % 7 == 0 {
        SyncItem::new(id, vec![0, (i % 251) as u8, 0, 0xFF, b'x']).with_state("blob")
    } else {
        let state = if i % 3 == 0 { "delta" } else { "base" };
        SyncItem::from_json(
            id,
            json!({"n": i, "name": format!("item {i}"), "tags": ["a", "b"]}),
        )
        .with_state(state)
    }
}

async fn demo(config: Option<PathBuf>, db: PathBuf, items: usize) -> anyhow::Result<()> {
    let mut config = SyncEngineConfig::load(config.as_deref())?;
    if config.sql_url.is_none() {
        config.sql_url = Some(format!("sqlite://{}?mode=rwc", db.display()));
    }
    println!(
        "L3: {}",
        sync_engine::config::redacted(config.sql_url.as_deref().unwrap_or_default())
    );
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();

    let engine = start(&config).await?;
    let started = Instant::now();
    for i in 0..items {
        engine.submit(sample(run, i)).await?;
    }
    for i in (0..items).step_by(10) {
        engine.delete(&format!("demo:{run}:{i:06}")).await?;
    }
    engine.shutdown().await;
    let elapsed = started.elapsed();
    println!(
        "wrote {items} items (+{} deletes) durably in {:.2?}: {:.0} items/s",
        items.div_ceil(10),
        elapsed,
        items as f64 / elapsed.as_secs_f64()
    );

    let engine = start(&config).await?;
    let prefix = format!("demo:{run}:");
    let mut verified = 0;
    for i in 0..items {
        let id = format!("demo:{run}:{i:06}");
        let found = engine.get_verified(&id).await?;
        match (i % 10 == 0, found) {
            (true, None) => {}
            (false, Some(item)) if item.content() == sample(run, i).content() => verified += 1,
            (deleted, found) => bail!("{id}: expected deleted={deleted}, found {found:?}"),
        }
    }
    let count = engine.count_prefix(&prefix).await?;
    let deltas = engine.count_by_state("delta").await?;
    engine.shutdown().await;
    println!("after restart: {verified} items verified byte-for-byte, {count} under {prefix:?}, {deltas} in state \"delta\" (all runs)");
    if count != verified as u64 {
        bail!("prefix count {count} != verified {verified}");
    }
    println!("OK");
    Ok(())
}
