"""JSON log lines: one object per line, role and replica on each, extras inlined."""

from __future__ import annotations

import json
import logging

import pytest

from notifier import logs


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO", "router", "replica-1")
    log = logging.getLogger("notifier.test")
    log.info("cycle fired", extra={"version": "20260201", "units": 3})
    log.debug("hidden at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("unit failed")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "cycle fired" and first["level"] == "info"
    assert (first["role"], first["replica"]) == ("router", "replica-1")
    assert (first["version"], first["units"]) == ("20260201", 3)
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]
    assert logging.getLogger("aio_pika").level == logging.WARNING
