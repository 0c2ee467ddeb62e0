//! An existence filter in front of L3, so that reads of ids SQL certainly does not hold skip
//! the SQL round trip.
//!
//! It answers "maybe" or "certainly absent", and only "absent" saves anything, so it must never
//! say "absent" for an id that is live in SQL. Ids come and go: a Bloom filter cannot forget, so
//! deleted ids would fill it until it says "maybe" to everything. A cuckoo filter keeps a
//! one-byte fingerprint per id in one of two buckets, and can delete it again.
//!
//! # The contract: one insert per birth, one remove per death
//!
//! A cuckoo filter cannot tell whose fingerprint it holds. The alternate bucket is the first one
//! XOR a hash of the fingerprint, so ids with the same fingerprint that share one bucket share
//! both, and `delete` takes any one of their copies. A delete for an id that never added its copy
//! would take a colliding live id's copy, a false negative. Hence the contract: the engine calls
//! [`L3Filter::insert`] exactly once when an id becomes live in SQL (it was not live before) and
//! [`L3Filter::remove`] exactly once when a live id stops being live, both after the commit. Then
//! each fingerprint class holds at least as many copies as it has live ids. In doubt, insert and
//! do not remove: an extra insert costs a wasted SQL read, an extra remove loses an id. For the
//! same reason `insert` never uses `test_and_add`: a colliding id's copy is not ours.
//!
//! # When the filter cannot be trusted
//!
//! Before its first build it knows nothing of SQL. When an `add` fails with `NotEnoughSpace`, the
//! crate has already kicked some *other* fingerprint out. A `remove` that finds no copy means a
//! write was missed. In all three cases [`L3Filter::might_contain`] says "maybe" to everything
//! until a rebuild from SQL, which [`L3Filter::needs_rebuild`] asks for. It also asks at 90% load:
//! inserts into 4-slot buckets start failing near 95%, so the rebuild doubles the capacity first.
//!
//! # Rebuilding while writes go on
//!
//! A rebuild scans SQL page by page while batches commit, so a page can be older or newer than
//! the filter calls around it. [`L3Filter::begin_rebuild`] opens a log: each later call still
//! updates the current filter (which goes on answering if trusted) and records the id's latest
//! state. [`Rebuild::add_page`] skips ids in the log: the log, not a page of unknown age, has
//! their final word. [`Rebuild::finish`] adds the logged ids that ended live and swaps the new
//! filter in under the same lock. It never deletes: a page may have added an id before its first
//! logged write, and deleting a copy we cannot prove is there could take a colliding id's. Double
//! adds and dead ids' copies cost wasted reads until the next rebuild.
//!
//! The engine's side: call `begin_rebuild` before reading the first page, and page by keyset
//! (`WHERE id > ? ORDER BY id`) so an id that does not change meanwhile is seen exactly once
//! (OFFSET skips rows when earlier ones are deleted). Call `finish` when no write sits between
//! its commit and its filter call (on the write path, between batches): a remove after the swap,
//! for a commit the scan saw, would delete a copy the new filter never got. The log costs an
//! entry per id written during the scan; dropping a [`Rebuild`] abandons it.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cuckoofilter::CuckooFilter;

/// Load at which a rebuild is due, in percent of capacity.
const REBUILD_AT_PERCENT: usize = 90;

/// The existence filter for ids live in L3. `Send + Sync`; every method takes `&self`.
pub struct L3Filter {
    state: RwLock<State>,
}

struct State {
    cuckoo: CuckooFilter<DefaultHasher>,
    capacity: usize,
    /// False until the first build, and from any lost fingerprint until the next one.
    trusted: bool,
    /// `Some` while a rebuild runs: every id written since it began, and whether it is live now.
    log: Option<HashMap<String, bool>>,
}

impl State {
    /// Sized for `items` ids at half load, so it can grow before the rebuild trigger. A power
    /// of two, as the crate rounds to one anyway (4 fingerprints per bucket).
    fn new(items: usize, trusted: bool) -> Self {
        let capacity = items.saturating_mul(2).max(4).next_power_of_two();
        Self {
            cuckoo: CuckooFilter::with_capacity(capacity),
            capacity,
            trusted,
            log: None,
        }
    }
}

