//! `sync-engine dev --demo`: the README's main-job command, end to end with no external
//! service (mock Kafka cluster in process, SQLite file).

use std::process::Command;

#[test]
fn dev_demo_runs_to_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dev.db");
    let output = Command::new(env!("CARGO_BIN_EXE_sync-engine"))
        .args(["dev", "--demo", "--items", "3000", "--db"])
        .arg(&db)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("demo done"))
        .expect("a summary line");
    // 3000 records: ids demo:00000..demo:02999 minus deletes and bad ones (see src/dev.rs)
    assert!(summary.contains("3000 records"), "{summary}");
    assert!(summary.contains("180 sent to the DLQ"), "{summary}");
    let persisted: u64 = summary
        .split(", ")
        .find_map(|p| p.strip_suffix(" items persisted in SQL"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(persisted > 1000 && persisted < 3000, "{summary}");
    assert!(
        stdout.contains("kcat -P -b 127.0.0.1:"),
        "a ready-to-paste produce example"
    );
}
