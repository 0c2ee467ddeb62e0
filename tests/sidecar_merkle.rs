//! The sidecar's Merkle state roots against an independent implementation of
//! schemas/MERKLE.md (tests/common/merkle_ref.rs, whose own test of the document's worked
//! example runs here too), on a real Kafka-protocol broker (tansu, started by scripts/test):
//! every confirmation states the root of exactly what its partition holds after it,
//! checkpoints repeat confirmed states (every N batches, after the interval even when the
//! input stops, at shutdown), an emptied partition states the empty root, and after a SIGKILL
//! mid-stream and a restart the last confirmation and checkpoint of every partition state the
//! root of its SQL rows, which `sync-engine verify` confirms.

#[macro_use] // `on_raw!`, for queries `Raw` has no method for
mod common;
#[path = "common/kafka.rs"]
mod kafka;
#[path = "common/merkle_ref.rs"]
mod merkle_ref;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Backend, Raw};
use jsonschema::Validator;
use kafka::{
    confirmations, confirmed, delete, events, log_ends, put, Feed, Pipeline, Position, Rec,
};
use serde_json::Value;

/// The pipeline's `[kafka] checkpoint_every_batches`.
const EVERY_ENV: &str = "SYNC_ENGINE__KAFKA__CHECKPOINT_EVERY_BATCHES";

// ---------------------------------------------------------------------------------------
// Helpers: the expected state of a partition, what SQL holds, what the events state

/// Produced records with this key prefix are rejected (invalid JSON) and go to the DLQ.
const BAD: &str = "bad:";

/// What a produced record does to its partition's set: a put of (id, content_hash), a delete
/// of id (`None`), or nothing (a record for the DLQ).
fn effect(record: &Rec) -> Option<(Vec<u8>, Option<String>)> {
    let id = record.key.clone().expect("records have keys");
    if id.starts_with(BAD.as_bytes()) {
        return None;
    }
    Some((
        id,
        record.value.as_ref().map(|v| merkle_ref::content_hash(v)),
    ))
}

/// Applies `record` to its partition's set of (id -> content_hash).
fn apply(set: &mut BTreeMap<Vec<u8>, String>, record: &Rec) {
    match effect(record) {
        Some((id, Some(hash))) => {
            set.insert(id, hash);
        }
        Some((id, None)) => {
            set.remove(&id);
        }
        None => {}
    }
}

/// A partition's (state root, item count) as the events state them.
type Stated = (String, u64);

/// Where a confirmation ends: its (partition, last offset).
fn end_of(confirmation: &Value) -> (i32, i64) {
    let last = confirmation["last_offset"].as_i64().unwrap();
    (partition_of(confirmation), last)
}

/// For the end of each of `confirmations`: the root and size of the set the partition holds
/// right after that offset, from replaying the produced records in offset order.
fn expected_at(sent: &[(Rec, Position)], confirmations: &[Value]) -> BTreeMap<(i32, i64), Stated> {
    let wanted: BTreeSet<(i32, i64)> = confirmations.iter().map(end_of).collect();
    let mut by_partition: BTreeMap<i32, Vec<(i64, &Rec)>> = BTreeMap::new();
    for (record, (partition, offset)) in sent {
        by_partition
            .entry(*partition)
            .or_default()
            .push((*offset, record));
    }
    let mut out = BTreeMap::new();
    for (partition, mut records) in by_partition {
        records.sort_by_key(|(offset, _)| *offset);
        let mut set: BTreeMap<Vec<u8>, String> = BTreeMap::new();
        for (offset, record) in records {
            apply(&mut set, record);
            if wanted.contains(&(partition, offset)) {
                let rows: Vec<(Vec<u8>, String)> = set.clone().into_iter().collect();
                out.insert(
                    (partition, offset),
                    (merkle_ref::root(&rows), rows.len() as u64),
                );
            }
        }
    }
    let missing: Vec<_> = wanted.iter().filter(|w| !out.contains_key(w)).collect();
    assert!(missing.is_empty(), "never produced: {missing:?}");
    out
}