impl L3Filter {
    /// An empty filter sized for `expected_items`. It answers "maybe" until the first rebuild.
    pub fn new(expected_items: usize) -> Self {
        let state = RwLock::new(State::new(expected_items, false));
        Self { state }
    }

    /// False only if `id` is certainly not live in SQL.
    pub fn might_contain(&self, id: &str) -> bool {
        let state = self.read();
        !state.trusted || state.cuckoo.contains(id)
    }

    /// `id` just became live in SQL; it was not live before. Once per transition.
    pub fn insert(&self, id: &str) {
        self.record(id, true);
    }

    /// `id` was live in SQL and just stopped being live. Once per transition.
    pub fn remove(&self, id: &str) {
        self.record(id, false);
    }

    fn record(&self, id: &str, live: bool) {
        let mut state = self.write();
        // An untrusted filter answers "maybe" until a rebuild replaces it whole, so its
        // fingerprints no longer matter: skip them. (Adding to an overfull filter costs up to
        // 500 random relocations per id, which made it most of the write path's CPU.)
        if state.trusted {
            // A failed add has evicted some other fingerprint; a remove that finds no copy
            // means a write was missed. Either way a copy that a live id needs may be gone.
            let kept = if live {
                state.cuckoo.add(id).is_ok()
            } else {
                state.cuckoo.delete(id)
            };
            state.trusted &= kept;
        }
        if let Some(log) = &mut state.log {
            log.insert(id.to_owned(), live);
        }
    }

    /// Whether answers can filter anything; false means every id is "maybe".
    pub fn is_trusted(&self) -> bool {
        self.read().trusted
    }

