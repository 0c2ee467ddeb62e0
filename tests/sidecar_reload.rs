//! Hot reload, as an operator meets it: the pipeline file is replaced the way a Kubernetes
//! ConfigMap update does it (a symlink swapped in its directory) while the sidecar runs;
//! `batch_flush_count` takes effect at once (confirmations shrink to the new size), a
//! changed `brokers` is reported and not applied (the sidecar goes on consuming from the
//! old one), and SIGHUP reloads too. Real broker (tansu), SQLite.

mod common;
#[path = "common/kafka.rs"]
mod kafka;
#[path = "common/merkle_ref.rs"]
mod merkle_ref;
#[path = "common/stores.rs"]
mod stores;

use std::time::{Duration, Instant};

use kafka::{confirmations, log_ends, put, Pipeline, Rec, Sidecar};

fn records(from: usize, n: usize) -> Vec<Rec> {
    (from..from + n)
        .map(|i| {
            put(
                &format!("r{i:04}"),
                format!("{{\"i\":{i}}}").as_bytes(),
                &[],
            )
        })
        .collect()
}

/// Waits until the sidecar's log has a line with all of `words`.
fn wait_log(sidecar: &mut Sidecar, words: &[&str]) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let log = stores::strip_colors(&sidecar.log());
        if let Some(line) = log.lines().find(|l| words.iter().all(|w| l.contains(w))) {
            return line.to_string();
        }
        assert!(sidecar.try_status().is_none(), "the sidecar exited:\n{log}");
        assert!(Instant::now() < end, "no log line with {words:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sizes (offset ranges) of the confirmations of offsets `from..to` of partition 0.
fn sizes(pipeline: &Pipeline, ends: i64, from: i64, to: i64) -> Vec<i64> {
    let outs = pipeline.read_until("out", Duration::from_secs(60), |outs| {
        confirmations(outs)
            .iter()
            .any(|c| c["last_offset"].as_i64() == Some(ends - 1))
    });
    let mut sizes: Vec<(i64, i64)> = confirmations(&outs)
        .iter()
        .map(|c| {
            let first = c["first_offset"].as_i64().unwrap();
            (first, c["last_offset"].as_i64().unwrap() - first + 1)
        })
        .filter(|(first, _)| (from..to).contains(first))
        .collect();
    sizes.sort();
    sizes.into_iter().map(|(_, size)| size).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_limits_follow_the_file_and_brokers_wait_for_a_restart() {
    let pipeline = Pipeline::new("reload", 1).await;
    // cycles by count only: no age or checkpoint-interval cycle in between
    let mut sidecar = pipeline.start_with(
        "batch_flush_count = 50",
        &[
            ("SYNC_ENGINE__BATCH_FLUSH_MS", "600000"),
            ("SYNC_ENGINE__KAFKA__CHECKPOINT_INTERVAL_MS", "600000"),
        ],
    );
    let ends = log_ends(pipeline.produce(&records(0, 200)).await);
    pipeline.wait_committed(&ends, Duration::from_secs(120));
    assert_eq!(sizes(&pipeline, 200, 0, 200), vec![50; 4]);

    // a ConfigMap update: a new file beside the old one, swapped in by a rename
    let file = &sidecar.pipeline;
    let text = std::fs::read_to_string(file).unwrap();
    let brokers = format!("brokers = \"{}\"", pipeline.brokers);
    assert!(text.contains("batch_flush_count = 50") && text.contains(&brokers));
    let changed = text
        .replace(
            "batch_flush_count = 50",
            "log_level = \"warn\"\nbatch_flush_count = 10",
        )
        .replace(&brokers, "brokers = \"127.0.0.1:1\"");
    let dir = file.parent().unwrap();
    let data = dir.join("..data-2");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("pipeline.toml"), changed).unwrap();
    let link = dir.join("pipeline.toml.new");
    std::os::unix::fs::symlink(data.join("pipeline.toml"), &link).unwrap();
    std::fs::rename(&link, file).unwrap();

    let applied = wait_log(&mut sidecar, &["pipeline file reloaded: applied"]);
    assert!(applied.contains("engine.batch_flush_count"), "{applied}");
    assert!(applied.contains("log_level"), "{applied}");
    let pending = wait_log(&mut sidecar, &["only after a restart"]);
    assert!(pending.contains("kafka.brokers"), "{pending}");

    // the new count applies; the old broker still serves
    let ends = log_ends(pipeline.produce(&records(200, 200)).await);
    pipeline.wait_committed(&ends, Duration::from_secs(120));
    assert_eq!(sizes(&pipeline, 400, 200, 400), vec![10; 20]);

    // SIGHUP reads the file again (and says so, at WARN now: nothing else changed)
    sidecar.signal("HUP");
    wait_log(&mut sidecar, &["SIGHUP"]);
    sidecar.stop();
    // log_level = "warn" applied live: no INFO line after the reload, although the drain
    // at the stop logs two
    let log = stores::strip_colors(&sidecar.log());
    let after: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("pipeline file reloaded: applied"))
        .skip(1)
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|l| !l.contains(" INFO ")),
        "INFO lines after log_level = \"warn\":\n{}",
        after.join("\n")
    );
}