/// Per id, the content hash the last record produced for it leaves (deleted ids absent).
fn final_sets(sent: &[(Rec, Position)]) -> BTreeMap<i32, BTreeMap<Vec<u8>, String>> {
    let mut ordered: Vec<&(Rec, Position)> = sent.iter().collect();
    ordered.sort_by_key(|(_, position)| *position);
    let mut sets: BTreeMap<i32, BTreeMap<Vec<u8>, String>> = BTreeMap::new();
    for (record, (partition, _)) in ordered {
        apply(sets.entry(*partition).or_default(), record);
    }
    sets
}

/// The engine's name of a source partition (the `source` column).
fn source(p: &Pipeline, partition: i32) -> String {
    format!("{}/{partition}", p.topic("in"))
}

/// `SELECT id, content_hash FROM sync_items WHERE source = ?`, and the state they make: the
/// reference root of those rows and `COUNT(*)` of the same.
async fn sql_partition(raw: &mut Raw, source: &str) -> (Vec<(Vec<u8>, String)>, Stated) {
    let rows = raw.leaves(source).await;
    let root = merkle_ref::root(&rows);
    (rows, (root, raw.count(source).await))
}

/// Per source partition, the confirmations and the checkpoints among `outs`.
fn by_kind(outs: &[kafka::Out]) -> (BTreeMap<i32, Vec<Value>>, BTreeMap<i32, Vec<Value>>) {
    (
        by_partition(confirmations(outs)),
        by_partition(events(outs, "checkpoint")),
    )
}

fn partition_of(event: &Value) -> i32 {
    event["partition"].as_i64().unwrap() as i32
}

fn stated(event: &Value) -> Stated {
    (
        event["state_root"].as_str().unwrap().to_string(),
        event["item_count"].as_u64().unwrap(),
    )
}

/// Per source partition, its events of one type in output order (one partition's events
/// share a key, hence an output partition, hence an order).
fn by_partition(events: Vec<Value>) -> BTreeMap<i32, Vec<Value>> {
    let mut out: BTreeMap<i32, Vec<Value>> = BTreeMap::new();
    for e in events {
        out.entry(partition_of(&e)).or_default().push(e);
    }
    out
}

fn validator(file: &str) -> Validator {
    let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("{file} is not a valid JSON Schema: {e}");
    }
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn assert_valid(validator: &Validator, file: &str, instance: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{instance}\ninvalid per {file}: {errors:?}"
    );
}

/// Whether the confirmations among `outs` cover every one of `positions`.
fn covers(outs: &[kafka::Out], positions: &[Position]) -> bool {
    let seen = confirmed(outs);
    positions.iter().all(|pos| seen.contains_key(pos))
}

/// Runs `sync-engine verify --pipeline <file>` (with `--json` when asked); returns its exit
/// status, stdout and a description of the run for failure messages.
fn verify(file: &Path, json: bool) -> (std::process::ExitStatus, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sync-engine"));
    command.args(["verify", "--pipeline"]).arg(file);
    if json {
        command.arg("--json");
    }
    let output = command.env("RUST_LOG", "warn").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report = format!(
        "verify {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, stdout, report)
}

/// `verify`'s text report has a line `<source> OK … ; checkpoint @<last offset>: match` for
/// every partition and ends with `OK: …`.
fn assert_verify_lines(stdout: &str, report: &str, p: &Pipeline, ends: &BTreeMap<i32, i64>) {
    for (partition, end) in ends {
        let source = source(p, *partition);
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(source.as_str()))
            .unwrap_or_else(|| panic!("no line for {source}: {report}"));
        assert!(
            line.split_whitespace().nth(1) == Some("OK")
                && line.ends_with(&format!("; checkpoint @{}: match", end - 1)),
            "{source}: {report}"
        );
    }
    assert!(
        stdout.lines().last().is_some_and(|l| l.starts_with("OK:")),
        "{report}"
    );
}

// ---------------------------------------------------------------------------------------
// Every confirmation states the exact root; records that change no set change no root

/// The payload of id number `i` in its `generation`.
fn payload(i: usize, generation: u32) -> Vec<u8> {
    format!("{{\"i\":{i},\"gen\":{generation}}}").into_bytes()
}

