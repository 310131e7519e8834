"""The `notifier` console script (contract §1)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

import psycopg

from notifier import client, config, db, heap, logs

log = logging.getLogger("notifier.cli")

# Long-running roles live in their own modules, each exposing `main(settings) -> int`.
ROLES: dict[str, tuple[str, str]] = {
    "api": ("notifier.api.app", "the HTTP API (Starlette under uvicorn), /health, /metrics"),
    "router": ("notifier.router", "consume import-completed messages, diff, write events"),
    "delivery": ("notifier.delivery", "claim outbox rows and send signed webhooks"),
    "all": ("notifier.all", "every role in one process"),
    "dev": ("notifier.dev", "throwaway services, sample data, everything running"),
}


def parser() -> argparse.ArgumentParser:
    """The argument parser, with one subcommand per role."""
    p = argparse.ArgumentParser(
        prog="notifier",
        description="Discogsography Notifier: watch entities, get told what each import changed.",
        epilog="Configuration comes from the environment; see the README.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("migrate", help="apply sql/ migrations (idempotent, safe in parallel)")
    for name, (_, help_text) in ROLES.items():
        sub.add_parser(name, help=help_text)
    client.add_commands(sub)
    return p


def _migrate(settings: config.Settings) -> int:
    applied = db.migrate(settings.postgres_conninfo)
    log.info("migrations done", extra={"applied": applied})
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none needed'}")
    return 0


def _role(name: str) -> Callable[[config.Settings], int] | None:
    module_name = ROLES[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            return None
        raise
    main: Callable[[config.Settings], int] = module.main
    return main


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse arguments, load settings, run the role; return the exit code."""
    args = parser().parse_args(argv)
    command: str = args.command
    if command in ("feed", "watch"):
        return client.run(args)
    run = None if command == "migrate" else _role(command)
    if command != "migrate" and run is None:
        print(f"notifier {command}: not built yet", file=sys.stderr)
        return 2
    try:
        settings = config.load(role=command)
    except config.ConfigError as exc:
        print(f"notifier: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, command, settings.replica)
    if command == "migrate":
        try:
            return _migrate(settings)
        except (db.MigrationError, psycopg.Error, OSError) as exc:
            print(f"notifier: migrate failed: {exc}", file=sys.stderr)
            return 1
    assert run is not None
    heap.settle()
    return run(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
