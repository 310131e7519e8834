"""Production roles never load the dev tooling (`notifier.devkit`) at import time."""

from __future__ import annotations

import subprocess
import sys

import pytest

ROLE_MODULES = (
    "notifier.cli",
    "notifier.router",
    "notifier.delivery",
    "notifier.api.app",
    "notifier.all",
    "notifier.retention",
)

# Imports every module of the package outside devkit, then names the devkit modules loaded.
_PROBE = """
import importlib, pkgutil, sys
import notifier
for name in sys.argv[1:]:
    importlib.import_module(name)
def walk(path, prefix):
    for info in pkgutil.iter_modules(path, prefix):
        if info.name != "notifier.devkit":
            module = importlib.import_module(info.name)
            if info.ispkg:
                walk(module.__path__, info.name + ".")
walk(notifier.__path__, "notifier.")
print(",".join(sorted(m for m in sys.modules if m.startswith("notifier.devkit"))))
"""


def _devkit_loaded(*modules: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    return [m for m in out.split(",") if m]


def test_production_modules_do_not_import_devkit() -> None:
    assert _devkit_loaded(*ROLE_MODULES) == []


@pytest.mark.parametrize("module", ["notifier.devkit.services", "notifier.devkit.dev"])
def test_the_probe_sees_devkit_when_it_is_imported(module: str) -> None:
    assert module in _devkit_loaded(module)
