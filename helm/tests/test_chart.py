#!/usr/bin/env python3
"""The Helm chart helm/sync-engine and its example helm/examples/app-with-sync-engine.

Renders them with Helm's own engine (PyPI helm-python-sdk: no helm binary, no cluster), lints them
with --strict, validates every rendered object against the Kubernetes 1.29 and 1.33 API schemas
(PyPI kubernetes-validate, strict: an unknown field is an error) and checks, on the rendered
objects, what each mode and option promises. The CRD kinds (ServiceMonitor, PodMonitor,
PrometheusRule, ScaledObject) have no schema there: they are skipped by name and their fields
asserted instead.

    $SYNC_ENGINE_TEST_PYTHON helm/tests/test_chart.py     # tests/helm.rs runs it in scripts/test
"""

import hashlib
import json
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

try:
    import kubernetes_validate
    import yaml
    from helm_python import Chart, _native, lint
except ImportError as missing:
    sys.exit(f"{missing}: this test needs PyPI helm-python-sdk and kubernetes-validate; scripts/test installs "
             "them into its tools venv (scripts/services.sh ensure_helm_tools) and names its Python in "
             "SYNC_ENGINE_TEST_PYTHON")

HELM = Path(__file__).resolve().parent.parent
CHART = HELM / "sync-engine"
EXAMPLE = HELM / "examples" / "app-with-sync-engine"
RULES = HELM / "prometheus" / "sync-engine.rules.yaml"
KUBE_VERSIONS = ("1.29.0", "1.33.0")
# Custom resources: no schema in kubernetes-validate, their fields are asserted below instead.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject"}
RELEASE, NAMESPACE = "orders", "sync"
FULLNAME = "orders-sync-engine"
SECRET_DIR = "/var/run/secrets/sync-engine"

_example_dir = None  # the example with its dependency in charts/, as `helm dependency build` leaves it


def setUpModule():
    global _example_dir
    _example_dir = Path(tempfile.mkdtemp(prefix="sync-engine-chart-")) / EXAMPLE.name
    shutil.copytree(EXAMPLE, _example_dir)
    shutil.copytree(CHART, _example_dir / "charts" / "sync-engine")


def tearDownModule():
    shutil.rmtree(_example_dir.parent, ignore_errors=True)


def render(chart_dir, values=None, kube_version="v1.33.0"):
    """The rendered objects (NOTES.txt aside), each with its template's name under `_source`.

    Rendered for `kube_version` (the .Capabilities the templates see) and strict (a missing key
    is an error, as in `helm lint --strict`): helm-python-sdk 0.2.2's Chart.render() does not pass
    these options on, so the call goes to its native helm_render directly.
    """
    options = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True,
               "kube_version": kube_version, "strict": True}
    with Chart.load(chart_dir) as chart:
        manifests = json.loads(
            _native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(options))
        )
    objects = []
    for source, text in sorted(manifests.items()):
        if source.endswith("NOTES.txt"):
            continue
        for obj in yaml.safe_load_all(text):
            if obj:
                obj["_source"] = source
                objects.append(obj)
    return objects


def render_fails(chart_dir, values, kube_version="v1.33.0"):
    """The error message of a render that must fail."""
    try:
        objects = render(chart_dir, values, kube_version)
    except Exception as error:  # helm_python raises its own error types; the message is what counts
        return str(error)
    raise AssertionError(f"rendering with {values} succeeded, expected a failure: {[o['kind'] for o in objects]}")


def render_valid(chart_dir, values=None):
    """Rendered for each Kubernetes version and validated against that version's schemas (strict);
    the objects (the same for each version) and the CRD kinds that were skipped."""
    renders = [render(chart_dir, values, "v" + version) for version in KUBE_VERSIONS]
    for version, objects in zip(KUBE_VERSIONS, renders):
        assert objects == renders[0], f"rendered differently for Kubernetes {version}"
    skipped = set()
    for version, objects in zip(KUBE_VERSIONS, renders):
        skipped |= validate(objects, version)
    return renders[0], skipped


def only(objects, kind):
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}: {[o['kind'] for o in objects]}"
    return found[0]


def kinds(objects):
    return sorted(o["kind"] for o in objects)