    /// Fingerprints held, including the stale ones a rebuild may leave behind.
    pub fn len(&self) -> usize {
        self.read().cuckoo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the engine should rebuild from SQL: never built, lost a fingerprint, or nearly full.
    pub fn needs_rebuild(&self) -> bool {
        let state = self.read();
        !state.trusted || state.cuckoo.len() * 100 >= state.capacity * REBUILD_AT_PERCENT
    }

    /// Starts a rebuild sized for the larger of `expected_items` (say, SQL's row count) and
    /// what the filter holds now, so a nearly full filter doubles; it never shrinks. `None`
    /// while another rebuild runs.
    pub fn begin_rebuild(self: &Arc<Self>, expected_items: usize) -> Option<Rebuild> {
        let mut state = self.write();
        if state.log.is_some() {
            return None;
        }
        state.log = Some(HashMap::new());
        let held = state.cuckoo.len().max(state.capacity / 2);
        let (filter, next) = (Arc::clone(self), State::new(expected_items.max(held), true));
        Some(Rebuild {
            filter,
            next,
            finished: false,
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("L3 filter lock poisoned")
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().expect("L3 filter lock poisoned")
    }
}

/// A filter being built from a scan of SQL; see the module docs for the protocol. It owns an
/// `Arc` of its filter so the scan and the write path can hand it between tasks.
pub struct Rebuild {
    filter: Arc<L3Filter>,
    /// Trusted until an add fails: it may then be missing some fingerprint.
    next: State,
    /// Set by `finish`, so that dropping it cannot clear a later rebuild's log.
    finished: bool,
}

impl Rebuild {
    /// Adds a page of ids the scan found live.
    pub fn add_page<S: AsRef<str>>(&mut self, ids: impl IntoIterator<Item = S>) {
        let state = self.filter.read();
        for id in ids {
            let id = id.as_ref();
            if self.next.trusted && !state.log.as_ref().is_some_and(|log| log.contains_key(id)) {
                self.next.trusted &= self.next.cuckoo.add(id).is_ok();
            }
        }
    }

    /// Replays the writes logged since the rebuild began and swaps the new filter in.
    /// Only when no write is between its SQL commit and its filter call.
    pub fn finish(mut self) {
        let mut state = self.filter.write();
        for (id, live) in state.log.take().unwrap_or_default() {
            if live && self.next.trusted {
                self.next.trusted &= self.next.cuckoo.add(&id).is_ok();
            }
        }
        std::mem::swap(&mut *state, &mut self.next);
        self.finished = true;
    }
}

impl Drop for Rebuild {
    fn drop(&mut self) {
        if !self.finished {
            self.filter.write().log = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};

    use proptest::prelude::*;

    use super::*;

    fn built(expected_items: usize, live: &[&str]) -> Arc<L3Filter> {
        let filter = Arc::new(L3Filter::new(expected_items));
        let mut rebuild = filter.begin_rebuild(live.len()).unwrap();
        rebuild.add_page(live);
        rebuild.finish();
        filter
    }

    /// Percent of never-inserted ids the filter rules out.
    fn absent_share(filter: &L3Filter) -> usize {
        let never = (0..1000).map(|i| format!("never-{i}"));
        never.filter(|id| !filter.might_contain(id)).count() / 10
    }

    /// Ids with the same fingerprint as `id`: in a one-bucket filter `contains` compares
    /// fingerprints only.
    fn twins(id: &str, n: usize) -> Vec<String> {
        let mut probe = CuckooFilter::<DefaultHasher>::with_capacity(4);
        probe.add(id).unwrap();
        let candidates = (0..).map(|i| format!("{id}{i}"));
        candidates.filter(|t| probe.contains(t)).take(n).collect()
    }

    #[test]
    fn untrusted_until_built() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<(L3Filter, Rebuild)>();
        let filter = Arc::new(L3Filter::new(16));
        filter.insert("a");
        assert!(!filter.is_trusted() && filter.needs_rebuild() && filter.might_contain("b"));
        let mut rebuild = filter.begin_rebuild(1).unwrap();
        assert!(filter.begin_rebuild(1).is_none(), "one rebuild at a time");
        rebuild.add_page(["a"]);
        rebuild.finish();
        assert!(filter.is_trusted() && !filter.needs_rebuild() && filter.might_contain("a"));
        assert!(absent_share(&filter) > 90);
    }

    #[test]
    fn full_filter_asks_to_grow_then_answers_maybe() {
        let filter = built(2, &[]); // one bucket of 4: every id lands in it
        let ids: Vec<String> = (0..20).map(|i| format!("id-{i}")).collect();
        ids[..3].iter().for_each(|id| filter.insert(id));
        assert!(filter.is_trusted() && !filter.needs_rebuild());
        filter.insert(&ids[3]);
        assert!(filter.is_trusted() && filter.needs_rebuild(), "at 90% load");
        ids[4..].iter().for_each(|id| filter.insert(id));
        assert!(!filter.is_trusted() && filter.might_contain("never-1"));
        // sized from what it holds (4 -> 8 slots, then 6 -> 16: too few), then from SQL's 20
        for (expected_items, n, trusted) in [(0, 6, true), (0, 20, false), (20, 20, true)] {
            let mut rebuild = filter.begin_rebuild(expected_items).unwrap();
            rebuild.add_page(&ids[..n]);
            rebuild.finish();
            assert_eq!(filter.is_trusted(), trusted);
        }
        assert!(ids.iter().all(|id| filter.might_contain(id)));
    }

    #[test]
    fn colliding_ids_keep_their_own_copy() {
        let twin = &twins("a", 1)[0];
        let filter = built(64, &[]);
        filter.insert("a");
        filter.insert(twin);
        filter.remove("a");
        assert!(filter.might_contain(twin));
        filter.remove(twin);
        assert!(filter.is_trusted() && filter.is_empty());
        filter.remove("a"); // a broken contract: no copy left to take
        assert!(!filter.is_trusted());
    }

    #[test]
    fn rebuild_replays_writes_made_during_the_scan() {
        let filter = built(16, &["a", "b", "c"]);
        let mut rebuild = filter.begin_rebuild(3).unwrap();
        let first_page = ["a", "b"]; // read before b was deleted
        filter.remove("b");
        filter.insert("d");
        filter.remove("c");
        assert!(filter.might_contain("d")); // a trusted filter goes on answering
        rebuild.add_page(first_page);
        rebuild.add_page(["d"]); // read after d was put and c deleted
        filter.insert("e");
        rebuild.finish();
        assert!(filter.is_trusted());
        assert!(["a", "d", "e"].iter().all(|id| filter.might_contain(id)));
        assert_eq!(filter.len(), 3, "b skipped, d added once, c never");
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Put an absent id or delete a present one in SQL; its filter call is queued.
        Commit(usize),
        Deliver,
        Begin(usize), // expecting this percentage of SQL's rows: estimates can be off
        Page(usize),
        /// Make all queued calls (the contract), scan the rest, swap.
        Finish,
        Abandon,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => any::<usize>().prop_map(Step::Commit),
            4 => Just(Step::Deliver),
            1 => (0usize..150).prop_map(Step::Begin),
            3 => (1usize..8).prop_map(Step::Page),
            1 => Just(Step::Finish),
            1 => Just(Step::Abandon),
        ]
    }

    /// Reads the next `n` ids after the keyset cursor and feeds them to the rebuild.
    fn page<'a>(scan: &mut (Rebuild, Option<&'a str>), sql: &BTreeSet<&'a str>, n: usize) {
        let (rebuild, cursor) = scan;
        let after = |id: &&&str| cursor.is_none_or(|c| **id > c);
        let page: Vec<&str> = sql.iter().filter(after).take(n).copied().collect();
        *cursor = page.last().copied().or(*cursor);
        rebuild.add_page(page);
    }

