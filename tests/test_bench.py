"""The benchmark harness keeps working (tiny scale; figures are reported, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from notifier import services

ROOT = Path(__file__).resolve().parent.parent


def test_bench_runs_at_tiny_scale(pg_server: services.PostgresService, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, services.POSTGRES_URL_ENV: pg_server.url()}
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
        "peak RSS: api",
        "outbox claim+complete/s (null transport)",
        "diff entities/s (artists)",
        "fan-out feed rows/s",
    }
    for figure in result["figures"]:
        assert figure["ours"] > 0
        assert figure["peer"] is None or figure["ratio"] > 0