def validate(objects, version):
    """Every object valid for the Kubernetes `version` (strict); returns the CRD kinds skipped."""
    skipped, errors = set(), []
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            skipped.add(obj["kind"])
            continue
        manifest = {k: v for k, v in obj.items() if k != "_source"}
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{obj['_source']} {obj['kind']} on {version}: {error.message} at {list(error.path)}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{obj['_source']} {obj['kind']} on {version}: no schema ({error})")
    assert not errors, "kubernetes-validate --strict:\n" + "\n".join(errors)
    return skipped


def lint_problems(chart_dir, values=None, kube_version="v1.33.0"):
    report = lint(str(chart_dir), values, strict=True, kube_version=kube_version, with_subcharts=True)
    problems = [m for m in report.get("messages") or [] if m.get("severity", 0) >= 2]
    return problems + list(report.get("errors") or [])


def pod_spec(deployment):
    return deployment["spec"]["template"]["spec"]


def container(spec, name="sync-engine", init=False):
    found = [c for c in spec.get("initContainers" if init else "containers") or [] if c["name"] == name]
    assert len(found) == 1, f"no single {name} in {'initContainers' if init else 'containers'}: {spec}"
    return found[0]


def env(c):
    return {e["name"]: e for e in c.get("env", [])}


EVERYTHING_ON = {
    "partitions": 6,
    "replicas": 2,
    "secrets": {
        "sqlPassword": {"secretName": "sync-credentials", "key": "sql"},
        "redisPassword": {"secretName": "sync-credentials", "key": "redis"},
        "kafkaSaslPassword": {"secretName": "kafka-user", "key": "password"},
        "caBundle": {"secretName": "internal-ca", "key": "ca.crt"},
    },
    "rollOnConfigChange": True,
    "metrics": {
        "service": {"enabled": True},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
    },
    "autoscaling": {"keda": {"enabled": True, "minReplicaCount": 2, "maxReplicaCount": 12}},
}


class Lint(unittest.TestCase):
    def test_the_chart_lints_strictly_on_129_and_133(self):
        for version in ("v1.29.0", "v1.33.0"):
            for values in (None, EVERYTHING_ON, {"mode": "sidecar"}):
                with self.subTest(version=version, values=values):
                    self.assertEqual(lint_problems(CHART, values, version), [])

    def test_the_example_lints_strictly_with_its_dependency(self):
        for native in (True, False):
            with self.subTest(native=native):
                values = {"sync-engine": {"sidecar": {"native": native}}}
                self.assertEqual(lint_problems(_example_dir, values), [])

    def test_a_native_sidecar_is_refused_before_kubernetes_129(self):
        # (Helm's lint only logs a template's `fail`: the refusal is checked on a render for 1.28)
        said = render_fails(_example_dir, None, "v1.28.0")
        self.assertIn("native sidecars (restartPolicy: Always in initContainers) need Kubernetes >= 1.29", said)
        plain = render(_example_dir, {"sync-engine": {"sidecar": {"native": False}}}, "v1.28.0")
        self.assertNotIn("initContainers", pod_spec(only(plain, "Deployment")))
        self.assertEqual(validate(plain, "1.28.0"), set())


class Schema(unittest.TestCase):
    def test_typos_and_wrong_types_are_refused(self):
        for values, says in (
            ({"replica": 2}, "replica"),
            ({"rollOnConfigchange": True}, "rollOnConfigchange"),
            ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
            ({"mode": "daemonset"}, "mode"),
            ({"partitions": 0}, "partitions"),
            ({"replicas": "2"}, "replicas"),
            ({"http": {"portName": "sync-engine-metrics"}}, "portName"),
            ({"autoscaling": {"keda": {"minReplicaCount": 0}}}, "minReplicaCount"),
        ):
            with self.subTest(values=values):
                self.assertIn(says, render_fails(CHART, values))


