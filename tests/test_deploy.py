"""Deployment files: compose.yaml, Dockerfile, .dockerignore and deploy/k8s, checked offline.

No cluster or Docker daemon is available here, so this is the
`kubectl apply --dry-run=client` and `docker compose config` of this repo:
every manifest parses and carries the required fields, compose.yaml is valid
against the Compose specification, each role gets a configuration that
`notifier.config.load` accepts, and the Dockerfile parses into valid
instructions. The Dockerfile's build stage is replayed without Docker (same uv
version, same files, same commands) and its result is run as a non-root user,
from another directory, with the source tree gone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import yaml

from notifier import cli, config
from notifier.api.app import GRACEFUL_SHUTDOWN_SECONDS
from notifier.delivery import Limits
from notifier.devkit import services

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
ROLES = ("api", "router", "delivery")
# What an operator puts in place of the shipped placeholders.
REAL_JWT_KEY = "a-real-key-generated-by-openssl-rand-0123456789"
REAL_ENCRYPTION_KEY = "3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs="  # 32 bytes, base64
BACKING = ("postgres", "rabbitmq", "neo4j")
# The services each role talks to: the router all three; the API PostgreSQL and
# the graph (its /health probes both); delivery PostgreSQL only.
ROLE_NEEDS = {
    "router": {"postgres", "rabbitmq", "neo4j"},
    "api": {"postgres", "neo4j"},
    "delivery": {"postgres"},
}
# Where each official image keeps its data.
DATA_DIRS = {
    "postgres": "/var/lib/postgresql/data",
    "rabbitmq": "/var/lib/rabbitmq",
    "neo4j": "/data",
}
DEFAULT_PORT = config.load({"POSTGRES_PASSWORD": "x"}, role="migrate").port


# --- deploy/k8s ----------------------------------------------------------------


def _docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _grace(role: str) -> int:
    pod = _one("Deployment", f"notifier-{role}")["spec"]["template"]["spec"]
    seconds: int = pod["terminationGracePeriodSeconds"]
    return seconds


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
    assert ports == {"http": DEFAULT_PORT}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    pdb = _one("PodDisruptionBudget", f"notifier-{role}")
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_router_drain_outlasts_delivery_and_api() -> None:
    grace = {r: _grace(r) for r in ROLES}
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


def test_k8s_pods_run_as_the_image_user_on_a_read_only_root() -> None:
    uid, _ = _image_user()
    pods = [_one("Deployment", f"notifier-{r}")["spec"]["template"] for r in ROLES]
    pods.append(_one("Job", "notifier-migrate")["spec"]["template"])
    for pod in pods:
        ctx = pod["spec"]["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == uid
        (container,) = pod["spec"]["containers"]
        sec = container["securityContext"]
        assert sec["readOnlyRootFilesystem"] is True
        assert sec["allowPrivilegeEscalation"] is False
        assert sec["capabilities"]["drop"] == ["ALL"]


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
    if role in ("api", "delivery"):  # they seal webhook secrets: the placeholder is refused
        with pytest.raises(config.ConfigError, match=r"^NOTIFIER_ENCRYPTION_KEY: "):
            config.load(env, role=role)
        (tmp_path / "NOTIFIER_ENCRYPTION_KEY").write_text(REAL_ENCRYPTION_KEY)
    if role == "api":  # the shipped key is a placeholder: refused until replaced
        with pytest.raises(config.ConfigError, match=r"^JWT_SECRET_KEY: .*placeholder"):
            config.load(env, role=role)
        (tmp_path / "JWT_SECRET_KEY").write_text(REAL_JWT_KEY)
    settings = config.load(env, role=role)
    assert settings.port == DEFAULT_PORT


# --- compose.yaml ---------------------------------------------------------------


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return doc


def _compose_errors(doc: dict[str, Any]) -> list[str]:
    # The Compose specification's JSON schema, as check-jsonschema vendors it.
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def _seconds(duration: str) -> float:
    """A Compose duration ("1m30s", "120s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_file_follows_the_compose_specification() -> None:
    doc = _compose()
    assert _compose_errors(doc) == []
    # The schema bites: a misspelt key and an unknown condition are refused.
    typo = copy.deepcopy(doc)
    typo["services"]["api"]["depends_om"] = typo["services"]["api"].pop("depends_on")
    errors = _compose_errors(typo)
    assert errors and all(e.startswith("['services', 'api']") for e in errors), errors
    assert "depends_om" in errors[0]
    condition = copy.deepcopy(doc)
    condition["services"]["router"]["depends_on"]["migrate"]["condition"] = "service_done"
    errors = _compose_errors(condition)
    assert errors and errors[0].startswith("['services', 'router', 'depends_on']"), errors


def test_compose_backing_services() -> None:
    compose = _compose()
    services_, volumes = compose["services"], compose["volumes"]
    for name in BACKING:
        svc = services_[name]
        # Docker Official Images: no registry or namespace, a pinned major version.
        image, _, tag = svc["image"].partition(":")
        assert image == name and tag and tag != "latest", svc["image"]
        health = svc["healthcheck"]
        assert health["test"][0] in ("CMD", "CMD-SHELL") and len(health["test"]) > 1
        assert _seconds(health["interval"]) > 0 and health["retries"] >= 5
        assert svc["restart"] == "unless-stopped"
        mounts = dict(v.split(":", 1) for v in svc["volumes"])
        assert mounts == {f"{name}-data": DATA_DIRS[name]}
        assert f"{name}-data" in volumes
    # pg_isready over TCP: the first-start initialisation server listens on the
    # Unix socket only and must not count as healthy.
    assert "-h" in services_["postgres"]["healthcheck"]["test"]


def test_compose_credentials_match_between_services_and_roles() -> None:
    services_ = _compose()["services"]
    env = services_["api"]["environment"]
    pg = services_["postgres"]["environment"]
    assert env["POSTGRES_USERNAME"] == pg.get("POSTGRES_USER", "postgres")
    assert env["POSTGRES_PASSWORD"] == pg["POSTGRES_PASSWORD"]
    assert env["POSTGRES_DATABASE"] == pg["POSTGRES_DB"]
    assert services_["neo4j"]["environment"]["NEO4J_AUTH"] == (
        f"{env['NEO4J_USERNAME']}/{env['NEO4J_PASSWORD']}"
    )
    assert len(env["NEO4J_PASSWORD"]) >= 8  # Neo4j 5 refuses shorter ones
    rabbit = services_["rabbitmq"]["environment"]
    assert (env["RABBITMQ_USERNAME"], env["RABBITMQ_PASSWORD"]) == (
        rabbit["RABBITMQ_DEFAULT_USER"],
        rabbit["RABBITMQ_DEFAULT_PASS"],
    )
    assert env["RABBITMQ_USERNAME"] != "guest"  # guest may only connect from loopback
    for name in BACKING:
        prefix = "NEO4J" if name == "neo4j" else name.upper()
        assert env[f"{prefix}_HOST"] == name


def test_compose_roles_and_migrate() -> None:
    services_ = _compose()["services"]
    migrate = services_["migrate"]
    assert migrate["build"] == "." and migrate["command"] == ["migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no" and "healthcheck" not in migrate
    for role in ROLES:
        svc = services_[role]
        assert svc["build"] == "."
        assert svc["command"] == [role] and role in cli.ROLES
        assert svc["environment"] == migrate["environment"]
        expected = {"migrate": {"condition": "service_completed_successfully"}}
        expected |= {s: {"condition": "service_healthy"} for s in ROLE_NEEDS[role]}
        assert svc["depends_on"] == expected
        assert svc["restart"] == "unless-stopped"
        url = f"http://127.0.0.1:{svc['environment']['NOTIFIER_PORT']}/health"
        assert url in " ".join(svc["healthcheck"]["test"])
    for svc in services_.values():
        for dep, cond in svc.get("depends_on", {}).items():
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services_[dep], dep


def test_compose_ports_follow_the_contract() -> None:
    services_ = _compose()["services"]
    port = int(services_["api"]["environment"]["NOTIFIER_PORT"])
    assert port == DEFAULT_PORT == int(_final_stage().values("EXPOSE")[-1])
    assert services_["api"]["ports"] == [f"{port}:{port}"]
    # Router and delivery serve /health and /metrics on the same port inside
    # their containers; publishing them too would collide with the API.
    assert "ports" not in services_["router"] and "ports" not in services_["delivery"]


def test_compose_stop_grace_outlasts_each_drain_and_matches_k8s() -> None:
    services_ = _compose()["services"]
    grace = {r: _seconds(services_[r]["stop_grace_period"]) for r in ROLES}
    assert grace == {r: _grace(r) for r in ROLES}
    env = {k: str(v) for k, v in services_["delivery"]["environment"].items()}
    delivery = config.load(env | {"NOTIFIER_ENCRYPTION_KEY": REAL_ENCRYPTION_KEY}, role="delivery")
    assert grace["delivery"] > Limits.from_settings(delivery).drain_seconds
    assert grace["api"] > GRACEFUL_SHUTDOWN_SECONDS
    # The router gives its unit back between batches; it gets the longest.
    assert grace["router"] >= grace["delivery"] >= grace["api"]


@pytest.mark.parametrize("role", [*ROLES, "migrate"])
def test_compose_configuration_is_accepted_by_each_role(role: str) -> None:
    env = {k: str(v) for k, v in _compose()["services"][role]["environment"].items()}
    # `${NAME:?…}`: compose stops unless the operator sets it; as given, it is refused.
    assert env["NOTIFIER_ENCRYPTION_KEY"].startswith("${NOTIFIER_ENCRYPTION_KEY:?")
    with pytest.raises(config.ConfigError, match=r"^NOTIFIER_ENCRYPTION_KEY: "):
        config.load(env, role=role)
    env["NOTIFIER_ENCRYPTION_KEY"] = REAL_ENCRYPTION_KEY
    if role == "api":  # `${JWT_SECRET_KEY:?…}`: compose stops unless the operator sets it
        assert env["JWT_SECRET_KEY"].startswith("${JWT_SECRET_KEY:?")
        with pytest.raises(config.ConfigError, match=r"^JWT_SECRET_KEY: .*placeholder"):
            config.load(env, role=role)
        env["JWT_SECRET_KEY"] = REAL_JWT_KEY
    assert config.load(env, role=role).postgres_host == "postgres"


# --- Dockerfile and .dockerignore -----------------------------------------------

INSTRUCTIONS = frozenset(
    (
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
        "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
        "WORKDIR",
    )
)  # fmt: skip
FLAGS = {
    "ADD": {"chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"},
    "COPY": {"from", "chown", "chmod", "link", "parents", "exclude"},
    "RUN": {"mount", "network", "security"},
    "FROM": {"platform"},
}
# The default PATH of the python images, before the Dockerfile prepends to it.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    line: int
    keyword: str
    flags: dict[str, str]
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form's argv, or None for the shell form."""
        if not self.args.startswith("["):
            return None
        argv = json.loads(self.args)
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), self
        return argv


@dataclass
class Stage:
    """A FROM and the instructions after it."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """This stage's instructions of one kind."""
        return [i for i in self.instructions if i.keyword == keyword]

    def values(self, keyword: str) -> list[str]:
        """The arguments of this stage's instructions of one kind."""
        return [i.args for i in self.all(keyword)]

    def env(self, start: dict[str, str] | None = None) -> dict[str, str]:
        """The environment after this stage's ENV instructions, `$VAR`s expanded."""
        env = dict(start or {})
        for args in self.values("ENV"):
            tokens = shlex.split(args)
            pairs = [t.split("=", 1) for t in tokens] if "=" in tokens[0] else [tokens]
            for key, value in pairs:
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), value)
        return env


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile; fails on anything Docker would refuse."""
    out: list[Instruction] = []
    pending, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):  # also inside a continuation, as Docker does
            continue
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        pending = ""
        keyword, rest = keyword.upper(), rest.strip()
        assert keyword in INSTRUCTIONS, f"line {start}: unknown instruction {keyword}"
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            name, _, value = token[2:].partition("=")
            assert name in FLAGS.get(keyword, set()), f"line {start}: {keyword} --{name}"
            flags[name] = value
            rest = rest.strip()
        assert rest, f"line {start}: {keyword} without arguments"
        instruction = Instruction(start, keyword, flags, rest)
        if keyword in ("CMD", "ENTRYPOINT", "SHELL"):
            assert instruction.exec_form(), f"line {start}: {keyword} must use the exec form"
        out.append(instruction)
    assert not pending, "the Dockerfile ends in a line continuation"
    return out


def dockerfile_stages(text: str) -> list[Stage]:
    """The stages, with global ARG defaults substituted into FROM."""
    instructions = parse_dockerfile(text)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m[1]], ins.args).split()
            assert len(words) in (1, 3) and (len(words) == 1 or words[1].upper() == "AS"), ins
            stages.append(Stage(words[0], words[2] if len(words) == 3 else None))
        elif not stages:
            assert ins.keyword == "ARG", f"line {ins.line}: only ARG may precede FROM"
            name, _, default = ins.args.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append(ins)
    return stages


def _stages() -> list[Stage]:
    return dockerfile_stages((ROOT / "Dockerfile").read_text())


def _final_stage() -> Stage:
    return _stages()[-1]


def _image_user() -> tuple[int, int]:
    user = _final_stage().values("USER")[-1]
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (exclusion, regex), with Docker's pattern syntax."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        line = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(line):
            c = line[i]
            if line.startswith("**/", i):
                regex, i = regex + "(.*/)?", i + 3
                continue
            if line.startswith("**", i):
                regex, i = regex + ".*", i + 2
                continue
            if c == "[":
                end = line.index("]", i)
                regex, i = regex + line[i : end + 1], end + 1
                continue
            regex += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
            i += 1
        patterns.append((exclusion, re.compile(f"^{regex}$")))
    return patterns


def dockerignored(rel: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves `rel` out of the build context (moby's patternmatcher rules)."""
    parts = rel.split("/")
    candidates = [rel] + ["/".join(parts[:n]) for n in range(1, len(parts))]
    ignored = False
    for exclusion, regex in patterns:
        if exclusion != ignored:
            continue
        if any(regex.match(c) for c in candidates):
            ignored = not exclusion
    return ignored


