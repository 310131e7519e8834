"""The user CLI: `notifier feed …` and `notifier watch …`, a client of the HTTP API.

The base URL and token come from `--url`/`--token` or `NOTIFIER_URL` /
`NOTIFIER_TOKEN` (default URL `http://localhost:8010`). Output is a plain
table for people, or `--json` for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import httpx

DEFAULT_URL = "http://localhost:8010"


class ClientError(RuntimeError):
    """The API refused or could not be reached; `str()` is one line."""


# --------------------------------------------------------------------------- pure helpers


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a left-aligned text table with a header; '(none)' when empty."""
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    text = str(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def summarize(detail: Any) -> str:
    """A short human summary of a notification's `detail` (contract §6)."""
    if not isinstance(detail, dict):
        return ""
    if "new_release_count" in detail:
        return f"{detail['new_release_count']} new release(s)"
    for key in ("aliases", "members"):
        if isinstance(detail.get(key), list):
            names = ", ".join(str(x.get("name", x.get("id"))) for x in detail[key][:3])
            return f"{key}: {names}"
    if "threshold" in detail:
        return f"passed {detail['threshold']} releases (now {detail.get('release_count')})"
    if "match_count" in detail:
        return f"{detail['match_count']} match(es)"
    return ""


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs into a watch's options; integers where they look like ones."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClientError(f"option {pair!r} is not key=value")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    return options


# --------------------------------------------------------------------------- HTTP


class Client:
    """A small synchronous client of the Notifier API."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(10.0),
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the decoded JSON (None for 204), or raise ClientError."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.http.base_url}: {exc}") from None
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_error:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            code = error.get("code", f"http_{response.status_code}")
            message = error.get("message", response.reason_phrase)
            raise ClientError(f"{code} ({response.status_code}): {message}")
        return body

    def pages(self, path: str, params: dict[str, Any], limit: int | None) -> list[dict[str, Any]]:
        """Follow `next_cursor` until `limit` items (or all when None)."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.request(
                "GET", path, params={**params, **({"cursor": cursor} if cursor else {})}
            )
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor or (limit is not None and len(items) >= limit):
                return items if limit is None else items[:limit]


# --------------------------------------------------------------------------- commands


def _feed_list(c: Client, a: argparse.Namespace) -> str | Any:
    params: dict[str, Any] = {"limit": min(a.limit, 100)}
    if a.unread:
        params["unread"] = "true"
    items = c.pages("/api/notifications", params, a.limit)
    if a.json:
        return items
    rows = [
        {**n, "entity": f"{n.get('entity_type')}:{n.get('entity_name') or n.get('entity_id')}",
         "summary": summarize(n.get("detail")), "read": "yes" if n.get("read_at") else "no"}
        for n in items
    ]  # fmt: skip
    return render_table(rows, ["id", "created_at", "event", "entity", "summary", "read"])


def _feed_count(c: Client, a: argparse.Namespace) -> str | Any:
    body = c.request("GET", "/api/notifications/unread-count")
    return body if a.json else f"{body['count']} unread"


def _feed_read(c: Client, a: argparse.Namespace) -> str | Any:
    body = c.request("POST", f"/api/notifications/{a.id}/read")
    return body if a.json else f"marked {a.id} read"


def _feed_read_all(c: Client, a: argparse.Namespace) -> str | Any:
    body = c.request("POST", "/api/notifications/read-all")
    return body if a.json else f"marked {body['marked']} read"


def _watch_add(c: Client, a: argparse.Namespace) -> str | Any:
    options = parse_options(a.option or [])
    if a.threshold is not None:
        options["threshold"] = a.threshold
    if a.q is not None:
        options["q"] = a.q
    payload = {"entity_type": a.entity_type, "entity_id": a.entity_id or "", "options": options}
    watch = c.request("POST", "/api/watchlist", json=payload)
    return watch if a.json else render_table([watch], _WATCH_COLUMNS)


_WATCH_COLUMNS = ["id", "entity_type", "entity_id", "entity_name", "options", "created_at"]


def _watch_ls(c: Client, a: argparse.Namespace) -> str | Any:
    items = c.pages("/api/watchlist", {"limit": 100}, None)
    return items if a.json else render_table(items, _WATCH_COLUMNS)


def _watch_rm(c: Client, a: argparse.Namespace) -> str | Any:
    c.request("DELETE", f"/api/watchlist/{a.id}")
    return {"status": "ok"} if a.json else f"removed {a.id}"


def add_commands(sub: Any) -> None:
    """Add the `feed` and `watch` command groups to the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"API base URL (env NOTIFIER_URL, default {DEFAULT_URL})")
    common.add_argument("--token", help="bearer token (env NOTIFIER_TOKEN)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    feed = sub.add_parser("feed", help="your notifications (a client of the API)")
    fsub = feed.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = fsub.add_parser("list", parents=[common], help="list notifications, newest first")
    p.add_argument("--unread", action="store_true", help="only unread ones")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.set_defaults(run=_feed_list)
    fsub.add_parser("count", parents=[common], help="unread count").set_defaults(run=_feed_count)
    p = fsub.add_parser("read", parents=[common], help="mark one notification read")
    p.add_argument("id")
    p.set_defaults(run=_feed_read)
    p = fsub.add_parser("read-all", parents=[common], help="mark every notification read")
    p.set_defaults(run=_feed_read_all)

    watch = sub.add_parser("watch", help="your watchlist (a client of the API)")
    wsub = watch.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = wsub.add_parser(
        "add", parents=[common], help="watch an artist, label, genre, style or search"
    )
    p.add_argument("entity_type", choices=["artist", "label", "genre", "style", "search"])
    p.add_argument("entity_id", nargs="?", help="id (artist, label) or name (genre, style)")
    p.add_argument("--threshold", type=int, help="genre/style release-count threshold")
    p.add_argument("--q", help="search: free text")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="search option")
    p.set_defaults(run=_watch_add)
    wsub.add_parser("ls", parents=[common], help="list your watches").set_defaults(run=_watch_ls)
    p = wsub.add_parser("rm", parents=[common], help="stop watching")
    p.add_argument("id")
    p.set_defaults(run=_watch_rm)


def run(args: argparse.Namespace) -> int:
    """Run a `feed`/`watch` command; print its output; return the exit code."""
    url = args.url or os.environ.get("NOTIFIER_URL") or DEFAULT_URL
    token = args.token or os.environ.get("NOTIFIER_TOKEN")
    if not token:
        print("notifier: a token is needed: --token or NOTIFIER_TOKEN", file=sys.stderr)
        return 2
    command: Callable[[Client, argparse.Namespace], Any] = args.run
    try:
        out = command(Client(url, token), args)
    except ClientError as exc:
        print(f"notifier: {exc}", file=sys.stderr)
        return 1
    print(out if isinstance(out, str) else json.dumps(out, indent=2))
    return 0