class Standalone(unittest.TestCase):
    def test_defaults_render_a_valid_deployment_configmap_and_pdb(self):
        objects, skipped = render_valid(CHART)
        self.assertEqual(kinds(objects), ["ConfigMap", "Deployment", "PodDisruptionBudget"])
        self.assertEqual(skipped, set())
        deployment = only(objects, "Deployment")
        self.assertEqual(deployment["metadata"]["name"], FULLNAME)
        self.assertEqual(deployment["spec"]["replicas"], 1)
        spec = pod_spec(deployment)
        self.assertEqual(spec["terminationGracePeriodSeconds"], 60)
        self.assertIs(spec["automountServiceAccountToken"], False)
        self.assertNotIn("initContainers", spec)
        c = container(spec)
        self.assertEqual(c["image"], "ghcr.io/sync-engine/sync-engine:0.1.0")  # the appVersion
        self.assertEqual(c["args"], ["run", "--pipeline", "/etc/sync-engine/pipeline.toml"])
        self.assertNotIn("restartPolicy", c)
        self.assertEqual(env(c)["SYNC_ENGINE__HTTP__LISTEN"]["value"], "0.0.0.0:9464")
        self.assertEqual(c["ports"], [{"name": "sync-metrics", "containerPort": 9464, "protocol": "TCP"}])
        self.assertEqual(c["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "sync-metrics"})
        self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "sync-metrics"})
        self.assertEqual(c["resources"]["limits"]["memory"], "768Mi")
        self.assertIn("cpu", c["resources"]["requests"])
        pdb = only(objects, "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["maxUnavailable"], 1)
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"])

    def test_the_pipeline_is_a_configmap_mounted_as_a_directory(self):
        values = {"pipeline": 'sql_url = "mysql://sync@db:3306/sync"\n[kafka]\nbrokers = "k:9092"\n'}
        objects = render(CHART, values)
        configmap = only(objects, "ConfigMap")
        self.assertEqual(configmap["data"], {"pipeline.toml": values["pipeline"]})
        spec = pod_spec(only(objects, "Deployment"))
        volume = next(v for v in spec["volumes"] if v.get("configMap"))
        self.assertEqual(volume["configMap"], {"name": configmap["metadata"]["name"]})
        mounts = [m for m in container(spec)["volumeMounts"] if m["name"] == volume["name"]]
        # a directory: a subPath mount never sees the ConfigMap's updates, so hot reload would not
        self.assertEqual(mounts, [{"name": volume["name"], "mountPath": "/etc/sync-engine", "readOnly": True}])
        for c in spec["containers"]:
            for m in c["volumeMounts"]:
                self.assertNotIn("subPath", m)
                self.assertNotIn("subPathExpr", m)

    def test_tmp_is_the_only_writable_place_and_the_container_is_restricted(self):
        spec = pod_spec(only(render(CHART), "Deployment"))
        self.assertEqual(
            spec["securityContext"],
            {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
             "seccompProfile": {"type": "RuntimeDefault"}},
        )
        sc = container(spec)["securityContext"]
        self.assertIs(sc["runAsNonRoot"], True)
        self.assertEqual(sc["runAsUser"], 65532)
        self.assertIs(sc["readOnlyRootFilesystem"], True)
        self.assertIs(sc["allowPrivilegeEscalation"], False)
        self.assertIs(sc["privileged"], False)
        self.assertEqual(sc["capabilities"], {"drop": ["ALL"]})
        self.assertEqual(sc["seccompProfile"], {"type": "RuntimeDefault"})
        tmp = next(v for v in spec["volumes"] if v["name"] == "sync-engine-tmp")
        self.assertEqual(tmp["emptyDir"], {"sizeLimit": "64Mi"})
        self.assertIn({"name": "sync-engine-tmp", "mountPath": "/tmp"}, container(spec)["volumeMounts"])

    def test_replicas_above_partitions_are_refused(self):
        said = render_fails(CHART, {"replicas": 4, "partitions": 3})
        self.assertIn("replicas (4) > partitions (3)", said)
        deployment = only(render(CHART, {"replicas": 3, "partitions": 3}), "Deployment")
        self.assertEqual(deployment["spec"]["replicas"], 3)
        keda = {"autoscaling": {"keda": {"enabled": True, "minReplicaCount": 4}}, "partitions": 3}
        self.assertIn("replicas (4) > partitions (3)", render_fails(CHART, keda))

    def test_secrets_are_mounted_files_and_never_in_the_configmap(self):
        objects, skipped = render_valid(CHART, {"secrets": EVERYTHING_ON["secrets"]})
        self.assertEqual(skipped, set())
        spec = pod_spec(only(objects, "Deployment"))
        c = container(spec)
        variables = env(c)
        for name, file in (
            ("SYNC_ENGINE__SQL_PASSWORD_FILE", "sql-password"),
            ("SYNC_ENGINE__REDIS_PASSWORD_FILE", "redis-password"),
            ("SYNC_ENGINE__KAFKA__CLIENT__SASL__PASSWORD_FILE", "kafka-sasl-password"),
        ):
            self.assertEqual(variables[name], {"name": name, "value": f"{SECRET_DIR}/{file}"})
        self.assertIn({"name": "sync-engine-secrets", "mountPath": SECRET_DIR, "readOnly": True}, c["volumeMounts"])
        volume = next(v for v in spec["volumes"] if v["name"] == "sync-engine-secrets")
        self.assertEqual(
            volume["projected"]["sources"],
            [
                {"secret": {"name": "sync-credentials", "items": [{"key": "sql", "path": "sql-password"}]}},
                {"secret": {"name": "sync-credentials", "items": [{"key": "redis", "path": "redis-password"}]}},
                {"secret": {"name": "kafka-user", "items": [{"key": "password", "path": "kafka-sasl-password"}]}},
                {"secret": {"name": "internal-ca", "items": [{"key": "ca.crt", "path": "ca.pem"}]}},
            ],
        )
        # without secrets: no secret volume, no _FILE variables
        plain = pod_spec(only(render(CHART), "Deployment"))
        self.assertFalse([v for v in plain["volumes"] if v["name"] == "sync-engine-secrets"])
        self.assertFalse([n for n in env(container(plain)) if n.endswith("_FILE")])
        # a CA bundle from a ConfigMap instead
        ca = {"secrets": {"caBundle": {"configMapName": "internal-ca", "key": "ca.crt"}}}
        volume = next(v for v in pod_spec(only(render(CHART, ca), "Deployment"))["volumes"]
                      if v["name"] == "sync-engine-secrets")
        self.assertEqual(volume["projected"]["sources"],
                         [{"configMap": {"name": "internal-ca", "items": [{"key": "ca.crt", "path": "ca.pem"}]}}])
        both = {"secrets": {"caBundle": {"secretName": "a", "configMapName": "b", "key": "ca.crt"}}}
        self.assertIn("not both", render_fails(CHART, both))

    def test_a_pipeline_with_a_password_is_refused(self):
        for pipeline in (
            'sql_password = "hunter2"\n',
            '[kafka.client]\n"sasl.password" = "hunter2"\n',
            'redis_url = "redis://sync:hunter2@redis:6379"\n',
            'sql_url = "mysql://sync:hunter2@db:3306/sync"\n',
        ):
            with self.subTest(pipeline=pipeline):
                said = render_fails(CHART, {"pipeline": pipeline})
                self.assertIn("ConfigMap", said)
                self.assertNotIn("hunter2", said)
        # a user without a password, and a comment naming the key, are fine
        render(CHART, {"pipeline": 'redis_url = "rediss://sync@redis:6380"\n# sql_password comes from a file\n'})

    def test_roll_on_config_change_adds_the_pipelines_checksum(self):
        def annotations(values):
            return only(render(CHART, values), "Deployment")["spec"]["template"]["metadata"].get("annotations", {})

        self.assertNotIn("checksum/sync-engine-pipeline", annotations({}))
        pipeline = 'sql_url = "mysql://sync@db:3306/sync"\n'
        rolled = annotations({"rollOnConfigChange": True, "pipeline": pipeline, "podAnnotations": {"team": "orders"}})
        self.assertEqual(rolled["checksum/sync-engine-pipeline"], hashlib.sha256(pipeline.encode()).hexdigest())
        self.assertEqual(rolled["team"], "orders")
        changed = annotations({"rollOnConfigChange": True, "pipeline": pipeline + "log_level = \"debug\"\n"})
        self.assertNotEqual(changed["checksum/sync-engine-pipeline"], rolled["checksum/sync-engine-pipeline"])

    def test_monitoring_rules_and_keda(self):
        objects, skipped = render_valid(CHART, EVERYTHING_ON)
        self.assertEqual(
            kinds(objects),
            ["ConfigMap", "Deployment", "PodDisruptionBudget", "PrometheusRule", "ScaledObject", "Service", "ServiceMonitor"],
        )
        self.assertEqual(skipped, {"PrometheusRule", "ScaledObject", "ServiceMonitor"})
        deployment = only(objects, "Deployment")
        self.assertNotIn("replicas", deployment["spec"])  # KEDA owns the replica count
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

        service = only(objects, "Service")
        self.assertEqual(service["spec"]["ports"],
                         [{"name": "sync-metrics", "port": 9464, "targetPort": 9464, "protocol": "TCP"}])
        self.assertTrue(set(service["spec"]["selector"].items()) <= set(pod_labels.items()))

        monitor = only(objects, "ServiceMonitor")
        self.assertEqual(monitor["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(monitor["metadata"]["labels"]["release"], "prometheus")
        self.assertTrue(set(monitor["spec"]["selector"]["matchLabels"].items()) <= set(service["metadata"]["labels"].items()))
        self.assertEqual(monitor["spec"]["endpoints"],
                         [{"port": "sync-metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}])

        rule = only(objects, "PrometheusRule")
        self.assertEqual(rule["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(rule["metadata"]["labels"]["release"], "prometheus")
        self.assertEqual(rule["spec"]["groups"], yaml.safe_load(RULES.read_text())["groups"])
        alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
        self.assertIn("SyncEngineLagGrowing", alerts)

        scaled = only(objects, "ScaledObject")
        self.assertEqual(scaled["apiVersion"], "keda.sh/v1alpha1")
        self.assertEqual(scaled["spec"]["scaleTargetRef"],
                         {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]})
        self.assertEqual(scaled["spec"]["minReplicaCount"], 2)
        self.assertEqual(scaled["spec"]["maxReplicaCount"], 6)  # 12 asked, capped at the 6 partitions
        [trigger] = scaled["spec"]["triggers"]
        self.assertEqual(trigger["type"], "prometheus")
        query = trigger["metadata"]["query"]
        self.assertTrue(query.startswith("sum("), query)
        self.assertIn("max by (topic, partition) (sync_engine_consumer_lag_records{", query)
        self.assertIn(f'namespace="{NAMESPACE}"', query)
        self.assertIn(f'pod=~"{FULLNAME}-', query)
        self.assertEqual(trigger["metadata"]["threshold"], "1000")
        # without a maxReplicaCount: the partitions
        keda = {"partitions": 4, "autoscaling": {"keda": {"enabled": True}}}
        self.assertEqual(only(render(CHART, keda), "ScaledObject")["spec"]["maxReplicaCount"], 4)

    def test_a_pod_monitor_instead_and_never_both(self):
        objects = render(CHART, {"metrics": {"podMonitor": {"enabled": True}}})
        self.assertEqual(kinds(objects), ["ConfigMap", "Deployment", "PodDisruptionBudget", "PodMonitor"])
        monitor = only(objects, "PodMonitor")
        pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
        self.assertTrue(set(monitor["spec"]["selector"]["matchLabels"].items()) <= set(pod_labels.items()))
        self.assertEqual(monitor["spec"]["podMetricsEndpoints"][0]["port"], "sync-metrics")
        both = {"metrics": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}}}
        self.assertIn("enable one", render_fails(CHART, both))

    def test_the_charts_rules_are_the_checked_original(self):
        self.assertEqual((CHART / "files" / "sync-engine.rules.yaml").read_bytes(), RULES.read_bytes(),
                         "copy helm/prometheus/sync-engine.rules.yaml to helm/sync-engine/files/")


class Sidecar(unittest.TestCase):
    def test_sidecar_mode_renders_no_workload_of_its_own(self):
        objects = render(CHART, {"mode": "sidecar", "metrics": {"podMonitor": {"enabled": True}}})
        self.assertEqual(kinds(objects), ["ConfigMap", "PodMonitor"])
        self.assertIn("only in mode standalone",
                      render_fails(CHART, {"mode": "sidecar", "autoscaling": {"keda": {"enabled": True}}}))

    def _example(self, native):
        objects, skipped = render_valid(_example_dir, {"sync-engine": {"sidecar": {"native": native}}})
        self.assertEqual(kinds(objects), ["ConfigMap", "Deployment", "Service"])
        self.assertEqual(skipped, set())
        deployment = only(objects, "Deployment")
        self.assertEqual(deployment["metadata"]["name"], "orders-app")
        spec = pod_spec(deployment)
        self.assertEqual(spec["terminationGracePeriodSeconds"], 60)
        configmap = only(objects, "ConfigMap")
        self.assertEqual(configmap["metadata"]["name"], f"{FULLNAME}-pipeline")
        volume = next(v for v in spec["volumes"] if v["name"] == "sync-engine-pipeline")
        self.assertEqual(volume["configMap"]["name"], configmap["metadata"]["name"])
        self.assertEqual(deployment["spec"]["template"]["metadata"]["labels"]["sync-engine/pipeline"], FULLNAME)
        return spec

    def test_the_example_as_a_native_sidecar(self):
        spec = self._example(native=True)
        self.assertEqual([c["name"] for c in spec["containers"]], ["app"])
        se = container(spec, init=True)
        self.assertEqual(se["restartPolicy"], "Always")
        self.assertEqual(se["image"], "ghcr.io/sync-engine/sync-engine:0.1.0")
        self.assertEqual(se["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(se["securityContext"]["capabilities"], {"drop": ["ALL"]})
        # the example's secrets: files, and the CA bundle from a ConfigMap
        self.assertEqual(env(se)["SYNC_ENGINE__KAFKA__CLIENT__SASL__PASSWORD_FILE"]["value"],
                         f"{SECRET_DIR}/kafka-sasl-password")
        self.assertIn("sasl.mechanism", only(render(_example_dir), "ConfigMap")["data"]["pipeline.toml"])
        # the same container the standalone Deployment runs, but for restartPolicy
        standalone = container(pod_spec(only(render(CHART, {"image": {"tag": "0.1.0"}}), "Deployment")))
        self.assertEqual(set(se) - set(standalone), {"restartPolicy"})
        self.assertEqual(se["args"], standalone["args"])
        self.assertEqual(se["securityContext"], standalone["securityContext"])

    def test_the_example_as_a_plain_container(self):
        spec = self._example(native=False)
        self.assertNotIn("initContainers", spec)
        self.assertEqual([c["name"] for c in spec["containers"]], ["app", "sync-engine"])
        self.assertNotIn("restartPolicy", container(spec))
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                self.assertNotIn("subPath", m)

    def test_the_example_is_scraped_through_the_charts_service_or_pod_monitor(self):
        objects = render(_example_dir, {"sync-engine": {"metrics": {"serviceMonitor": {"enabled": True}}}})
        self.assertEqual(kinds(objects), ["ConfigMap", "Deployment", "Service", "Service", "ServiceMonitor"])
        app = next(o for o in objects if o["kind"] == "Deployment")
        pod_labels = app["spec"]["template"]["metadata"]["labels"]
        metrics = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == f"{FULLNAME}-metrics")
        self.assertTrue(set(metrics["spec"]["selector"].items()) <= set(pod_labels.items()))
        self.assertEqual(metrics["spec"]["ports"][0]["targetPort"],
                         container(pod_spec(app), init=True)["ports"][0]["containerPort"])
        monitor = only(render(_example_dir, {"sync-engine": {"metrics": {"podMonitor": {"enabled": True}}}}), "PodMonitor")
        self.assertTrue(set(monitor["spec"]["selector"]["matchLabels"].items()) <= set(pod_labels.items()))

    def test_the_example_can_leave_readiness_to_the_application(self):
        values = {"sync-engine": {"readinessProbe": {"enabled": False}}}
        se = container(pod_spec(only(render(_example_dir, values), "Deployment")), init=True)
        self.assertNotIn("readinessProbe", se)
        self.assertEqual(se["livenessProbe"]["httpGet"]["path"], "/healthz")

    def test_the_example_refuses_more_replicas_than_partitions(self):
        self.assertIn("replicas (8) > partitions (6)", render_fails(_example_dir, {"replicas": 8}))

    def test_the_example_rolls_on_config_change_when_asked(self):
        def annotations(values):
            deployment = only(render(_example_dir, values), "Deployment")
            return deployment["spec"]["template"]["metadata"].get("annotations") or {}

        self.assertEqual(annotations({}), {})
        rolled = annotations({"sync-engine": {"rollOnConfigChange": True}})
        pipeline = only(render(_example_dir), "ConfigMap")["data"]["pipeline.toml"]
        self.assertEqual(rolled, {"checksum/sync-engine-pipeline": hashlib.sha256(pipeline.encode()).hexdigest()})


if __name__ == "__main__":
    result = unittest.main(verbosity=2, exit=False).result
    sys.exit(0 if result.wasSuccessful() and not result.skipped else 1)
