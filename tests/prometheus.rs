//! The Prometheus alert rules, `helm/prometheus/sync-engine.rules.yaml`: valid (`promtool check
//! rules`), firing on the situations they are for and quiet on the nearest healthy ones
//! (`promtool test rules` on `sync-engine.rules.test.yaml`), and naming only metrics the
//! sidecar exports; every metric it exports has its line in the README. promtool comes with scripts/test (Debian's
//! `prometheus` package); without it these tests fail, they do not skip.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

const RULES: &str = "helm/prometheus/sync-engine.rules.yaml";
const RULE_TESTS: &str = "helm/prometheus/sync-engine.rules.test.yaml";

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

fn promtool_succeeds(args: &[&str]) -> String {
    let ran = common::promtool(args, None);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(
        ran.status.success(),
        "promtool {args:?}: {}\n{said}",
        ran.status
    );
    said
}

#[test]
fn the_rules_are_valid() {
    let said = promtool_succeeds(&["check", "rules", &repo(RULES)]);
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn the_rules_fire_when_they_should_and_only_then() {
    let said = promtool_succeeds(&["test", "rules", &repo(RULE_TESTS)]);
    assert!(said.contains("SUCCESS"), "{said}");
}

/// `sync_engine_*` names in `text`, histogram series (`_bucket`, `_count`, `_sum`) by their
/// histogram's name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sync_engine_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| base.ends_with("_seconds") || base.ends_with("_records"))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_rules_name_only_exported_and_documented_metrics() {
    let rules = std::fs::read_to_string(repo(RULES)).unwrap();
    let catalogue = std::fs::read_to_string(repo("src/sidecar/metrics.rs")).unwrap();
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let used = metric_names(&rules);
    assert!(used.len() >= 8, "{used:?}");
    let exported = metric_names(&catalogue);
    assert!(exported.len() >= 20, "{exported:?}");
    for name in &exported {
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "{name} (src/sidecar/metrics.rs) has no line in the README's metrics table"
        );
    }
    for name in used {
        assert!(
            catalogue.contains(&format!("\"{name}\"")),
            "{name} is not in the catalogue of src/sidecar/metrics.rs"
        );
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is not in the README's metrics table"
        );
    }
}
