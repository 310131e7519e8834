"""The tests' own RabbitMQ broker starts again on other ports when a port it picked
is taken before the broker binds it (as by another process's connection)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from notifier.devkit import services


def test_a_taken_port_starts_the_broker_again_on_fresh_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as squatter:  # not Erlang, on the first start's dist port
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port = services.free_port
        # The first start picks its AMQP, dist and epmd ports in that order.
        picks = iter([real_free_port(), taken])
        monkeypatch.setattr(services, "free_port", lambda: next(picks, None) or real_free_port())
        starts: list[str] = []
        real_start = services._start_rabbitmq

        @contextlib.contextmanager
        def counted(binary: str) -> Iterator[Any]:
            starts.append(binary)
            with real_start(binary) as svc:
                yield svc

        monkeypatch.setattr(services, "_start_rabbitmq", counted)
        with services._local_rabbitmq() as svc:
            assert services._amqp_ready(svc.host, svc.port)
        assert len(starts) == 2


def test_a_server_that_exits_is_reported_at_once_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("boot\n{dist_port_already_used,4369}\n")
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(services.ServiceUnavailable) as got:
        services._wait("broker", lambda: False, 60, log, proc)
    assert str(got.value).startswith("broker exited with code 0")
    assert "dist_port_already_used" in str(got.value)