def _copy_sources(stage: Stage) -> list[str]:
    return [
        src
        for ins in stage.all("COPY")
        if "from" not in ins.flags
        for src in shlex.split(ins.args)[:-1]
    ]


def test_dockerfile_parses_into_valid_instructions() -> None:
    stages = _stages()
    assert [s.name for s in stages] == ["build", None]
    build, final = stages
    # Same base: the venv's interpreter symlink must resolve in the final stage.
    assert build.base == final.base and build.base.startswith("python:")
    for ins in final.all("COPY"):
        assert ins.flags["from"] == "build", ins
    (uv_copy,) = [i for i in build.all("COPY") if "from" in i.flags]
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", uv_copy.flags["from"]), uv_copy
    assert final.all("ENTRYPOINT")[-1].exec_form() == ["notifier"]
    (cmd,) = final.all("CMD")
    argv = cmd.exec_form()
    assert argv is not None and len(argv) == 1 and argv[0] in cli.ROLES
    # Exec form and SIGTERM: the signal reaches notifier itself, which drains.
    assert final.values("STOPSIGNAL") in ([], ["SIGTERM"])
    assert final.values("EXPOSE") == [str(DEFAULT_PORT)]


def test_parser_refuses_what_docker_refuses() -> None:
    for bad in (
        "FROM python:3.11-slim\nCOPPY a b\n",
        "RUN true\n",
        "FROM python:3.11-slim\nCOPY --form=build /a /b\n",
        "FROM python:3.11-slim\nENTRYPOINT notifier\n",
        "FROM python:3.11-slim\nRUN true \\\n",
    ):
        with pytest.raises(AssertionError):
            dockerfile_stages(bad)


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    patterns = _ignore_patterns()
    sources = _copy_sources(_stages()[0])
    assert {"pyproject.toml", "uv.lock", "README.md", "src", "sql"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not dockerignored(src, patterns), f"{src} is COPYed but .dockerignore drops it"


def test_dockerignore_keeps_the_context_to_what_is_copied() -> None:
    patterns = _ignore_patterns()
    for junk in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "bench/out/cycle.json",
        "bench/core.py",
        "deploy/k8s/api.yaml",
        "src/notifier/__pycache__/db.cpython-311.pyc",
        "sql/__pycache__/x.pyc",
        ".coverage",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".hypothesis/examples/x",
        ".schemathesis/x",
        "htmlcov/index.html",
        "log/x.log",
    ):
        assert dockerignored(junk, patterns), junk
    sources = _copy_sources(_stages()[0])
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    context = [f for f in tracked if not dockerignored(f, patterns)]
    assert context and all(f.split("/")[0] in sources for f in context), context


