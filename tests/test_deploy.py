"""Deployment files: compose.yaml, Dockerfile and deploy/k8s, checked offline.

No cluster or Docker daemon is available here, so this is the
`kubectl apply --dry-run=client` of this repo: every manifest parses, carries
the required fields, refers to things that exist, and hands each role a
configuration that `notifier.config.load` accepts for that role.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from notifier import cli, config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
ROLES = ("api", "router", "delivery")


def _docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def test_every_manifest_has_the_required_fields() -> None:
    docs = _docs()
    assert len(docs) >= 10
    for d in docs:
        assert d.get("apiVersion") and d.get("kind"), d
        assert d["metadata"].get("name"), d
        assert d["metadata"]["labels"]["app.kubernetes.io/name"] == "notifier"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert len(kinds) == len(docs), "duplicate kind/name"


@pytest.mark.parametrize("role", ROLES)
def test_role_deployments(role: str) -> None:
    dep = _one("Deployment", f"notifier-{role}")
    spec = dep["spec"]
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 30
    (container,) = pod["spec"]["containers"]
    assert container["args"] == [role] and role in cli.ROLES
    assert container["image"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8010}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    pdb = _one("PodDisruptionBudget", f"notifier-{role}")
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_router_drain_outlasts_delivery_and_api() -> None:
    grace = {
        r: _one("Deployment", f"notifier-{r}")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        for r in ROLES
    }
    assert grace["router"] >= grace["delivery"] >= grace["api"]


def test_service_hpa_and_job_point_at_real_things() -> None:
    svc = _one("Service", "notifier-api")
    api_labels = _one("Deployment", "notifier-api")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= api_labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"

    hpa = _one("HorizontalPodAutoscaler", "notifier-delivery")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "notifier-delivery")
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    job = _one("Job", "notifier-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


@pytest.mark.parametrize("role", [*ROLES, "migrate"])
def test_k8s_configuration_is_accepted_by_each_role(role: str, tmp_path: Path) -> None:
    data = _one("ConfigMap", "notifier-config")["data"]
    secrets = _one("Secret", "notifier-secrets")["stringData"]
    for key, value in secrets.items():
        (tmp_path / key).write_text(value)
    kind, name = (
        ("Job", "notifier-migrate") if role == "migrate" else ("Deployment", f"notifier-{role}")
    )
    (container,) = _one(kind, name)["spec"]["template"]["spec"]["containers"]
    env = dict(data)
    for item in container["env"]:
        if "value" in item:
            assert item["value"].startswith("/run/secrets/notifier/")
            key = item["value"].rsplit("/", 1)[1]
            assert key in secrets, f"{item['name']} points at a missing secret key"
            env[item["name"]] = str(tmp_path / key)
    settings = config.load(env, role=role)
    assert settings.port == 8010


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return doc


def test_compose_services() -> None:
    services = _compose()["services"]
    for name in ("postgres", "rabbitmq", "neo4j"):
        assert services[name]["image"].split(":")[0] in ("postgres", "rabbitmq", "neo4j")
        assert services[name]["healthcheck"]["test"]
        assert services[name]["volumes"]
    assert services["migrate"]["command"] == ["migrate"]
    for role in ROLES:
        svc = services[role]
        assert svc["build"] == "."
        assert svc["command"] == [role]
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "8010/health" in " ".join(svc["healthcheck"]["test"])


@pytest.mark.parametrize("role", [*ROLES, "migrate"])
def test_compose_configuration_is_accepted_by_each_role(role: str) -> None:
    env = {k: str(v) for k, v in _compose()["services"][role]["environment"].items()}
    assert config.load(env, role=role).postgres_host == "postgres"


def test_dockerfile_is_multi_stage_non_root_and_frozen() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2
    assert "uv sync --frozen" in text
    user_lines = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user_lines and user_lines[-1] != "USER root"
    assert 'ENTRYPOINT ["notifier"]' in text
