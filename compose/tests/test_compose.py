"""docker-compose.yml and docker-compose.local.yml, checked without running them (tests/compose.rs
runs this with scripts/test's venv Python, and runs the stack itself separately):

- both files, and the two merged by podman-compose, are valid against the Compose Specification
  JSON Schema (the copy docker-compose 1.29.2 ships: scripts/services.sh puts it at
  $SYNC_ENGINE_TOOLS_DIR/compose_spec.json);
- the stack is wired as the README says: upstream images, the pipeline's topics created before
  the sidecar starts, the sidecar pointed at the services and started only once they are healthy,
  read-only, with time to drain; Prometheus scraping the sidecar's port with the alert rules;
- the local override changes images only (each one built here, never pulled).
"""
import json
import os
import re
import subprocess
import sys
import tomllib
import unittest
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "docker-compose.yml"
LOCAL = ROOT / "docker-compose.local.yml"
TOOLS = Path(os.environ.get("SYNC_ENGINE_TOOLS_DIR", "/var/tmp/sync-engine-tools"))
PODMAN_COMPOSE = Path(sys.executable).parent / "podman-compose"


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def merged():
    """What podman-compose makes of the two files (interpolated with the defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_HOST_PORT") and k != "SYNC_ENGINE_IMAGE"}
    ran = subprocess.run(
        [str(PODMAN_COMPOSE), "-f", str(BASE), "-f", str(LOCAL), "config"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    if ran.returncode != 0:
        raise AssertionError(f"podman-compose config failed ({ran.returncode}):\n{ran.stdout}{ran.stderr}")
    return yaml.safe_load(ran.stdout)


class ComposeFiles(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        schema_path = TOOLS / "compose_spec.json"
        if not schema_path.exists():
            raise AssertionError(f"{schema_path} is missing: run the suite with scripts/test (ensure_compose_tools)")
        cls.schema = json.loads(schema_path.read_text())
        cls.base = load(BASE)
        cls.local = load(LOCAL)
        cls.pipeline = tomllib.loads((ROOT / "pipelines/default.toml").read_text())

    def assert_valid(self, doc, what):
        validator = jsonschema.Draft201909Validator(self.schema)
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        self.assertEqual([], [f"{list(e.path)}: {e.message}" for e in errors], what)

    def test_the_files_are_valid_compose(self):
        self.assert_valid(self.base, "docker-compose.yml")
        self.assert_valid(self.local, "docker-compose.local.yml")
        self.assert_valid(merged(), "the two merged by podman-compose config")

    def test_the_schema_catches_a_wrong_file(self):
        wrong = yaml.safe_load(yaml.safe_dump(self.base))
        wrong["services"]["sync-engine"]["depends_on"]["mariadb"]["condition"] = "service_ready"
        wrong["services"]["kafka"]["helthcheck"] = wrong["services"]["kafka"].pop("healthcheck")
        validator = jsonschema.Draft201909Validator(self.schema)
        self.assertGreaterEqual(len(list(validator.iter_errors(wrong))), 1)

    def test_services_and_upstream_images(self):
        services = self.base["services"]
        self.assertEqual({"kafka", "kafka-init", "mariadb", "redis", "sync-engine", "prometheus"}, set(services))
        self.assertRegex(services["kafka"]["image"], r"^apache/kafka:\d")
        self.assertEqual(services["kafka-init"]["image"], services["kafka"]["image"])
        self.assertRegex(services["mariadb"]["image"], r"^mariadb:\d")
        self.assertRegex(services["redis"]["image"], r"^redis/redis-stack-server:")
        self.assertRegex(services["prometheus"]["image"], r"^prom/prometheus:v\d")
        # the sidecar is built from this repository's Containerfile, the full build
        self.assertEqual({"context": ".", "target": "runtime"}, services["sync-engine"]["build"])

    def test_kafka_is_one_kraft_node_whose_topics_are_the_pipelines(self):
        env = self.base["services"]["kafka"]["environment"]
        self.assertEqual("broker,controller", env["KAFKA_PROCESS_ROLES"])
        self.assertIn("PLAINTEXT://kafka:9092", env["KAFKA_ADVERTISED_LISTENERS"])
        self.assertEqual("false", env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"])
        script = self.base["services"]["kafka-init"]["command"][0]
        kafka = self.pipeline["kafka"]
        wanted = [kafka["input_topic"], kafka["output_topic"], kafka["dlq_topic"]]
        self.assertEqual(wanted, re.search(r"for topic in ([^;]+);", script).group(1).split())
        self.assertIn("--if-not-exists", script)
        self.assertIn("set -e", script)

    def test_the_sidecar_waits_for_its_services_and_points_at_them(self):
        sidecar = self.base["services"]["sync-engine"]
        self.assertEqual(
            {
                "kafka-init": {"condition": "service_completed_successfully"},
                "mariadb": {"condition": "service_healthy"},
                "redis": {"condition": "service_healthy"},
            },
            sidecar["depends_on"],
        )
        for name in ("kafka", "mariadb", "redis"):
            self.assertIn("healthcheck", self.base["services"][name], name)
        env = sidecar["environment"]
        self.assertEqual("kafka:9092", env["SYNC_ENGINE__KAFKA__BROKERS"])
        mariadb = self.base["services"]["mariadb"]["environment"]
        self.assertEqual(
            f"mysql://{mariadb['MARIADB_USER']}:{mariadb['MARIADB_PASSWORD']}@mariadb:3306/{mariadb['MARIADB_DATABASE']}",
            env["SYNC_ENGINE__SQL_URL"],
        )
        self.assertEqual("redis://redis:6379", env["SYNC_ENGINE__REDIS_URL"])
        self.assertIs(True, sidecar["read_only"])
        self.assertEqual(["/tmp"], sidecar["tmpfs"])
        self.assertEqual("unless-stopped", sidecar["restart"])
        seconds = int(sidecar["stop_grace_period"].rstrip("s"))
        self.assertGreaterEqual(seconds, 30)
        self.assertEqual(["${SYNC_ENGINE_HOST_PORT:-9464}:9464"], sidecar["ports"])

    def test_prometheus_scrapes_the_sidecar_with_the_alert_rules(self):
        prometheus = self.base["services"]["prometheus"]
        # host path per container path (`./host:/container:ro`)
        mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
        config = load(ROOT / mounts["/etc/prometheus/prometheus.yml"])
        rules = mounts["/etc/prometheus/rules/sync-engine.rules.yaml"]
        self.assertEqual("./helm/prometheus/sync-engine.rules.yaml", rules)
        self.assertTrue((ROOT / rules).is_file(), rules)
        self.assertEqual(["/etc/prometheus/rules/*.yaml"], config["rule_files"])
        targets = [t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]
        self.assertEqual(["sync-engine:9464"], targets)
        self.assertIn("--config.file=/etc/prometheus/prometheus.yml", prometheus["command"])

    def test_the_local_override_changes_images_only(self):
        for name, service in self.local["services"].items():
            self.assertIn(name, self.base["services"])
            self.assertEqual({"image", "pull_policy"}, set(service), name)
            self.assertEqual("never", service["pull_policy"], name)
        self.assertEqual(set(self.base["services"]), set(self.local["services"]))
        both = merged()["services"]
        for name, service in both.items():
            self.assertTrue(service["image"].startswith("localhost/"), (name, service["image"]))
        self.assertEqual("localhost/sync-engine:dev", both["sync-engine"]["image"])
        for name in ("kafka", "mariadb", "redis", "prometheus"):
            stand_in = {"redis": "redis-stack"}.get(name, name)
            self.assertEqual(f"localhost/sync-engine-stand-in/{stand_in}:dev", both[name]["image"])
            self.assertTrue((ROOT / "scripts/stand-ins" / stand_in / "Containerfile").is_file())

    def test_the_readme_runs_what_the_compose_file_says(self):
        readme = (ROOT / "README.md").read_text()
        header = BASE.read_text().split("\n\n", 1)[0]
        commands = [line[4:] for line in header.splitlines() if line.startswith("#   ")]
        self.assertIn("docker compose up -d --build", commands)
        for command in ("docker compose up -d --build", "docker compose down -v",
                        "scripts/stand-in-images",
                        "podman-compose -f docker-compose.yml -f docker-compose.local.yml up -d"):
            self.assertTrue(command in readme, f"the README does not say `{command}`")


if __name__ == "__main__":
    unittest.main(verbosity=2)