async fn confirmations_state_exact_roots(sql: Backend) {
    let p = Pipeline::on("merkle-exact", 3, sql).await;
    let ids: Vec<String> = (0..12).map(|i| format!("x:{i:02}")).collect();
    let mut sent: Vec<(Rec, Position)> = Vec::new();

    // phase 1: every id put; phase 2: a third re-put with new content, a third deleted;
    // phase 3: records that change no partition's set
    let phase1: Vec<Rec> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| put(id, &payload(i, 1), &[]))
        .collect();
    let phase2: Vec<Rec> = ids
        .iter()
        .enumerate()
        .filter_map(|(i, id)| match i % 3 {
            0 => Some(put(id, &payload(i, 2), &[])),
            1 => Some(delete(id)),
            _ => None,
        })
        .collect();
    let mut phase3: Vec<Rec> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| match i % 3 {
            // the same bytes it holds again: a replayed put (newer version, same leaf)
            0 => put(id, &payload(i, 2), &[]),
            // an id deleted in phase 2: a delete of an absent id
            1 => delete(id),
            // the same bytes with another state: the state does not enter the root
            _ => put(id, &payload(i, 1), &[("sync-state", "moved")]),
        })
        .collect();
    phase3.push(delete("never:written"));
    phase3.push(put(
        &format!("{BAD}json"),
        b"{nope",
        &[("content-type", "application/json")],
    ));

    let positions = p.produce(&phase1).await;
    sent.extend(phase1.into_iter().zip(positions.iter().copied()));
    let partitions: BTreeSet<i32> = positions.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        partitions,
        (0..3).collect(),
        "the ids reach every partition (the partitioner is deterministic)"
    );
    let mut sidecar = p.start_with("batch_flush_count = 4", &[(EVERY_ENV, "1")]);
    let mut out = p.reader("out");
    out.until(Duration::from_secs(90), |o| covers(o, &positions));
    // phase 1 confirmed everywhere: each later confirmation covers later records only
    let phase1_end = log_ends(positions.iter().copied());
    for phase in [phase2, phase3.clone()] {
        let positions = p.produce(&phase).await;
        sent.extend(phase.into_iter().zip(positions.iter().copied()));
        out.until(Duration::from_secs(90), |o| covers(o, &positions));
    }
    let phase2_end = log_ends(
        sent[..sent.len() - phase3.len()]
            .iter()
            .map(|(_, position)| *position),
    );
    p.wait_committed(
        &log_ends(sent.iter().map(|(_, position)| *position)),
        Duration::from_secs(30),
    );
    sidecar.stop();
    let outs = p.read_all("out", Duration::from_secs(30)).await;

    // every record confirmed exactly once (no crash, no rebalance)
    let produced: BTreeSet<Position> = sent.iter().map(|(_, position)| *position).collect();
    let seen = confirmed(&outs);
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), produced);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");

    let (confirmation_schema, checkpoint_schema) = (
        validator("confirmation.schema.json"),
        validator("checkpoint.schema.json"),
    );
    let all_confirmations = confirmations(&outs);
    let all_checkpoints = events(&outs, "checkpoint");
    for c in &all_confirmations {
        assert_valid(&confirmation_schema, "confirmation.schema.json", c);
    }
    for c in &all_checkpoints {
        assert_valid(&checkpoint_schema, "checkpoint.schema.json", c);
        assert_eq!(c["source_topic"], p.topic("in"));
        assert_eq!(c["algorithm"], "sync-engine-merkle-v1");
    }

    // each confirmation states the root of exactly what its partition holds after it
    let expected = expected_at(&sent, &all_confirmations);
    for c in &all_confirmations {
        assert_eq!(stated(c), expected[&end_of(c)], "confirmation {c}");
    }

    let confirmations = by_partition(all_confirmations);
    let checkpoints = by_partition(all_checkpoints);
    let mut raw = p.sql.raw().await;
    for partition in 0..3 {
        let confirmations = &confirmations[&partition];
        // phase 3 changed nothing: its confirmations state the root phase 2 left
        let after_phase2 = confirmations
            .iter()
            .rev()
            .find(|c| c["last_offset"].as_i64().unwrap() < phase2_end[&partition])
            .expect("phase 2 confirmed");
        let in_phase3: Vec<&Value> = confirmations
            .iter()
            .filter(|c| c["first_offset"].as_i64().unwrap() >= phase2_end[&partition])
            .collect();
        for c in &in_phase3 {
            assert_eq!(stated(c), stated(after_phase2), "{c}");
        }
        assert!(
            !in_phase3.is_empty(),
            "phase 3 reaches partition {partition}"
        );
        // each phase was confirmed before the next was produced: no confirmation spans two
        let phase = |offset: &Value| {
            let offset = offset.as_i64().unwrap();
            (offset >= phase1_end[&partition]) as u8 + (offset >= phase2_end[&partition]) as u8
        };
        for c in confirmations {
            assert_eq!(phase(&c["first_offset"]), phase(&c["last_offset"]), "{c}");
        }

        // checkpoint_every_batches = 1: one checkpoint per confirmation, with its state
        let of_confirmations: Vec<(i64, Stated)> = confirmations
            .iter()
            .map(|c| (c["last_offset"].as_i64().unwrap(), stated(c)))
            .collect();
        let of_checkpoints: Vec<(i64, Stated)> = checkpoints
            .get(&partition)
            .map(|cs| {
                cs.iter()
                    .map(|c| (c["offset"].as_i64().unwrap(), stated(c)))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(of_checkpoints, of_confirmations, "partition {partition}");

        // and SQL holds that set
        let (rows, in_sql) = sql_partition(&mut raw, &source(&p, partition)).await;
        let last = stated(confirmations.last().unwrap());
        assert_eq!(in_sql, last, "partition {partition}");
        assert_eq!(rows.len() as u64, in_sql.1);
    }
}

on_both_backends!(confirmations_state_exact_roots);

// ---------------------------------------------------------------------------------------
// SIGKILL mid-stream, restart: the last confirmation and checkpoint state the SQL root

/// Ids of the crash feed (prime, so every id sees every kind of record below).
const IDS: usize = 151;

/// The n-th record of the crash feed over `IDS` ids: new content (to SQL and Redis, to SQL
/// only, or to SQL and Redis with a TTL), a put of the same bytes as last time, or a delete.
fn crash_record(n: usize) -> Rec {
    let id = format!("c:{:03}", n % IDS);
    let fresh = format!("{{\"n\":{n}}}");
    match n % 10 {
        3 => delete(&id),
        // the same bytes every time: when the id holds them already, a put that changes nothing
        7 => put(&id, format!("{{\"id\":\"{id}\"}}").as_bytes(), &[]),
        5 => put(&id, fresh.as_bytes(), &[("sync-route", "sql")]),
        9 => put(&id, fresh.as_bytes(), &[("sync-ttl", "hour")]),
        _ => put(&id, fresh.as_bytes(), &[]),
    }
}

/// Per partition, how many records SQL holds beyond the group's committed offset (the
/// highest version in `sync_sources` is the last written offset + 1): what a restart replays
/// onto rows that already have it. Partitions with none are left out.
async fn uncommitted_in_sql(p: &Pipeline, raw: &mut Raw) -> BTreeMap<i32, i64> {
    let sql = "SELECT source, version FROM sync_sources";
    // SQL first, then the offsets: a version above an offset committed after it was read
    // is still uncommitted
    let versions: Vec<(Vec<u8>, i64)> = on_raw!(raw, conn => {
        sqlx::query_as(sql).fetch_all(&mut *conn).await.unwrap()
    });
    let committed = p.committed();
    (0..p.partitions)
        .filter_map(|partition| {
            let source = source(p, partition);
            let version = versions
                .iter()
                .find(|(s, _)| *s == source.as_bytes())
                .map_or(0, |(_, v)| *v);
            let ahead = version - committed.get(&partition).copied().unwrap_or(0);
            (ahead > 0).then_some((partition, ahead))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_survive_sigkill_and_restart() {
    let redis_url = common::redis::url(common::redis::PLAIN_ENV);
    let p = Pipeline::on("merkle-crash", 3, Backend::mariadb().await).await;
    // a Redis prefix of its own: `verify` scans every key under it
    let extra = format!(
        "redis_url = \"{redis_url}\"\nredis_prefix = \"{}:\"",
        p.name
    );
    let env = [(EVERY_ENV, "4")];

    let feed = Feed::start(p.producer(), 20, Duration::from_millis(40), crash_record);
    let mut sidecar = p.start_with(&extra, &env);
    let file = sidecar.pipeline.clone();
    p.reader("out").until(Duration::from_secs(90), |o| {
        let seen = confirmed(o);
        (0..3).all(|partition| seen.range((partition, 0)..(partition + 1, 0)).count() >= 100)
    });
    // SIGKILL while SQL holds records whose offsets are not committed, so the restart replays
    // writes SQL already has. Whether it did is only certain once the process is dead (it may
    // commit between the look and the kill): if not, restart and try again.
    let mut raw = p.sql.raw().await;
    let mut kills = 0;
    let ahead_at_kill = loop {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while uncommitted_in_sql(&p, &mut raw).await.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "SQL never got ahead of the committed offsets; log:\n{}",
                p.log()
            );
        }
        sidecar.sigkill();
        kills += 1;
        let ahead = uncommitted_in_sql(&p, &mut raw).await;
        if !ahead.is_empty() {
            break ahead;
        }
        assert!(
            kills < 10,
            "every kill came after a commit; log:\n{}",
            p.log()
        );
        sidecar = p.start_with(&extra, &env);
    };
    drop(raw);
    let at_kill = log_ends(feed.sent().iter().map(|(_, position)| *position));
    assert_eq!(at_kill.len(), 3, "the feed reaches every partition");
    // everything the killed process(es) published (nothing else has written the topic yet)
    let before_kill = p.read_all("out", Duration::from_secs(30)).await;

    let mut second = p.start_with(&extra, &env);
    // the restarted process confirms, on every partition, records produced after the kill
    p.reader("out").until(Duration::from_secs(120), |o| {
        let seen = confirmed(o);
        at_kill
            .iter()
            .all(|(p, end)| seen.range((*p, *end)..(*p + 1, 0)).next().is_some())
    });
    let sent = feed.stop();
    let ends = log_ends(sent.iter().map(|(_, position)| *position));
    p.wait_committed(&ends, Duration::from_secs(90));
    second.stop(); // SIGTERM publishes the checkpoints still due
    let outs = p.read_all("out", Duration::from_secs(30)).await;

    // every record confirmed, nothing else
    let produced: BTreeSet<Position> = sent.iter().map(|(_, position)| *position).collect();
    let confirmed_counts = confirmed(&outs);
    let seen: BTreeSet<Position> = confirmed_counts.keys().copied().collect();
    assert_eq!(seen, produced);
    let twice = confirmed_counts.values().filter(|n| **n > 1).count();

    // before the crash, each confirmation stated the root of exactly what it left
    let before: Vec<Value> = confirmations(&before_kill);
    assert!(!before.is_empty());
    let all_confirmations = confirmations(&outs);
    let expected = expected_at(&sent, &all_confirmations);
    for c in &before {
        assert_eq!(
            stated(c),
            expected[&end_of(c)],
            "confirmation before the kill: {c}"
        );
    }

    // after it, a confirmation replayed onto rows SQL already had states the root SQL
    // holds, which can include records after its last offset (not asserted: reported)
    let before_per_partition = by_partition(before.clone());
    let ahead_of_offset: usize = by_partition(all_confirmations.clone())
        .iter()
        .map(|(partition, cs)| {
            let skip = before_per_partition.get(partition).map_or(0, Vec::len);
            cs[skip..]
                .iter()
                .filter(|c| stated(c) != expected[&end_of(c)])
                .count()
        })
        .sum();

    // every checkpoint repeats a confirmed state of its partition, at that confirmation's
    // offset or later (after the crash SQL was ahead of the replay, and a checkpoint then
    // names SQL's offset)
    let all_checkpoints = events(&outs, "checkpoint");
    for c in &all_checkpoints {
        let offset = c["offset"].as_i64().unwrap();
        assert!(
            all_confirmations
                .iter()
                .any(|k| partition_of(k) == partition_of(c)
                    && stated(k) == stated(c)
                    && k["last_offset"].as_i64().unwrap() <= offset),
            "checkpoint of no confirmed state: {c}"
        );
    }

    // the last confirmation and the last checkpoint of each partition state its SQL rows
    let confirmations = by_partition(all_confirmations);
    let checkpoints = by_partition(all_checkpoints);
    let expected_sets = final_sets(&sent);
    let mut raw = p.sql.raw().await;
    for partition in 0..3 {
        let source = source(&p, partition);
        let (rows, in_sql) = sql_partition(&mut raw, &source).await;
        let stored: BTreeMap<Vec<u8>, String> = rows.iter().cloned().collect();
        assert_eq!(
            stored, expected_sets[&partition],
            "{source}: SQL holds the last write of every id"
        );
        assert_eq!(rows.len() as u64, in_sql.1);
        let last_offset = ends[&partition] - 1;
        let last = confirmations[&partition].last().unwrap();
        assert_eq!(last["last_offset"], last_offset, "{last}");
        assert_eq!(stated(last), in_sql, "{source}: {last}");
        let checkpoint = checkpoints
            .get(&partition)
            .and_then(|c| c.last())
            .unwrap_or_else(|| panic!("{source}: no checkpoint"));
        assert_eq!(checkpoint["offset"], last_offset, "{checkpoint}");
        assert_eq!(stated(checkpoint), in_sql, "{source}: {checkpoint}");
    }
    drop(raw);

    // `verify` on the same pipeline file: SQL, the stored digests, Redis and the newest
    // checkpoint of every partition agree
    let (status, stdout, report) = verify(&file, false);
    assert!(status.success(), "{report}");
    assert_verify_lines(&stdout, &report, &p, &ends);

    let counts: Vec<usize> = (0..3).map(|p| expected_sets[&p].len()).collect();
    eprintln!(
        "{} records; {kills} kill(s), the last with SQL ahead of the committed offsets by \
         {ahead_at_kill:?} records; {} confirmations before it (ends {at_kill:?}), {} in all \
         ({twice} records confirmed twice; {ahead_of_offset} after the restart stated a root \
         beyond their last offset) and {} checkpoints; items per partition {counts:?}",
        sent.len(),
        before.len(),
        confirmations.values().map(Vec::len).sum::<usize>(),
        checkpoints.values().map(Vec::len).sum::<usize>(),
    );
}

// ---------------------------------------------------------------------------------------
// checkpoint_interval_ms: a confirmed state is checkpointed even when no record follows

/// The pipeline's `[kafka] checkpoint_interval_ms`.
const INTERVAL_ENV: &str = "SYNC_ENGINE__KAFKA__CHECKPOINT_INTERVAL_MS";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_follow_the_interval_when_input_stops() {
    let p = Pipeline::new("merkle-interval", 3).await;
    let records: Vec<Rec> = (0..12)
        .map(|i| put(&format!("y:{i:02}"), &payload(i, 1), &[]))
        .collect();
    let positions = p.produce(&records).await;
    let ends = log_ends(positions.iter().copied());
    assert_eq!(ends.len(), 3, "the ids reach every partition");
    // far more batches than there will be: only the interval can publish before shutdown
    let mut sidecar = p.start_with("", &[(EVERY_ENV, "1000"), (INTERVAL_ENV, "2000")]);
    let mut out = p.reader("out");
    out.until(Duration::from_secs(90), |o| covers(o, &positions));
    p.wait_committed(&ends, Duration::from_secs(30));
    // nothing more is produced: the last state of each partition must still be checkpointed
    // within the interval (the deadline is only a timeout)
    let checkpointed = |outs: &[kafka::Out]| -> BTreeSet<i32> {
        events(outs, "checkpoint")
            .iter()
            .filter(|c| c["offset"].as_i64() == Some(ends[&partition_of(c)] - 1))
            .map(partition_of)
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while checkpointed(&out.outs).len() < 3 && std::time::Instant::now() < deadline {
        out.poll(Duration::from_millis(100));
    }
    let before_shutdown = checkpointed(&out.outs);
    sidecar.stop();

    let outs = p.read_all("out", Duration::from_secs(30)).await;
    let (confirmations, checkpoints) = by_kind(&outs);
    let mut raw = p.sql.raw().await;
    for partition in 0..3 {
        let (_, root) = sql_partition(&mut raw, &source(&p, partition)).await;
        assert_eq!(stated(confirmations[&partition].last().unwrap()), root);
        assert_eq!(stated(checkpoints[&partition].last().unwrap()), root);
    }
    // last: the rest holds either way (the shutdown publishes what the interval did not)
    assert_eq!(
        before_shutdown,
        (0..3).collect::<BTreeSet<i32>>(),
        "with checkpoint_interval_ms = 2000 every partition's last confirmed state is \
         checkpointed without waiting for more input (left: the partitions that got their \
         checkpoint within 60 s of going idle; the others got it only at shutdown)"
    );
}

// ---------------------------------------------------------------------------------------
// A partition whose items are all deleted: its root is the empty root, and verify agrees

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_partition_states_the_empty_root() {
    let p = Pipeline::new("merkle-empty", 3).await;
    let puts: Vec<Rec> = (0..12)
        .map(|i| put(&format!("z:{i:02}"), &payload(i, 1), &[]))
        .collect();
    let mut sent: Vec<(Rec, Position)> = Vec::new();
    let positions = p.produce(&puts).await;
    sent.extend(puts.into_iter().zip(positions));
    // every id of partition 0 deleted again
    let deletes: Vec<Rec> = sent
        .iter()
        .filter(|(_, (partition, _))| *partition == 0)
        .map(|(r, _)| delete(std::str::from_utf8(r.key.as_ref().unwrap()).unwrap()))
        .collect();
    assert!(!deletes.is_empty(), "the ids reach partition 0");
    let positions = p.produce(&deletes).await;
    assert!(positions.iter().all(|(partition, _)| *partition == 0));
    sent.extend(deletes.into_iter().zip(positions));
    let ends = log_ends(sent.iter().map(|(_, position)| *position));
    assert_eq!(ends.len(), 3, "the ids reach every partition");

    let mut sidecar = p.start("");
    let file = sidecar.pipeline.clone();
    p.wait_committed(&ends, Duration::from_secs(90));
    sidecar.stop();

    let outs = p.read_all("out", Duration::from_secs(30)).await;
    let (confirmations, checkpoints) = by_kind(&outs);
    let finals = final_sets(&sent);
    let mut raw = p.sql.raw().await;
    for partition in 0..3 {
        let (_, root) = sql_partition(&mut raw, &source(&p, partition)).await;
        if partition == 0 {
            assert_eq!(root, (merkle_ref::EMPTY_ROOT.to_string(), 0));
        } else {
            assert_eq!(root.1 as usize, finals[&partition].len());
        }
        let last = confirmations[&partition].last().unwrap();
        assert_eq!(last["last_offset"], ends[&partition] - 1);
        assert_eq!(stated(last), root, "{last}");
        let checkpoint = checkpoints[&partition].last().unwrap();
        assert_eq!(checkpoint["offset"], ends[&partition] - 1);
        assert_eq!(stated(checkpoint), root, "{checkpoint}");
    }
    drop(raw);

    // verify holds each partition's newest checkpoint against SQL, the emptied one included
    let (status, stdout, report) = verify(&file, true);
    assert!(status.success(), "{report}");
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {report}"));
    assert_eq!(json["ok"], true, "{report}");
    let checks: BTreeMap<String, (i64, String)> = json["checkpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}"))
        .iter()
        .map(|c| {
            (
                c["partition"].as_str().unwrap().to_string(),
                (
                    c["offset"].as_i64().unwrap(),
                    c["status"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    let expected: BTreeMap<String, (i64, String)> = (0..3)
        .map(|partition| {
            (
                source(&p, partition),
                (ends[&partition] - 1, "match".to_string()),
            )
        })
        .collect();
    assert_eq!(checks, expected, "{report}");
    // and says so, for the emptied partition too (it has no rows left to list it by)
    let (status, stdout, report) = verify(&file, false);
    assert!(status.success(), "{report}");
    assert_verify_lines(&stdout, &report, &p, &ends);
}
