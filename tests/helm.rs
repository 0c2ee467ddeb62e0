//! The Helm chart `helm/sync-engine` and its example `helm/examples/app-with-sync-engine`:
//! rendered by Helm's own engine, linted with `--strict`, every object valid for Kubernetes 1.29
//! and 1.33 (`kubernetes-validate --strict`; the CRD kinds are checked field by field instead),
//! and each mode and option checked on what it renders: `helm/tests/test_chart.py` does it, with
//! PyPI `helm-python-sdk` and `kubernetes-validate`, which scripts/test installs into its venv and
//! names in `SYNC_ENGINE_TEST_PYTHON`. Without them these tests fail, they do not skip.

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

/// scripts/test's venv Python (`SYNC_ENGINE_TEST_PYTHON`), or the venv's default place when the
/// test runs by itself after scripts/test has set it up once.
fn python() -> String {
    if let Ok(python) = std::env::var("SYNC_ENGINE_TEST_PYTHON") {
        return python;
    }
    let venv = std::env::var("SYNC_ENGINE_VENV")
        .unwrap_or_else(|_| "/var/tmp/sync-engine-tools/venv".to_string());
    let python = format!("{venv}/bin/python");
    assert!(
        Path::new(&python).exists(),
        "SYNC_ENGINE_TEST_PYTHON is not set and there is no {python}: run the suite with scripts/test \
         (it installs helm-python-sdk and kubernetes-validate into its venv and sets it)"
    );
    python
}

#[test]
fn the_chart_renders_lints_validates_and_does_what_its_values_say() {
    let python = python();
    let script = repo("helm/tests/test_chart.py");
    let ran = Command::new(&python)
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("{python} cannot run ({e}): run the suite with scripts/test"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(
        ran.status.success(),
        "{script} failed ({}); its report:\n{said}",
        ran.status
    );
    // unittest's closing line: every case ran and passed, none was skipped
    assert!(said.lines().any(|line| line == "OK"), "{said}");
    println!("{said}");
}

/// A chart reads only files inside its own directory, so the PrometheusRule is built from a copy
/// of the rules that `tests/prometheus.rs` checks with promtool: the copy must not drift.
#[test]
fn the_charts_copy_of_the_alert_rules_is_the_checked_original() {
    let original = std::fs::read(repo("helm/prometheus/sync-engine.rules.yaml")).unwrap();
    let copy = std::fs::read(repo("helm/sync-engine/files/sync-engine.rules.yaml")).unwrap();
    assert!(
        original == copy,
        "helm/sync-engine/files/sync-engine.rules.yaml differs from helm/prometheus/sync-engine.rules.yaml: \
         copy the original over it (cp helm/prometheus/sync-engine.rules.yaml helm/sync-engine/files/)"
    );
}