def test_final_stage_is_small_and_non_root() -> None:
    build, final = _stages()
    uid, gid = _image_user()
    assert uid > 0 and gid > 0  # numeric, so runAsNonRoot can verify it
    # No package manager, compiler, uv or source tree in the final stage: its
    # only RUN creates the user, its only COPY is the venv.
    for run in final.values("RUN"):
        assert re.fullmatch(r"groupadd .*&& useradd .*", run), run
        assert f"--uid {uid}" in run and f"--gid {gid}" in run
    venv = build.env()["UV_PROJECT_ENVIRONMENT"]
    assert [shlex.split(a)[-2:] for a in final.values("COPY")] == [[venv, venv]]
    assert final.env({"PATH": IMAGE_PATH})["PATH"].startswith(f"{venv}/bin:")
    # The build stage does nothing but uv: frozen lock, no dev group, a real
    # (non-editable) install of the project.
    runs = build.values("RUN")
    assert runs and all(r.startswith("uv sync --frozen --no-dev") for r in runs), runs
    assert "--no-editable" in runs[-1]


# --- the build stage, replayed without Docker -------------------------------------


@dataclass(frozen=True)
class Built:
    """The replayed image: its venv, the container environment, a cwd that is not the repo."""

    venv: Path
    env: dict[str, str]
    cwd: Path
    context_files: dict[str, bytes]


