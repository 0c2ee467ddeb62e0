//! The write path, top-down. One task owns the ordered queue:
//!
//! ```text
//! submit/delete ─► L1 pending ─► queue ─► Batch (newest op per id) ─► L3 transaction ─► L1 settle
//!                                  └─ set_state / delete_prefix / delete_by_state / flush:
//!                                     flush the batch first, then run alone, then reply
//! ```
//!
//! Because one task applies everything in queue order, a delete is never overtaken by an
//! earlier put, and a range operation sees every write submitted before it. A failing L3 is
//! retried with backoff, never skipped: the batch stays pending (and submit waits on the
//! pending budget) until it commits.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::batch::{Batch, Entry, Limits};
use crate::config::SyncEngineConfig;
use crate::error::Result;
use crate::l1::{Settled, L1};
use crate::tier::{DurableTier, Op};

pub(crate) enum Command {
    Write(Entry),
    /// Replies once everything queued before it is durable.
    Flush(oneshot::Sender<()>),
    SetState {
        id: String,
        state: String,
        version: u64,
        reply: oneshot::Sender<Result<bool>>,
    },
    DeletePrefix {
        prefix: String,
        version: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
    DeleteByState {
        state: String,
        version: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
}

pub(crate) struct Writer {
    pub queue: mpsc::UnboundedReceiver<Command>,
    pub tier: Arc<dyn DurableTier>,
    pub l1: Arc<L1>,
    /// Batch limits are read from here before every step, so they can change at run time.
    pub config: watch::Receiver<SyncEngineConfig>,
}

const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(5);

impl Writer {
    /// Runs until every sender is gone, then flushes what is left and returns.
    pub(crate) async fn run(mut self) {
        let mut batch = Batch::default();
        loop {
            let limits = Limits::from(&*self.config.borrow());
            let command = match batch.deadline(&limits) {
                None => self.queue.recv().await,
                Some(deadline) => tokio::select! {
                    biased;
                    command = self.queue.recv() => command,
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        self.flush(&mut batch).await;
                        continue;
                    }
                },
            };
            match command {
                None => {
                    self.flush(&mut batch).await;
                    return;
                }
                Some(Command::Write(entry)) => {
                    batch.push(entry);
                    if batch.is_full(&limits) {
                        self.flush(&mut batch).await;
                    }
                }
                Some(Command::Flush(reply)) => {
                    self.flush(&mut batch).await;
                    let _ = reply.send(());
                }
                Some(Command::SetState {
                    id,
                    state,
                    version,
                    reply,
                }) => {
                    self.flush(&mut batch).await;
                    let result = self.tier.set_state(&id, &state, version).await;
                    // a cache-only item lives in L1 alone; restate it there too
                    let cached = self.l1.restate(&id, &state, version);
                    let _ = reply.send(result.map(|in_l3| in_l3 || cached));
                }
                Some(Command::DeletePrefix {
                    prefix,
                    version,
                    reply,
                }) => {
                    self.flush(&mut batch).await;
                    let result = self.tier.delete_prefix(&prefix, version).await;
                    self.l1
                        .invalidate_where(version, |item| item.id().starts_with(&prefix));
                    let _ = reply.send(result);
                }
                Some(Command::DeleteByState {
                    state,
                    version,
                    reply,
                }) => {
                    self.flush(&mut batch).await;
                    let result = self.tier.delete_by_state(&state, version).await;
                    self.l1
                        .invalidate_where(version, |item| item.state() == state);
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Makes the batch durable (retrying until it is), then settles L1.
    async fn flush(&mut self, batch: &mut Batch) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len();
        let entries = batch.take();
        let (durable, cache_only): (Vec<&Entry>, Vec<&Entry>) = entries.iter().partition(|e| e.sql);
        let ops: Vec<Op> = durable.iter().map(|e| e.op.clone()).collect();
        let mut delay = FIRST_RETRY;
        let applied = loop {
            match self.tier.apply(&ops).await {
                Ok(applied) => break applied,
                Err(e) => {
                    warn!(error = %e, class = ?e.class(), items = ops.len(), retry_in = ?delay,
                        "L3 batch failed; it stays pending and is retried");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(LAST_RETRY);
                }
            }
        };
        let settled = durable
            .iter()
            .zip(applied)
            .chain(cache_only.iter().map(|e| (e, true)))
            .map(|(entry, applied)| Settled {
                id: entry.op.id(),
                version: entry.op.version(),
                item: match (&entry.op, applied) {
                    (Op::Put(item), true) => Some((item, entry.ttl)),
                    _ => None,
                },
            });
        self.l1.settle(settled);
        debug!(items = count, "batch committed");
    }
}
