"""The benchmark harness keeps working (tiny scale; figures are reported, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from notifier.devkit import services

ROOT = Path(__file__).resolve().parent.parent


def test_bench_runs_at_tiny_scale(
    pg_server: services.PostgresService,
    rabbit_server: services.RabbitService,
    graph_server: services.GraphService,
    tmp_path: Path,
) -> None:
    out = tmp_path / "bench.json"
    # The session's servers: the bench starts none of its own.
    user, password = quote(graph_server.user, safe=""), quote(graph_server.password, safe="")
    env = {
        **os.environ,
        services.POSTGRES_URL_ENV: pg_server.url(),
        services.RABBITMQ_URL_ENV: rabbit_server.url,
        services.NEO4J_URL_ENV: f"bolt://{user}:{password}@{graph_server.host}:{graph_server.port}",
        services.NEO4J_ADMIN_URL_ENV: graph_server.admin_url or "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "tiny", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr  # 1 = a target missed at this tiny scale
    assert done.stdout.startswith("| figure | ours |")
    result = json.loads(out.read_text())
    assert result["scale"] == "tiny"
    names = {f["name"] for f in result["figures"]}
    assert names == {
        "delivery rate (one process)",
        "peak RSS: delivery",
        "feed first page p99",
        "unread-count p99",
        "feed 304 (If-None-Match) p99",
        "unread-count 304 p99",
        "peak RSS: api",
        "outbox claim+complete/s (null transport)",
        "diff entities/s (artists)",
        "fan-out feed rows/s",
        "cycle: feed complete",
        "cycle: webhooks delivered",
        "peak RSS: router (cycle)",
        "peak RSS: delivery (cycle)",
        "peak RSS: api (cycle)",
    }
    for figure in result["figures"]:
        assert figure["ours"] > 0
        assert figure["peer"] is None or figure["ratio"] > 0
