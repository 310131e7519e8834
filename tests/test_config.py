"""Configuration: defaults, _FILE variants, validation with one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from notifier import config

BASE = {
    "POSTGRES_PASSWORD": "pgpw",
    "NEO4J_PASSWORD": "neopw",
    "JWT_SECRET_KEY": "jwt-key-of-thirty-two-bytes-or-more",
}


def test_defaults_match_the_contract() -> None:
    s = config.load(BASE, role="all")
    assert (s.postgres_host, s.postgres_port, s.postgres_username) == (
        "localhost",
        5432,
        "postgres",
    )
    assert s.postgres_database == "discogsography"
    assert (s.neo4j_host, s.neo4j_port, s.neo4j_username, s.neo4j_database) == (
        "localhost", 7687, "neo4j", "neo4j",
    )  # fmt: skip
    assert (s.rabbitmq_host, s.rabbitmq_port, s.rabbitmq_username) == ("localhost", 5672, "guest")
    assert (s.rabbitmq_password, s.rabbitmq_vhost) == ("guest", "/")
    assert s.completion_exchange == "import.completed"
    assert s.required_services == ("graphinator", "tableinator")
    assert s.service_token is None
    assert s.port == 8010
    assert s.webhook_allow_private is False
    assert (s.smtp_host, s.smtp_port, s.smtp_from, s.smtp_enabled) == (None, 587, None, False)
    assert s.log_level == "INFO"
    assert s.neo4j_uri == "bolt://localhost:7687"


def test_every_variable_is_read() -> None:
    env = {
        **BASE,
        "POSTGRES_HOST": "pg", "POSTGRES_PORT": "6543", "POSTGRES_USERNAME": "u",
        "POSTGRES_DATABASE": "d", "NEO4J_HOST": "g", "NEO4J_PORT": "7688",
        "NEO4J_USERNAME": "gu", "NEO4J_DATABASE": "gd", "RABBITMQ_HOST": "mq",
        "RABBITMQ_PORT": "5673", "RABBITMQ_USERNAME": "mu", "RABBITMQ_PASSWORD": "mp",
        "RABBITMQ_VHOST": "v", "NOTIFIER_COMPLETION_EXCHANGE": "x",
        "NOTIFIER_REQUIRED_SERVICES": " a , b ,c", "NOTIFIER_SERVICE_TOKEN": "tok",
        "NOTIFIER_PORT": "9000", "NOTIFIER_WEBHOOK_ALLOW_PRIVATE": "TRUE",
        "NOTIFIER_SMTP_HOST": "smtp", "NOTIFIER_SMTP_PORT": "25",
        "NOTIFIER_SMTP_FROM": "n@example.org", "LOG_LEVEL": "debug", "NOTIFIER_REPLICA": "r1",
    }  # fmt: skip
    s = config.load(env, role="all")
    assert (s.postgres_host, s.postgres_port, s.postgres_username, s.postgres_database) == (
        "pg", 6543, "u", "d",
    )  # fmt: skip
    assert (s.neo4j_host, s.neo4j_port, s.neo4j_username, s.neo4j_database) == (
        "g", 7688, "gu", "gd",
    )  # fmt: skip
    assert (s.rabbitmq_host, s.rabbitmq_port, s.rabbitmq_username, s.rabbitmq_password) == (
        "mq", 5673, "mu", "mp",
    )  # fmt: skip
    assert s.rabbitmq_vhost == "v"
    assert s.completion_exchange == "x"
    assert s.required_services == ("a", "b", "c")
    assert s.service_token == "tok"
    assert s.port == 9000
    assert s.webhook_allow_private is True
    assert (s.smtp_host, s.smtp_port, s.smtp_from, s.smtp_enabled) == (
        "smtp", 25, "n@example.org", True,
    )  # fmt: skip
    assert s.log_level == "DEBUG"
    assert s.replica == "r1"
    assert config.load({**BASE, "NOTIFIER_PUBLIC_URL": "https://n.example/x/"}).public_url == (
        "https://n.example/x"
    )
    assert config.load(BASE).public_url is None
    assert "port='6543'" in s.postgres_conninfo and "password='pgpw'" in s.postgres_conninfo


def test_file_variants(tmp_path: Path) -> None:
    secret = tmp_path / "jwt"
    secret.write_text("from-a-file-of-at-least-32-bytes\n")
    port = tmp_path / "port"
    port.write_text("6000")
    env = {**BASE, "POSTGRES_PORT_FILE": str(port), "JWT_SECRET_KEY_FILE": str(secret)}
    del env["JWT_SECRET_KEY"]
    s = config.load(env, role="api")
    assert s.jwt_secret_key == "from-a-file-of-at-least-32-bytes"
    assert s.postgres_port == 6000


def test_both_plain_and_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("x")
    with pytest.raises(config.ConfigError, match=r"^POSTGRES_PASSWORD: set either"):
        config.load({**BASE, "POSTGRES_PASSWORD_FILE": str(f)}, role="migrate")


def test_unreadable_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"^NEO4J_PASSWORD_FILE: cannot read"):
        config.load(
            {"POSTGRES_PASSWORD": "x", "NEO4J_PASSWORD_FILE": str(tmp_path / "missing")},
            role="router",
        )


@pytest.mark.parametrize("value", ["abc", "0", "65536", "-1", "80.5"])
@pytest.mark.parametrize("name", ["POSTGRES_PORT", "NEO4J_PORT", "RABBITMQ_PORT", "NOTIFIER_PORT"])
def test_bad_port_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(config.ConfigError, match=rf"^{name}: expected a port number 1-65535"):
        config.load({**BASE, name: value}, role="all")


@pytest.mark.parametrize(
    ("role", "missing"),
    [
        ("migrate", "POSTGRES_PASSWORD"),
        ("api", "POSTGRES_PASSWORD"),
        ("api", "NEO4J_PASSWORD"),
        ("api", "JWT_SECRET_KEY"),
        ("router", "NEO4J_PASSWORD"),
        ("delivery", "POSTGRES_PASSWORD"),
        ("all", "JWT_SECRET_KEY"),
    ],
)
def test_missing_required_value_names_the_variable(role: str, missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(config.ConfigError, match=rf"^{missing}: required"):
        config.load(env, role=role)


def test_roles_only_require_what_they_use() -> None:
    assert config.load({"POSTGRES_PASSWORD": "x"}, role="delivery").jwt_secret_key == ""
    assert config.load({}, role="dev").postgres_password == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NOTIFIER_WEBHOOK_ALLOW_PRIVATE": "maybe"}, "NOTIFIER_WEBHOOK_ALLOW_PRIVATE: expected"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL: expected one of"),
        ({"NOTIFIER_REQUIRED_SERVICES": "a,,b"}, "NOTIFIER_REQUIRED_SERVICES: expected"),
        ({"NOTIFIER_SMTP_HOST": "smtp"}, "NOTIFIER_SMTP_FROM: required"),
        ({"NOTIFIER_PUBLIC_URL": "notifier.example"}, "NOTIFIER_PUBLIC_URL: expected"),
        ({"NOTIFIER_PUBLIC_URL": "https://n.example/?a=1"}, "NOTIFIER_PUBLIC_URL: expected"),
    ],
)
def test_malformed_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError, match=f"^{message}"):
        config.load({**BASE, **env}, role="all")


def test_unknown_role() -> None:
    with pytest.raises(config.ConfigError, match="unknown role"):
        config.load(BASE, role="nope")


def test_repr_hides_secrets() -> None:
    s = config.load({**BASE, "NOTIFIER_SERVICE_TOKEN": "svc-token-value"}, role="all")
    text = repr(s)
    for secret in ("pgpw", "neopw", "jwtkey", "svc-token-value"):
        assert secret not in text
    assert "postgres_host='localhost'" in text


def test_conninfo_quotes_odd_passwords() -> None:
    s = config.load({**BASE, "POSTGRES_PASSWORD": "a b'c\\d"}, role="migrate")
    assert "password='a b\\'c\\\\d'" in s.postgres_conninfo


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notifier.cli", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"POSTGRES_PASSWORD": "x", "POSTGRES_PORT": "not-a-port"}, "POSTGRES_PORT"),
        ({}, "POSTGRES_PASSWORD"),
    ],
)
def test_cli_stops_with_one_line_naming_the_variable(env: dict[str, str], variable: str) -> None:
    done = _run_cli("migrate", env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"notifier: configuration error: {variable}:")
    assert "Traceback" not in done.stderr


def test_trigger_settings_default_and_parse() -> None:
    s = config.load(BASE, role="router")
    assert (s.trigger, s.graph_poll_seconds) == (("amqp",), 60.0)
    assert s.graph_signals == ("artists", "labels", "masters", "releases")
    s = config.load(
        {**BASE, "NOTIFIER_TRIGGER": " graph , amqp,graph", "NOTIFIER_GRAPH_SIGNALS": "releases",
         "NOTIFIER_GRAPH_POLL_SECONDS": "2.5"},
        role="router",
    )  # fmt: skip
    assert (s.trigger, s.graph_signals, s.graph_poll_seconds) == (
        ("graph", "amqp"), ("releases",), 2.5,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NOTIFIER_TRIGGER", "kafka"),
        ("NOTIFIER_TRIGGER", "amqp,,graph"),
        ("NOTIFIER_GRAPH_SIGNALS", "artists,"),
        ("NOTIFIER_GRAPH_POLL_SECONDS", "0"),
        ("NOTIFIER_GRAPH_POLL_SECONDS", "soon"),
    ],
)
def test_bad_trigger_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(config.ConfigError, match=f"^{name}: "):
        config.load({**BASE, name: value}, role="router")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("short-key", "at least 32 bytes"),
        ("x" * 31, "at least 32 bytes"),
        ("change-me-to-the-discogsography-api-key", "placeholder"),
        ("dev-secret-change-in-production-use-a-256-bit-random-key", "placeholder"),
        ("${JWT_SECRET_KEY:?set it to the platform API key}", "placeholder"),
        ("my-PLACEHOLDER-key-0123456789-0123456789", "placeholder"),
    ],
)
@pytest.mark.parametrize("role", ["api", "all"])
def test_a_weak_or_placeholder_jwt_key_refuses_to_start(role: str, key: str, message: str) -> None:
    with pytest.raises(config.ConfigError, match=f"^JWT_SECRET_KEY: .*{message}"):
        config.load({**BASE, "JWT_SECRET_KEY": key}, role=role)
    # Roles that verify no token do not care.
    config.load({**BASE, "JWT_SECRET_KEY": key}, role="delivery")


def test_a_32_byte_key_is_enough() -> None:
    assert config.load({**BASE, "JWT_SECRET_KEY": "k" * 32}, role="api").jwt_secret_key == "k" * 32


def test_retention_cycles_default_and_parse() -> None:
    assert config.load(BASE, role="delivery").retention_cycles == 2
    for value, cycles in (("12", 12), (" 0 ", 0), ("", 2)):
        env = {**BASE, "NOTIFIER_RETENTION_CYCLES": value}
        assert config.load(env, role="delivery").retention_cycles == cycles


@pytest.mark.parametrize("value", ["two", "-1", "1.5", "10001"])
def test_bad_retention_cycles_names_the_variable(value: str) -> None:
    with pytest.raises(
        config.ConfigError, match=r"^NOTIFIER_RETENTION_CYCLES: expected a number 0-10000, got"
    ):
        config.load({**BASE, "NOTIFIER_RETENTION_CYCLES": value}, role="delivery")