    proptest! {
        #[test]
        fn no_false_negatives(
            alphabet in 0usize..3,
            size in 1usize..64, // 4 to 128 slots: buckets overflow, fingerprints collide
            steps in proptest::collection::vec(step(), 1..300),
        ) {
            let ids: Vec<String> = match alphabet {
                0 => (0..8).map(|i| format!("s{i}")).collect(),
                1 => twins("t", 24), // removes among colliding ids are the common case
                _ => (0..400).map(|i| format!("l{i}")).collect(),
            };
            let filter = Arc::new(L3Filter::new(size));
            let (mut sql, mut calls, mut scan) = (BTreeSet::new(), VecDeque::new(), None);
            // in commit order: insert only for ids not live, remove only for live ones
            let call = |(id, put)| if put { filter.insert(id) } else { filter.remove(id) };
            for step in steps.into_iter().chain([Step::Finish, Step::Begin(100), Step::Finish]) {
                match step {
                    Step::Commit(i) => {
                        let id = ids[i % ids.len()].as_str();
                        calls.push_back((id, sql.insert(id) || !sql.remove(id)));
                    }
                    Step::Deliver => calls.pop_front().into_iter().for_each(call),
                    Step::Begin(percent) if scan.is_none() => {
                        let rebuild = filter.begin_rebuild(sql.len() * percent / 100).unwrap();
                        scan = Some((rebuild, None));
                    }
                    Step::Page(n) => scan.iter_mut().for_each(|s| page(s, &sql, n)),
                    Step::Finish => {
                        calls.drain(..).for_each(call);
                        if let Some(mut s) = scan.take() {
                            page(&mut s, &sql, usize::MAX);
                            s.0.finish();
                        }
                    }
                    Step::Abandon => scan = None,
                    Step::Begin(_) => {}
                }
                // the filter was told these are live, and nothing since
                for id in sql.iter().filter(|id| calls.iter().all(|(c, _)| c != *id)) {
                    prop_assert!(filter.might_contain(id), "false negative for {id}");
                }
            }
            // distinct ids fit at half load; the twins may overflow the buckets they share
            prop_assert!(filter.is_trusted() || alphabet == 1);
            prop_assert!(!filter.is_trusted() || absent_share(&filter) > 50, "it must filter");
        }
    }
}
