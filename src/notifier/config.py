"""Configuration from the environment (contract §2), validated once at start.

Every variable may also be given as `NAME_FILE`, the path of a file holding
the value (Docker and Kubernetes secrets). A missing required value or a
malformed one raises `ConfigError`, whose message is one line naming the
variable; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from notifier import backoff, secretbox

Role = Literal["migrate", "api", "router", "delivery", "all", "dev", "retention"]

TRIGGERS = ("amqp", "graph")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

# What each role connects to; the values these need are required for it.
_NEEDS: dict[str, tuple[str, ...]] = {
    "migrate": ("postgres",),
    "api": ("postgres", "graph", "jwt"),
    "router": ("postgres", "graph", "rabbitmq"),
    "delivery": ("postgres",),
    "retention": ("postgres",),
    "all": ("postgres", "graph", "rabbitmq", "jwt"),
    "dev": (),
}


class ConfigError(ValueError):
    """A setting is missing or malformed; `str()` is one line naming it."""


@dataclass(frozen=True)
class Settings:
    """Every setting of contract §2 (and the extensions the README lists)."""

    postgres_host: str
    postgres_port: int
    postgres_username: str
    postgres_password: str
    postgres_database: str
    neo4j_host: str
    neo4j_port: int
    neo4j_username: str
    neo4j_password: str
    neo4j_database: str
    rabbitmq_host: str
    rabbitmq_port: int
    rabbitmq_username: str
    rabbitmq_password: str
    rabbitmq_vhost: str
    completion_exchange: str
    required_services: tuple[str, ...]
    jwt_secret_key: str
    service_token: str | None
    port: int
    webhook_allow_private: bool
    smtp_host: str | None
    smtp_port: int
    smtp_from: str | None
    log_level: str
    replica: str
    # Where cycles come from (contract §3, §3a): "amqp", "graph" or both.
    trigger: tuple[str, ...] = ("amqp",)
    graph_signals: tuple[str, ...] = ("artists", "labels", "masters", "releases")
    graph_poll_seconds: float = 60.0
    # Webhook secrets at rest (secretbox.py): the 32-byte keys, current and previous.
    encryption_key: bytes | None = None
    encryption_key_previous: bytes | None = None
    # Tokens: required `iss`/`aud` when set; the platform's Redis for revocations.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    redis_host: str | None = None
    redis_port: int = 6379
    redis_password: str | None = None
    # Router: diff unit size, unit lease, broker prefetch, idle poll, workers.
    router_unit_size: int = 500
    router_lease_seconds: float = 120.0
    router_prefetch: int = 16
    router_poll_seconds: float = 1.0
    # Two units at a time per process: one worker's Python runs while the
    # other waits on PostgreSQL or the graph (bench/RESULTS.md, diff).
    router_workers: int = 2
    # Delivery: sender limits, claim batch and lease, timeouts, retries.
    delivery_concurrency: int = 256
    delivery_per_endpoint: int = 8
    delivery_batch: int = 200
    delivery_lease_seconds: float = 60.0
    delivery_connect_timeout: float = 5.0
    delivery_read_timeout: float = 10.0
    delivery_timeout: float = 15.0
    delivery_poll_seconds: float = 0.5
    delivery_retry_schedule: tuple[float, ...] = backoff.DEFAULT_SCHEDULE
    # Email digests link back to the feed under this base URL (None: no link).
    public_url: str | None = None
    # API: per-user rate limit (requests/minute, 0 = off; burst) and pool size.
    api_rate_limit_per_minute: int = 600
    api_rate_limit_burst: int = 120
    api_pool_size: int = 10
    # Resource limits: slow clients, PostgreSQL timeouts, DNS, per-user sends.
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_keepalive_timeout: float = 5.0
    http_max_requests_per_connection: int = 1000
    http_limit_concurrency: int = 2000
    pg_statement_timeout: float = 30.0
    pg_lock_timeout: float = 10.0
    router_statement_timeout: float = 600.0
    resolver_threads: int = 8
    resolver_timeout: float = 5.0
    api_send_quota_per_hour: int = 60
    api_send_burst: int = 10
    # Named service tokens (name, token): each caller's idempotency keys are its own.
    service_tokens: tuple[tuple[str, str], ...] = ()
    # Retention (notifier.retention): days each kind of row is kept (0: forever).
    retention_feed_days: float = 365.0
    retention_events_days: float = 365.0
    retention_outbox_days: float = 30.0
    retention_attempts_days: float = 30.0
    retention_batch: int = 5000
    retention_interval_seconds: float = 3600.0
    # The newest done cycles whose router work rows are kept (0: forever).
    retention_cycles: int = 2

    @property
    def postgres_conninfo(self) -> str:
        """A libpq key/value connection string (values quoted, never logged)."""
        return " ".join(
            f"{k}={_libpq_quote(v)}"
            for k, v in (
                ("host", self.postgres_host),
                ("port", str(self.postgres_port)),
                ("user", self.postgres_username),
                ("password", self.postgres_password),
                ("dbname", self.postgres_database),
                ("application_name", f"notifier-{self.replica}"[:63]),
            )
        )

    @property
    def neo4j_uri(self) -> str:
        """The Bolt URI of the graph."""
        return f"bolt://{self.neo4j_host}:{self.neo4j_port}"

    @property
    def smtp_enabled(self) -> bool:
        """The email channel is on only when an SMTP host is configured."""
        return bool(self.smtp_host)

    def __repr__(self) -> str:
        # Never print secrets, even by accident in a traceback or a log line.
        hidden = {"postgres_password", "neo4j_password", "rabbitmq_password"}
        hidden |= {"jwt_secret_key", "service_token", "service_tokens"}
        hidden |= {"encryption_key", "encryption_key_previous", "redis_password"}
        parts = (f"{k}={'***' if k in hidden else repr(v)}" for k, v in self.__dict__.items())
        return f"Settings({', '.join(parts)})"


def _libpq_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Reader:
    """Reads NAME or NAME_FILE from a mapping, with one-line errors."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        direct, file_name = self.env.get(name), self.env.get(f"{name}_FILE")
        if file_name is not None and direct is not None:
            raise ConfigError(f"{name}: set either {name} or {name}_FILE, not both")
        if file_name is not None:
            try:
                return Path(file_name).read_text().rstrip("\r\n")
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise ConfigError(f"{name}_FILE: cannot read {file_name!r}: {reason}") from None
        return direct

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None or value.strip() == "" else value.strip()

    def optional(self, name: str) -> str | None:
        value = self.raw(name)
        return None if value is None or value.strip() == "" else value.strip()

    def secret(self, name: str) -> str | None:
        # Secrets keep inner whitespace; only an empty value counts as unset.
        value = self.raw(name)
        return value if value else None

    def port(self, name: str, default: int) -> int:
        value = self.raw(name)
        if value is None or value.strip() == "":
            return default
        try:
            port = int(value.strip(), 10)
        except ValueError:
            raise ConfigError(f"{name}: expected a port number 1-65535, got {value!r}") from None
        if not 1 <= port <= 65535:
            raise ConfigError(f"{name}: expected a port number 1-65535, got {port}")
        return port

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")


