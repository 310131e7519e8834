"""The console script: commands of contract §1."""

from __future__ import annotations

import subprocess
import sys

import pytest

from notifier import cli


def test_help_lists_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "notifier.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("migrate", "api", "router", "delivery", "all", "dev"):
        assert f"    {command} " in done.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_unbuilt_role_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.ROLES, "router", ("notifier.not_a_module", "x"))
    assert cli.main(["router"]) == 2
    assert "not built yet" in capsys.readouterr().err


def test_migrate_reports_a_connection_failure_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POSTGRES_PASSWORD", "x")
    monkeypatch.setenv("POSTGRES_HOST", "127.0.0.1")
    monkeypatch.setenv("POSTGRES_PORT", "1")  # nothing listens there
    assert cli.main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("notifier: migrate failed:")
    assert "Traceback" not in err
