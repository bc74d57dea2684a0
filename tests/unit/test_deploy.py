"""Deployment files checked with real tools: the Helm chart rendered by Helm's own engine
(helm-python-sdk) and validated against Kubernetes schemas; docker-compose.yml parsed by
docker-compose; the Prometheus config by promtool; the Grafana dashboard's JSON."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.support.tools import tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "hydrant"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
BROKER = {"broker": {"url": "kafka://kafka:9092"}}


def render(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every rendered manifest by kind (and name for Services), validated against Kubernetes 1.30."""
    manifests: dict[str, dict[str, Any]] = {}
    for path, text in helm.Chart.load(str(CHART)).render(values=values).items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            if doc["apiVersion"] != "monitoring.coreos.com/v1":  # a CRD: no built-in schema
                kubernetes_validate.validate(doc, "1.30", strict=True)
            name = doc["kind"] if doc["kind"] != "Service" else f"Service/{doc['metadata']['name']}"
            manifests[name] = doc
    return manifests


def test_helm_lint_is_clean() -> None:
    assert helm.lint(str(CHART))["errors"] == []


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_every_ci_values_file_renders_valid_manifests(values_file: Path) -> None:
    values = yaml.safe_load(values_file.read_text())
    manifests = render(values)
    assert {"ConfigMap", "StatefulSet"} <= set(manifests)
    services = [m for k, m in manifests.items() if k.startswith("Service/")]
    assert sorted(s["spec"].get("clusterIP", "") for s in services) == ["", "None"]  # client + headless

    sts = manifests["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = worker["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # room for a long recovery
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"]
    assert {"name": "data", "mountPath": "/var/lib/hydrant"} in worker["volumeMounts"]
    env = {e["name"]: e for e in worker["env"]}
    headless = next(s for s in services if s["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert env["HYDRANT_WEB_ADVERTISED_URL"]["value"].startswith(
        f"http://$(POD_NAME).{headless['metadata']['name']}."
    )
    assert env["HYDRANT_BROKER"]["value"] == values["broker"]["url"]
    assert env["HYDRANT_STANDBY_REPLICAS"]["value"] == str(values.get("standbyReplicas", 1))
    for secret_env in ("HYDRANT_SASL_PASSWORD", "HYDRANT_API_TOKEN"):
        if secret_env in env:  # secrets by reference only
            assert "value" not in env[secret_env] and env[secret_env]["valueFrom"]["secretKeyRef"]["name"]

    config = manifests["ConfigMap"]["data"]["pipeline.yaml"]
    pipeline = values.get("pipeline") or yaml.safe_load((CHART / "values.yaml").read_text())["pipeline"]
    assert yaml.safe_load(config) == yaml.safe_load(pipeline)


def test_the_pipeline_checksum_restarts_pods_when_the_pipeline_changes() -> None:
    default = render(BROKER)["StatefulSet"]["spec"]["template"]["metadata"]["annotations"][
        "checksum/pipeline"
    ]
    pipeline = (REPO / "examples" / "shop" / "pipeline.yaml").read_text().replace("period: 10m", "period: 5m")
    changed = render({**BROKER, "pipeline": pipeline})
    annotation = changed["StatefulSet"]["spec"]["template"]["metadata"]["annotations"]["checksum/pipeline"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotation) and annotation != default
    assert "period: 5m" in changed["ConfigMap"]["data"]["pipeline.yaml"]


def test_sasl_tls_values_reference_secrets_and_mount_the_ca() -> None:
    manifests = render(yaml.safe_load((CHART / "ci" / "sasl-tls-values.yaml").read_text()))
    pod = manifests["StatefulSet"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HYDRANT_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["HYDRANT_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "hydrant-kafka",
        "key": "password",
    }
    assert env["HYDRANT_SSL_CAFILE"]["value"] == "/etc/hydrant/tls/ca.crt"
    assert {"name": "tls", "secret": {"secretName": "kafka-ca"}} in pod["volumes"]


def test_service_monitor_scrapes_the_client_service_only() -> None:
    manifests = render(yaml.safe_load((CHART / "ci" / "monitoring-values.yaml").read_text()))
    monitor = manifests["ServiceMonitor"]
    selected = monitor["spec"]["selector"]["matchLabels"]
    matching = [
        k
        for k, m in manifests.items()
        if k.startswith("Service/") and selected.items() <= m["metadata"]["labels"].items()
    ]
    assert len(matching) == 1 and monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert "PodDisruptionBudget" not in manifests


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "broker.url is required"),
        ({"broker": {"url": "localhost:9092"}}, "broker.url must start with kafka://"),
        ({**BROKER, "security": {"protocol": "SASL_SSL"}}, "needs security.sasl.username"),
        (
            {**BROKER, "security": {"protocol": "SSL"}},
            "security.protocol=SSL needs security.tls.secretName",
        ),
        (
            {**BROKER, "replicaCount": 2, "podDisruptionBudget": {"maxUnavailable": 2}},
            "must be below replicaCount",
        ),
        ({**BROKER, "partitions": "four"}, "/partitions': got string, want integer"),
        ({**BROKER, "persistence": {"size": "lots"}}, "/persistence/size"),
        ({**BROKER, "replicas": 3}, "additional properties 'replicas' not allowed"),
    ],
)
def test_bad_values_fail_rendering_with_the_guards_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        render(values)


def test_docker_compose_file_is_valid() -> None:
    run = subprocess.run([tool("docker-compose"), "config"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    config = yaml.safe_load(run.stdout)
    services = config["services"]
    assert {"kafka", "topics", "worker-1", "worker-2", "prometheus", "grafana", "demo"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["demo"]["profiles"] == ["demo"]
    for worker in ("worker-1", "worker-2"):
        env = services[worker]["environment"]
        assert env["HYDRANT_WEB_ADVERTISED_URL"] == f"http://{worker}:6066"
        assert services[worker]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_prometheus_config_is_valid() -> None:
    run = subprocess.run(
        [tool("promtool"), "check", "config", str(REPO / "deploy" / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_runs_as_non_root_with_a_data_volume() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^USER 10001$", text, re.M)
    assert re.search(r"^VOLUME /var/lib/hydrant$", text, re.M)
    assert "python:3.11-slim" in text


def test_grafana_dashboard_is_provisioned_and_every_panel_has_queries() -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "hydrant.json").read_text())
    assert dashboard["uid"] == "hydrant" and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"] and all("hydrant_" in t["expr"] for t in panel["targets"]), panel["title"]
    provider = yaml.safe_load(
        (REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "hydrant.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
