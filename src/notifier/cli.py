"""The `notifier` console script (contract §1)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

import psycopg

from notifier import client, config, db, heap, logs, secretbox

log = logging.getLogger("notifier.cli")

# Long-running roles live in their own modules, each exposing `main(settings) -> int`.
ROLES: dict[str, tuple[str, str]] = {
    "api": ("notifier.api.app", "the HTTP API (Starlette under uvicorn), /health, /metrics"),
    "router": ("notifier.router", "consume import-completed messages, diff, write events"),
    "delivery": ("notifier.delivery", "claim outbox rows and send signed webhooks"),
    "all": ("notifier.all", "every role in one process"),
    "retention": ("notifier.retention", "run one retention pass now (old feed, outbox, events)"),
    "dev": ("notifier.devkit.dev", "throwaway services, sample data, everything running"),
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
    sub.add_parser(
        "encrypt-secrets",
        help="store every webhook secret under NOTIFIER_ENCRYPTION_KEY (after a key rotation)",
    )
    for name, (_, help_text) in ROLES.items():
        sub.add_parser(name, help=help_text)
    client.add_commands(sub)
    return p


def _migrate(settings: config.Settings) -> int:
    applied = db.migrate(settings.postgres_conninfo)
    log.info("migrations done", extra={"applied": applied})
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none needed'}")
    return 0


# Roles that read or write webhook secrets.
SEALING_ROLES = ("api", "delivery", "all")
_KEY_REQUIRED = (
    "NOTIFIER_ENCRYPTION_KEY: required once a webhook exists (or NOTIFIER_ENCRYPTION_KEY_FILE); "
    "make one with `openssl rand -base64 32`"
)


def _keys(settings: config.Settings) -> secretbox.Keyring | None:
    return secretbox.from_settings(settings.encryption_key, settings.encryption_key_previous)


def _seal_at_start(settings: config.Settings) -> None:
    """Refuse to start without a key once a webhook exists; seal clear and old-key rows.

    A database that cannot be reached is left to the role (it waits for it);
    only a missing key with webhooks present stops the process.
    """
    keys = _keys(settings)
    try:
        with psycopg.connect(db.conninfo_for(settings, "delivery"), autocommit=True,
                             connect_timeout=10) as conn:  # fmt: skip
            if keys is None:
                if secretbox.any_webhook(conn):
                    raise config.ConfigError(_KEY_REQUIRED)
                return
            done = secretbox.reencrypt(conn, keys)
    except psycopg.Error as exc:
        log.warning("webhook secrets not checked at start", extra={"error": str(exc)})
        return
    if done.moved or done.unreadable:
        log.info("webhook secrets sealed", extra={"moved": done.moved,
                                                  "unreadable": done.unreadable})  # fmt: skip


def _encrypt_secrets(settings: config.Settings) -> int:
    keys = _keys(settings)
    if keys is None:
        raise config.ConfigError(
            "NOTIFIER_ENCRYPTION_KEY: required (or NOTIFIER_ENCRYPTION_KEY_FILE)"
        )
    conninfo = db.conninfo_for(settings, "delivery")
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        done = secretbox.reencrypt(conn, keys)
    print(f"moved {done.moved} webhook secret(s) to the current key; "
          f"{done.unreadable} unreadable with the configured keys")  # fmt: skip
    if done.unreadable:
        print("keep NOTIFIER_ENCRYPTION_KEY_PREVIOUS until these are fixed (see the log)")
        return 1
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
    plain = command in ("migrate", "encrypt-secrets")
    run = None if plain else _role(command)
    if not plain and run is None:
        print(f"notifier {command}: not built yet", file=sys.stderr)
        return 2
    try:
        settings = config.load(role="migrate" if plain else command)
        logs.setup(settings.log_level, command, settings.replica)
        if command in SEALING_ROLES:
            _seal_at_start(settings)
        if command == "encrypt-secrets":
            return _encrypt_secrets(settings)
    except config.ConfigError as exc:
        print(f"notifier: configuration error: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"notifier: {command} failed: {exc}", file=sys.stderr)
        return 1
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