def load(env: Mapping[str, str] | None = None, role: str = "all") -> Settings:
    """Read and validate the settings `role` needs from `env` (default: os.environ)."""
    r = _Reader(os.environ if env is None else env)
    services = tuple(
        s.strip()
        for s in r.text("NOTIFIER_REQUIRED_SERVICES", "graphinator,tableinator").split(",")
    )
    if any(not s for s in services):
        raise ConfigError(
            "NOTIFIER_REQUIRED_SERVICES: expected a comma-separated list of service names"
        )
    trigger = _names(r, "NOTIFIER_TRIGGER", "amqp")
    if not set(trigger) <= set(TRIGGERS):
        raise ConfigError(f"NOTIFIER_TRIGGER: expected amqp, graph or amqp,graph, got {trigger!r}")
    log_level = r.text("LOG_LEVEL", "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL: expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}")

    settings = Settings(
        postgres_host=r.text("POSTGRES_HOST", "localhost"),
        postgres_port=r.port("POSTGRES_PORT", 5432),
        postgres_username=r.text("POSTGRES_USERNAME", "postgres"),
        postgres_password=r.secret("POSTGRES_PASSWORD") or "",
        postgres_database=r.text("POSTGRES_DATABASE", "discogsography"),
        neo4j_host=r.text("NEO4J_HOST", "localhost"),
        neo4j_port=r.port("NEO4J_PORT", 7687),
        neo4j_username=r.text("NEO4J_USERNAME", "neo4j"),
        neo4j_password=r.secret("NEO4J_PASSWORD") or "",
        neo4j_database=r.text("NEO4J_DATABASE", "neo4j"),
        rabbitmq_host=r.text("RABBITMQ_HOST", "localhost"),
        rabbitmq_port=r.port("RABBITMQ_PORT", 5672),
        rabbitmq_username=r.text("RABBITMQ_USERNAME", "guest"),
        rabbitmq_password=r.secret("RABBITMQ_PASSWORD") or "guest",
        rabbitmq_vhost=r.text("RABBITMQ_VHOST", "/"),
        completion_exchange=r.text("NOTIFIER_COMPLETION_EXCHANGE", "import.completed"),
        required_services=services,
        jwt_secret_key=r.secret("JWT_SECRET_KEY") or "",
        service_token=r.secret("NOTIFIER_SERVICE_TOKEN"),
        port=r.port("NOTIFIER_PORT", 8010),
        webhook_allow_private=r.flag("NOTIFIER_WEBHOOK_ALLOW_PRIVATE", False),
        smtp_host=r.optional("NOTIFIER_SMTP_HOST"),
        smtp_port=r.port("NOTIFIER_SMTP_PORT", 587),
        smtp_from=r.optional("NOTIFIER_SMTP_FROM"),
        public_url=_public_url(r),
        log_level=log_level,
        **_token_settings(r),
        replica=r.text("NOTIFIER_REPLICA", socket.gethostname()),
        trigger=trigger,
        graph_signals=_names(r, "NOTIFIER_GRAPH_SIGNALS", "artists,labels,masters,releases"),
        graph_poll_seconds=_router_number(r, "NOTIFIER_GRAPH_POLL_SECONDS", 60.0, 0.01, 86_400),
        # Router.
        router_unit_size=int(_router_number(r, "NOTIFIER_ROUTER_UNIT_SIZE", 500, 1, 100_000, int)),
        router_lease_seconds=_router_number(r, "NOTIFIER_ROUTER_LEASE_SECONDS", 120.0, 1, 86_400),
        router_prefetch=int(_router_number(r, "NOTIFIER_ROUTER_PREFETCH", 16, 1, 10_000, int)),
        router_poll_seconds=_router_number(r, "NOTIFIER_ROUTER_POLL_SECONDS", 1.0, 0.01, 3_600),
        router_workers=int(_router_number(r, "NOTIFIER_ROUTER_WORKERS", 2, 1, 64, int)),
        # Delivery.
        **_delivery_settings(r),
        # API.
        **_api_settings(r),
        **_limit_settings(r),
        **_retention_settings(r),
    )
    _require(settings, role)
    return settings