def _host_env() -> dict[str, str]:
    """What uv needs from the host to reach the package index (certs, proxies, cache)."""
    keep = ("HOME", "SSL_CERT_FILE", "SSL_CERT_DIR", "UV_CACHE_DIR", "UV_INDEX", "UV_DEFAULT_INDEX")
    return {
        k: v for k, v in os.environ.items() if k.startswith(keep) or k.lower().endswith("_proxy")
    }


def _pinned_uv(build: Stage, bin_dir: Path) -> None:
    """Put the uv version the Dockerfile copies in (from PyPI's `uv`) on `bin_dir`."""
    (uv_copy,) = [i for i in build.all("COPY") if "from" in i.flags]
    version = uv_copy.flags["from"].rsplit(":", 1)[1]
    outer = shutil.which("uv")
    assert outer, "uv is needed to replay the Dockerfile"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    found = subprocess.run(
        [outer, "tool", "run", "--from", f"uv=={version}", "python", "-c",
         "import uv; print(uv.find_uv_bin())"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    (bin_dir / "uv").symlink_to(found.stdout.strip())


def _base_python(build: Stage) -> str:
    """An interpreter of the base image's Python version that any user can run."""
    version = re.match(r"python:(\d+\.\d+)", build.base)
    assert version, build.base
    name = f"python{version[1]}"
    path = shutil.which(name, path="/usr/local/bin:/usr/bin")
    assert path, f"{name} outside /root is needed (apt-get install python3)"
    return path


def _replay_build(build: Stage, ctx: Path, venv: Path, tools: Path) -> None:
    """Run the build stage's RUN commands in `ctx`, as `docker build` would in WORKDIR."""
    env = _host_env() | build.env()
    env |= {
        "PATH": f"{tools}:{IMAGE_PATH}",
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON": _base_python(build),
    }
    for run in build.values("RUN"):
        done = subprocess.run(
            ["/bin/sh", "-c", f"umask 022 && {run}"],
            cwd=ctx, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"{run}\n{done.stderr}"


def _copy_context(build: Stage, ctx: Path) -> dict[str, bytes]:
    """Copy what the build stage COPYs (honouring .dockerignore) into `ctx`."""
    patterns = _ignore_patterns()
    (workdir,) = build.values("WORKDIR")
    copied: dict[str, bytes] = {}
    for ins in build.all("COPY"):
        if "from" in ins.flags:
            continue
        *sources, dest = shlex.split(ins.args)
        target = ctx / os.path.relpath(os.path.join(workdir, dest), workdir)
        assert target.resolve().is_relative_to(ctx.resolve()), ins
        for src in sources:
            path = ROOT / src
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if dockerignored(rel, patterns):
                    continue
                out = target / f.name if path.is_file() else target / f.relative_to(path)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)
                copied[out.relative_to(ctx).as_posix()] = f.read_bytes()
    return copied


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    """The Dockerfile's build stage, replayed; the source context removed afterwards."""
    build, final = _stages()
    top = Path(tempfile.mkdtemp(prefix="notifier-image-"))
    top.chmod(0o755)  # the non-root user must reach the venv
    try:
        tools, ctx, cwd = top / "tools", top / "ctx", top / "app"
        for d in (tools, ctx, cwd):
            d.mkdir(mode=0o755)
        _pinned_uv(build, tools)
        context_files = _copy_context(build, ctx)
        # A build with the uv cache already holding a wheel of an older tree (a
        # migration that is gone since): the next build must not reuse it.
        (ctx / "sql" / "999_stale_probe.sql").write_text("SELECT 1;\n")
        _replay_build(build, ctx, top / "stale-venv", tools)
        stale = next((top / "stale-venv").glob("lib/python*/site-packages/notifier/sql"))
        assert (stale / "999_stale_probe.sql").exists()
        (ctx / "sql" / "999_stale_probe.sql").unlink()
        venv = top / "venv"
        _replay_build(build, ctx, venv, tools)
        shutil.rmtree(ctx)  # nothing of the source tree is left to lean on
        image_venv = build.env()["UV_PROJECT_ENVIRONMENT"]
        env = {
            k: v.replace(image_venv, str(venv)) for k, v in final.env({"PATH": IMAGE_PATH}).items()
        }
        env["HOME"] = "/nonexistent"  # the image user's: it has none
        yield Built(venv, env, cwd, context_files)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _run(built: Built, argv: list[str], extra: dict[str, str] | None = None) -> str:
    """Run `argv` in the replayed image's environment, as a non-root user."""
    env = built.env | (extra or {})
    cmd = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "nobody", "--", *cmd]
    done = subprocess.run(cmd, cwd=built.cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _dist_names(site: Path) -> set[str]:
    return {re.sub(r"[-_.]+", "-", d.name.split("-")[0]).lower() for d in site.glob("*.dist-info")}


def _runtime_closure() -> set[str]:
    """The locked runtime dependencies of notifier, transitively (no dev group, no extras)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    todo, seen = ["notifier"], {"notifier"}
    while todo:
        package = packages[todo.pop()]
        for dep in package.get("dependencies", []):
            # psycopg[binary,pool]: the extras' own dependencies come along.
            extras = packages[dep["name"]].get("optional-dependencies", {})
            deps = [dep] + [d for e in dep.get("extra", []) for d in extras[e]]
            for name in {d["name"] for d in deps} - seen:
                seen.add(name)
                todo.append(name)
    return seen


@pytest.mark.slow
def test_replayed_image_holds_the_runtime_only(built: Built) -> None:
    (site,) = built.venv.glob("lib/python*/site-packages")
    installed = _dist_names(site)
    runtime = _runtime_closure()
    assert "notifier" in installed and installed <= runtime, installed - runtime
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["dev"]
    dev_only = {re.split(r"[<>=\[; ]", d)[0].lower() for d in dev} - runtime
    assert dev_only and not installed & dev_only
    assert not (site / "arcadedb_embedded").exists()  # the `local` extra and its JRE
    # Installed as a wheel: no .pth or editable hook pointing back at a source tree.
    assert not list(site.glob("*.pth")) and not list(site.glob("__editable__*"))
    # The migrations are inside the package, byte for byte.
    packed = {p.name: p.read_bytes() for p in (site / "notifier" / "sql").glob("*.sql")}
    sources = {k.split("/", 1)[1]: v for k, v in built.context_files.items() if k[:4] == "sql/"}
    assert packed == {k: v for k, v in sources.items() if k.endswith(".sql")}
    assert packed == {p.name: p.read_bytes() for p in (ROOT / "sql").glob("*.sql")}
    # So are the named statements (notifier.queries.load reads them from the package).
    named = {p.name: p.read_bytes() for p in (site / "notifier" / "queries").glob("*.sql")}
    assert named and named == {
        p.name: p.read_bytes() for p in (ROOT / "src" / "notifier" / "queries").glob("*.sql")
    }
    size = sum(p.lstat().st_size for p in built.venv.rglob("*"))
    print(f"replayed image venv: {size / 2**20:.1f} MiB, {len(installed)} distributions")
    assert size < 80 * 2**20


@pytest.mark.slow
def test_replayed_image_migrates_as_non_root_from_elsewhere(
    built: Built, pg_server: services.PostgresService, empty_pg_url: str
) -> None:
    assert built.cwd.resolve() != ROOT
    help_text = _run(built, ["notifier", "--help"])
    assert all(role in help_text for role in ("migrate", *ROLES))
    where = _run(built, ["python", "-c", "from notifier import db; print(db.migrations_dir())"])
    assert Path(where.strip()).is_relative_to(built.venv)
    # The router's statements are read from the installed package when it is imported.
    probe = (
        "from notifier import queries, unitstore;"
        " print(queries.__file__, len(unitstore.FINISH_UNIT))"
    )
    module, size = _run(built, ["python", "-c", probe]).split()
    assert Path(module).is_relative_to(built.venv) and int(size) > 1000

    pg_env = {
        "POSTGRES_HOST": pg_server.host,
        "POSTGRES_PORT": str(pg_server.port),
        "POSTGRES_USERNAME": pg_server.user,
        "POSTGRES_PASSWORD": pg_server.password or "trust-auth-ignores-this",
        "POSTGRES_DATABASE": empty_pg_url.rsplit("/", 1)[1],
    }
    files = sorted((ROOT / "sql").glob("[0-9][0-9][0-9]_*.sql"))
    out = _run(built, ["notifier", "migrate"], pg_env)
    assert f"applied {len(files)} migration(s)" in out
    with psycopg.connect(empty_pg_url) as conn:
        applied = dict(conn.execute("SELECT version, checksum FROM notifier.schema_migrations"))
        (tables,) = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'notifier'"
        ).fetchone() or (0,)
    assert applied == {f.stem: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert tables > len(files)
    assert "none needed" in _run(built, ["notifier", "migrate"], pg_env)


@pytest.mark.slow
def test_replayed_image_imports_every_module(built: Built) -> None:
    # Roles are imported lazily by the CLI: a runtime module importing a
    # dev-only package would pass `--help` and crash at `notifier api`.
    code = (
        "import importlib, pkgutil, notifier\n"
        "names = [m.name for m in pkgutil.walk_packages(notifier.__path__, 'notifier.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    assert int(_run(built, ["python", "-c", code])) >= len(cli.ROLES)


# --- deploy/discogsography: the fragment added to the platform's compose file -------

# The platform's published and health ports (its docker-compose.yml and Dockerfiles).
PLATFORM_PORTS = {5433, 5672, 6379, 7474, 7687, 15672, *range(8000, 8012)}


def test_platform_fragment_fits_the_platforms_compose_file() -> None:
    doc: dict[str, Any] = yaml.safe_load(
        (ROOT / "deploy" / "discogsography" / "compose.notifier.yaml").read_text()
    )
    assert _compose_errors(doc) == []
    services_ = doc["services"]
    roles = {"notifier-router": "router", "notifier-delivery": "delivery", "notifier-api": "api"}
    for name, role in roles.items():
        svc = services_[name]
        assert svc["command"] == [role] and svc["networks"] == ["discogsography"]
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert env["JWT_SECRET_KEY"].startswith("${JWT_SECRET_KEY:?")  # set by the operator
        assert env["NOTIFIER_ENCRYPTION_KEY"].startswith("${NOTIFIER_ENCRYPTION_KEY:?")
        real = {"JWT_SECRET_KEY": REAL_JWT_KEY, "NOTIFIER_ENCRYPTION_KEY": REAL_ENCRYPTION_KEY}
        settings = config.load(env | real, role=role)
        assert settings.redis_host == "redis"  # the platform's Redis: its token revocations
        # The platform's names: its user, database, services, and the trigger it supports today.
        assert (settings.postgres_username, settings.rabbitmq_username) == ("discogsography",) * 2
        assert (settings.postgres_host, settings.neo4j_host, settings.rabbitmq_host) == (
            "postgres", "neo4j", "rabbitmq",
        )  # fmt: skip
        assert settings.trigger == ("graph",)
        assert settings.port not in PLATFORM_PORTS
        assert f"http://127.0.0.1:{settings.port}/health" in " ".join(svc["healthcheck"]["test"])
        assert svc["depends_on"]["notifier-migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert _seconds(svc["stop_grace_period"]) == _grace(role)
    assert services_["notifier-api"]["ports"] == ["8020:8020"]
    assert services_["notifier-migrate"]["depends_on"]["schema-init"] == {
        "condition": "service_completed_successfully"
    }
