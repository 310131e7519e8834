"""The user CLI (`notifier feed …`, `notifier watch …`) against the real API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

from neo4j import AsyncDriver

from notifier.devkit.graphbuilder import GraphBuilder
from tests.api.conftest import Api, seed_feed, token


async def _cli(api: Api, user: uuid.UUID, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "notifier.cli", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(NOTIFIER_URL=api.url, NOTIFIER_TOKEN=token(user))
    return await asyncio.to_thread(
        subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def test_feed_commands(api: Api, user: uuid.UUID) -> None:
    seed_feed(api.pg_url, user, 3)
    count = await _cli(api, user, "feed", "count")
    assert (count.returncode, count.stdout) == (0, "3 unread\n"), count.stderr

    listed = await _cli(api, user, "feed", "list", "--unread")
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "CREATED_AT", "EVENT", "ENTITY", "SUMMARY", "READ"]
    assert len(lines) == 4 and "artist:Artist 3" in lines[1] and "3 new release(s)" in lines[1]

    items = json.loads((await _cli(api, user, "feed", "list", "--json", "--limit", "2")).stdout)
    assert len(items) == 2
    first = str(items[0]["id"])
    read = await _cli(api, user, "feed", "read", first)
    assert read.stdout == f"marked {first} read\n", read.stderr
    assert (await _cli(api, user, "feed", "count")).stdout == "2 unread\n"
    assert (await _cli(api, user, "feed", "read-all")).stdout == "marked 2 read\n"
    assert (await _cli(api, user, "feed", "list", "--unread")).stdout == "(none)\n"


async def test_watch_commands(
    api: Api, user: uuid.UUID, graph_driver: AsyncDriver, graph_db: str
) -> None:
    await GraphBuilder().artist("42", "Alice Coltrane").write(graph_driver, graph_db)
    added = await _cli(api, user, "watch", "add", "artist", "42")
    assert added.returncode == 0, added.stderr
    assert "Alice Coltrane" in added.stdout
    search = await _cli(api, user, "watch", "add", "search", "--q", "love supreme",
                        "--option", "year_from=1960", "--json")  # fmt: skip
    assert search.returncode == 0, search.stderr
    watch = json.loads(search.stdout)
    assert watch["options"]["q"] == "love supreme" and watch["options"]["year_from"] == 1960

    listed = await _cli(api, user, "watch", "ls")
    assert len(listed.stdout.splitlines()) == 3

    missing = await _cli(api, user, "watch", "add", "artist", "999")
    assert missing.returncode == 1
    assert missing.stderr.startswith("notifier: not_found (404):")

    removed = await _cli(api, user, "watch", "rm", watch["id"])
    assert removed.stdout == f"removed {watch['id']}\n"
    assert len((await _cli(api, user, "watch", "ls")).stdout.splitlines()) == 2