def _public_url(r: _Reader) -> str | None:
    """NOTIFIER_PUBLIC_URL: an absolute http(s) URL without query or fragment, or None."""
    value = r.optional("NOTIFIER_PUBLIC_URL")
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"NOTIFIER_PUBLIC_URL: expected an absolute http(s) URL such as "
            f"https://discogsography.example/notifier, got {value!r}"
        )
    return value.rstrip("/")


def _names(r: _Reader, name: str, default: str) -> tuple[str, ...]:
    """A comma-separated list of names, without blanks or repeats, in the given order."""
    names = tuple(dict.fromkeys(x.strip() for x in r.text(name, default).split(",")))
    if not names or any(not x for x in names):
        raise ConfigError(f"{name}: expected a comma-separated list of names")
    return names


# RFC 7518 §3.2: an HS256 key at least as long as the hash output.
JWT_KEY_MIN_BYTES = 32
# Words of the sample values deploy files and docs ship (ours, the platform's):
# a key containing one was never replaced, and anyone reading the file can
# forge tokens. "${" is a compose variable nobody substituted.
_PLACEHOLDER_MARKS = ("change-me", "changeme", "change_me", "change-in-production",
                      "placeholder", "your-secret", "dev-secret", "${")  # fmt: skip


def _check_jwt_key(key: str) -> None:
    """Refuse a JWT key that is short or a shipped placeholder (the API must not start)."""
    lowered = key.lower()
    if any(mark in lowered for mark in _PLACEHOLDER_MARKS):
        raise ConfigError(
            "JWT_SECRET_KEY: still a placeholder value; set the Discogsography API's key "
            "(e.g. generated by `openssl rand -base64 32`)"
        )
    if len(key.encode()) < JWT_KEY_MIN_BYTES:
        raise ConfigError(
            f"JWT_SECRET_KEY: must be at least {JWT_KEY_MIN_BYTES} bytes for HS256, "
            f"got {len(key.encode())}"
        )


