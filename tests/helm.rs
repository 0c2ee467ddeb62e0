//! The Helm chart `helm/sync-engine` and its example `helm/examples/app-with-sync-engine`:
//! rendered by Helm's own engine, linted with `--strict`, every object valid for Kubernetes 1.29
//! and 1.33 (`kubernetes-validate --strict`; the CRD kinds are checked field by field instead),
//! and each mode and option checked on what it renders: `helm/tests/test_chart.py` does it, with
//! PyPI `helm-python-sdk` and `kubernetes-validate`, which scripts/test installs into its venv and
//! names in `SYNC_ENGINE_TEST_PYTHON`. Without them these tests fail, they do not skip.

#[path = "common/deploy.rs"]
mod deploy;

use deploy::repo;

#[test]
fn the_chart_renders_lints_validates_and_does_what_its_values_say() {
    deploy::python_unittest("helm/tests/test_chart.py");
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