def _key(r: _Reader, name: str) -> bytes | None:
    """An encryption key setting: None when unset, else its 32 bytes (one-line error)."""
    value = r.secret(name)
    if value is None or not value.strip():
        return None
    try:
        return secretbox.parse_key(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _token_settings(r: _Reader) -> dict[str, Any]:
    """Encryption keys, the JWT issuer/audience and the platform's Redis, validated."""
    key, previous = _key(r, "NOTIFIER_ENCRYPTION_KEY"), _key(r, "NOTIFIER_ENCRYPTION_KEY_PREVIOUS")
    if previous is not None and key is None:
        raise ConfigError(
            "NOTIFIER_ENCRYPTION_KEY: required when NOTIFIER_ENCRYPTION_KEY_PREVIOUS is set"
        )
    return {
        "encryption_key": key,
        "encryption_key_previous": None if previous == key else previous,
        "jwt_issuer": r.optional("NOTIFIER_JWT_ISSUER"),
        "jwt_audience": r.optional("NOTIFIER_JWT_AUDIENCE"),
        "redis_host": r.optional("REDIS_HOST"),
        "redis_port": r.port("REDIS_PORT", 6379),
        "redis_password": r.secret("REDIS_PASSWORD"),
    }


def _require(s: Settings, role: str) -> None:
    needs = _NEEDS.get(role)
    if needs is None:
        raise ConfigError(f"unknown role {role!r}")
    if "postgres" in needs and not s.postgres_password:
        raise ConfigError("POSTGRES_PASSWORD: required (or POSTGRES_PASSWORD_FILE)")
    if "graph" in needs and not s.neo4j_password:
        raise ConfigError("NEO4J_PASSWORD: required (or NEO4J_PASSWORD_FILE)")
    if "jwt" in needs and not s.jwt_secret_key:
        raise ConfigError("JWT_SECRET_KEY: required by the API (or JWT_SECRET_KEY_FILE)")
    if "jwt" in needs:
        _check_jwt_key(s.jwt_secret_key)
    if s.smtp_host and not s.smtp_from:
        raise ConfigError("NOTIFIER_SMTP_FROM: required when NOTIFIER_SMTP_HOST is set")


# Delivery: the NOTIFIER_DELIVERY_* settings.
def _delivery_settings(r: _Reader) -> dict[str, Any]:
    """The NOTIFIER_DELIVERY_* settings, validated."""

    def number(name: str, default: float, low: float, high: float, kind: type = float) -> Any:
        value = r.raw(name)
        if value is None or value.strip() == "":
            return kind(default)
        try:
            parsed = kind(value.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected a number {low}-{high}, got {value!r}") from None
        if not low <= parsed <= high:
            raise ConfigError(f"{name}: expected a number {low}-{high}, got {value!r}")
        return parsed

    timeout = number("NOTIFIER_DELIVERY_TIMEOUT", 15.0, 0.1, 600)
    lease = number("NOTIFIER_DELIVERY_LEASE_SECONDS", 60.0, 1, 86_400)
    if lease < 3 * timeout:
        raise ConfigError(
            "NOTIFIER_DELIVERY_LEASE_SECONDS: must be at least 3x NOTIFIER_DELIVERY_TIMEOUT "
            f"({lease:g} < 3 x {timeout:g}), or rows in flight would be claimed twice"
        )
    schedule_text = r.optional("NOTIFIER_DELIVERY_RETRY_SCHEDULE")
    try:
        schedule = (
            backoff.parse_schedule(schedule_text) if schedule_text else backoff.DEFAULT_SCHEDULE
        )
    except ValueError as exc:
        raise ConfigError(f"NOTIFIER_DELIVERY_RETRY_SCHEDULE: {exc}") from None
    return {
        "delivery_concurrency": number("NOTIFIER_DELIVERY_CONCURRENCY", 256, 1, 10_000, int),
        "delivery_per_endpoint": number("NOTIFIER_DELIVERY_PER_ENDPOINT", 8, 1, 10_000, int),
        "delivery_batch": number("NOTIFIER_DELIVERY_BATCH", 200, 1, 10_000, int),
        "delivery_lease_seconds": lease,
        "delivery_connect_timeout": number("NOTIFIER_DELIVERY_CONNECT_TIMEOUT", 5.0, 0.1, 600),
        "delivery_read_timeout": number("NOTIFIER_DELIVERY_READ_TIMEOUT", 10.0, 0.1, 600),
        "delivery_timeout": timeout,
        "delivery_poll_seconds": number("NOTIFIER_DELIVERY_POLL_SECONDS", 0.5, 0.01, 3_600),
        "delivery_retry_schedule": schedule,
    }


# Router: a bounded number setting.
def _router_number(
    r: _Reader, name: str, default: float, low: float, high: float, kind: type = float
) -> float:
    value = r.raw(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = kind(value.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a number {low}-{high}, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{name}: expected a number {low}-{high}, got {value!r}")
    return float(number)


def _retention_settings(r: _Reader) -> dict[str, Any]:
    """The NOTIFIER_RETENTION_* settings (0 days or cycles: keep forever)."""

    def days(name: str, default: float) -> float:
        return _router_number(r, name, default, 0, 36_500)

    return {
        "retention_feed_days": days("NOTIFIER_RETENTION_FEED_DAYS", 365),
        "retention_events_days": days("NOTIFIER_RETENTION_EVENTS_DAYS", 365),
        "retention_outbox_days": days("NOTIFIER_RETENTION_OUTBOX_DAYS", 30),
        "retention_attempts_days": days("NOTIFIER_RETENTION_ATTEMPTS_DAYS", 30),
        "retention_batch": int(
            _router_number(r, "NOTIFIER_RETENTION_BATCH", 5000, 1, 100_000, int)
        ),
        "retention_interval_seconds": _router_number(
            r, "NOTIFIER_RETENTION_INTERVAL_SECONDS", 3600, 1, 604_800
        ),
        "retention_cycles": int(_router_number(r, "NOTIFIER_RETENTION_CYCLES", 2, 0, 10_000, int)),
    }


# API: the NOTIFIER_API_* settings.
def _api_settings(r: _Reader) -> dict[str, Any]:
    """The API's rate limit and pool size, validated."""

    def count(name: str, default: int, low: int, high: int) -> int:
        value = r.raw(name)
        if value is None or value.strip() == "":
            return default
        problem = f"{name}: expected a whole number {low}-{high}, got {value!r}"
        try:
            parsed = int(value.strip(), 10)
        except ValueError:
            raise ConfigError(problem) from None
        if not low <= parsed <= high:
            raise ConfigError(problem)
        return parsed

    return {
        "api_rate_limit_per_minute": count("NOTIFIER_API_RATE_LIMIT", 600, 0, 10_000_000),
        "api_rate_limit_burst": count("NOTIFIER_API_RATE_BURST", 120, 1, 10_000_000),
        "api_pool_size": count("NOTIFIER_API_POOL_SIZE", 10, 1, 1_000),
    }


# Resource limits: the NOTIFIER_HTTP_*, NOTIFIER_PG_*, NOTIFIER_RESOLVER_* settings.
def _limit_settings(r: _Reader) -> dict[str, Any]:
    """Deadlines and bounds against slow clients, long statements and stuck DNS."""

    def num(name: str, default: float, low: float, high: float) -> float:
        return _router_number(r, name, default, low, high)

    def whole(name: str, default: int, low: int, high: int) -> int:
        return int(_router_number(r, name, default, low, high, int))

    return {
        "http_header_timeout": num("NOTIFIER_HTTP_HEADER_TIMEOUT", 10.0, 0.1, 3_600),
        "http_body_timeout": num("NOTIFIER_HTTP_BODY_TIMEOUT", 30.0, 0.1, 3_600),
        "http_keepalive_timeout": num("NOTIFIER_HTTP_KEEPALIVE_TIMEOUT", 5.0, 0.1, 3_600),
        "http_max_requests_per_connection": whole(
            "NOTIFIER_HTTP_MAX_REQUESTS_PER_CONNECTION", 1000, 1, 10_000_000
        ),
        "http_limit_concurrency": whole("NOTIFIER_HTTP_LIMIT_CONCURRENCY", 2000, 1, 1_000_000),
        "pg_statement_timeout": num("NOTIFIER_PG_STATEMENT_TIMEOUT", 30.0, 0, 86_400),
        "pg_lock_timeout": num("NOTIFIER_PG_LOCK_TIMEOUT", 10.0, 0, 86_400),
        "router_statement_timeout": num("NOTIFIER_ROUTER_STATEMENT_TIMEOUT", 600.0, 0, 86_400),
        "resolver_threads": whole("NOTIFIER_RESOLVER_THREADS", 8, 1, 256),
        "resolver_timeout": num("NOTIFIER_RESOLVER_TIMEOUT", 5.0, 0.1, 600),
        "api_send_quota_per_hour": whole("NOTIFIER_API_SEND_QUOTA", 60, 0, 1_000_000),
        "api_send_burst": whole("NOTIFIER_API_SEND_BURST", 10, 1, 1_000_000),
        "service_tokens": _service_tokens(r),
    }


SERVICE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _service_tokens(r: _Reader) -> tuple[tuple[str, str], ...]:
    """NOTIFIER_SERVICE_TOKENS: `name=token` pairs, comma-separated (names lower-case)."""
    raw = r.secret("NOTIFIER_SERVICE_TOKENS")
    if raw is None or not raw.strip():
        return ()
    problem = "NOTIFIER_SERVICE_TOKENS: expected name=token pairs separated by commas"
    pairs: dict[str, str] = {}
    for item in raw.split(","):
        name, sep, token = item.strip().partition("=")
        name, token = name.strip(), token.strip()
        if not sep or not name or not set(name) <= SERVICE_NAME_CHARS or len(token) < 16:
            raise ConfigError(f"{problem} (names a-z 0-9 - _, tokens of 16+ characters)")
        if name in pairs or token in pairs.values():
            raise ConfigError(f"{problem}; {name!r} or its token appears twice")
        pairs[name] = token
    return tuple(pairs.items())
