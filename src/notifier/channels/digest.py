"""The email digest of one user's cycle: a text and an HTML part (pure).

Events are grouped by watch (the event's entity: one artist, label, genre,
style or saved search), each group listing at most `MAX_EVENTS_PER_WATCH`
events and at most `MAX_WATCHES` groups, each cut saying how many more there
are; lists inside an event (release ids, aliases, matches) show at most
`MAX_LIST` items and names at most `MAX_NAME` characters. So a digest stays a
readable mail (well under 1 MB) whatever a cycle brought. Artists and labels
link to their Discogs page; the mail links back to the feed when a public URL
is configured.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from notifier.digests import DigestEvent, DigestJob

MAX_WATCHES = 50
MAX_EVENTS_PER_WATCH = 10
MAX_LIST = 10
MAX_NAME = 200

_DISCOGS = {"artist": "https://www.discogs.com/artist/", "label": "https://www.discogs.com/label/"}
_KINDS = {"artist": "Artist", "label": "Label", "genre": "Genre", "style": "Style",
          "search": "Saved search"}  # fmt: skip


@dataclass(frozen=True)
class Watch:
    """The events of one watched entity."""

    entity_type: str | None
    entity_id: str | None
    name: str | None
    events: tuple[DigestEvent, ...]

    @property
    def title(self) -> str:
        """`Artist: John Coltrane` (the id when the graph has no name)."""
        kind = _KINDS.get(self.entity_type or "", (self.entity_type or "Other").capitalize())
        label = _cut(self.name) if self.name else (self.entity_id or "")
        if self.entity_type == "search":
            label = _cut(self.name) if self.name else "a saved search"
        return f"{kind}: {label}" if label else kind

    @property
    def link(self) -> str | None:
        """The entity's Discogs page (artists and labels)."""
        base = _DISCOGS.get(self.entity_type or "")
        return f"{base}{self.entity_id}" if base and self.entity_id else None


def group(events: Sequence[DigestEvent]) -> list[Watch]:
    """Events grouped by entity, groups by kind then name, events by type (order kept)."""
    groups: dict[tuple[str | None, str | None], list[DigestEvent]] = {}
    for e in events:
        groups.setdefault((e.entity_type, e.entity_id), []).append(e)
    watches = [
        Watch(t, i, next((e.entity_name for e in evs if e.entity_name), None), tuple(evs))
        for (t, i), evs in groups.items()
    ]
    order = list(_KINDS)
    return sorted(
        watches,
        key=lambda w: (
            order.index(w.entity_type) if w.entity_type in order else len(order),
            (w.name or "").casefold(),
            w.entity_id or "",
        ),
    )


def _cut(text: str | None, limit: int = MAX_NAME) -> str:
    text = " ".join((text or "").split())  # no line breaks from the graph
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _listing(items: Sequence[str], total: int | None = None) -> str:
    shown = [_cut(x) for x in items[:MAX_LIST]]
    more = max(len(items), total or 0) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _count(value: Any, fallback: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else fallback


def _named(entries: Any) -> list[str]:
    out = []
    for x in entries if isinstance(entries, list) else []:
        if isinstance(x, dict):
            name, ident = x.get("name"), x.get("id")
            out.append(f"{name} ({ident})" if name else str(ident))
    return out


def _ids(values: Any) -> list[str]:
    return [str(x) for x in values] if isinstance(values, list) else []


def summary(e: DigestEvent) -> str:
    """One line saying what the event is about."""
    d = e.detail
    if e.event == "new_releases":
        ids = _ids(d.get("release_ids"))
        n = _count(d.get("new_release_count"), len(ids))
        return f"{n} new release{'s' if n != 1 else ''}: {_listing(ids, n)}"
    if e.event == "new_aliases":
        names = _named(d.get("aliases"))
        return f"new aliases: {_listing(names, _count(d.get('alias_count'), len(names)))}"
    if e.event == "new_members":
        names = _named(d.get("members"))
        return f"new members: {_listing(names, _count(d.get('member_count'), len(names)))}"
    if e.event == "release_count_threshold":
        return (
            f"passed {d.get('threshold')} releases "
            f"(now {d.get('release_count')}, was {d.get('previous_count')})"
        )
    if e.event == "notable_releases":
        ids = _ids(d.get("release_ids"))
        n = _count(d.get("new_release_count"), len(ids))
        return f"{n} new release{'s' if n != 1 else ''}, notable: {_listing(ids)}"
    if e.event == "search_match":
        matches = [
            f"{m.get('name') or m.get('id')} ({m.get('entity_type')} {m.get('id')})"
            for m in d.get("matches") or []
            if isinstance(m, dict)
        ]
        n = _count(d.get("match_count"), len(matches))
        return f"{n} new match{'es' if n != 1 else ''}: {_listing(matches, n)}"
    return _cut(e.event.replace("_", " "))


@dataclass(frozen=True)
class Digest:
    """What a digest mail says, before it is written as text and HTML."""

    version: str
    watches: list[Watch]
    event_count: int
    feed_url: str | None

    @property
    def listed(self) -> list[Watch]:
        """The watches shown (at most MAX_WATCHES)."""
        return self.watches[:MAX_WATCHES]


def _intro(d: Digest) -> str:
    n, w = d.event_count, len(d.watches)
    return (
        f"{n} update{'s' if n != 1 else ''} for {w} of your watch{'es' if w != 1 else ''} "
        f"in the Discogs import {d.version}."
    )


def _more_events(w: Watch) -> int:
    return max(len(w.events) - MAX_EVENTS_PER_WATCH, 0)


def text(d: Digest) -> str:
    """The plain-text part."""
    lines = [_intro(d), ""]
    for w in d.listed:
        lines.append(w.title + (f" <{w.link}>" if w.link else ""))
        lines.extend(f"  - {summary(e)}" for e in w.events[:MAX_EVENTS_PER_WATCH])
        if more := _more_events(w):
            lines.append(f"  … and {more} more event{'s' if more != 1 else ''}")
        lines.append("")
    if hidden := len(d.watches) - len(d.listed):
        lines += [f"… and {hidden} more watch{'es' if hidden != 1 else ''} with news.", ""]
    if d.feed_url:
        lines.append(f"Your notifications: {d.feed_url}")
    lines.append("You get this digest because email is on in your notification preferences.")
    return "\n".join(lines) + "\n"


def html_part(d: Digest) -> str:
    """The HTML part (every text escaped)."""
    esc = html.escape
    out = [
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>',
        f"<p>{esc(_intro(d))}</p>",
    ]
    for w in d.listed:
        title = esc(w.title)
        if w.link:
            title = f'<a href="{esc(w.link)}">{title}</a>'
        out.append(f'<h2 class="watch">{title}</h2><ul>')
        out.extend(f"<li>{esc(summary(e))}</li>" for e in w.events[:MAX_EVENTS_PER_WATCH])
        if more := _more_events(w):
            out.append(f"<li>… and {more} more event{'s' if more != 1 else ''}</li>")
        out.append("</ul>")
    if hidden := len(d.watches) - len(d.listed):
        out.append(f"<p>… and {hidden} more watch{'es' if hidden != 1 else ''} with news.</p>")
    if d.feed_url:
        out.append(f'<p><a href="{esc(d.feed_url)}">Open your notifications</a></p>')
    out.append(
        "<p><small>You get this digest because email is on in your notification "
        "preferences.</small></p></body></html>"
    )
    return "\n".join(out) + "\n"


def feed_url(public_url: str | None) -> str | None:
    """The feed's address under NOTIFIER_PUBLIC_URL (None: no link)."""
    return f"{public_url}/api/notifications" if public_url else None


def message(
    job: DigestJob, events: Sequence[DigestEvent], *, sender: str, public_url: str | None,
    now: datetime,
) -> EmailMessage:  # fmt: skip
    """The digest mail of `job` (same Message-ID on every attempt)."""
    d = Digest(job.version, group(events), len(events), feed_url(public_url))
    msg = EmailMessage()
    n = d.event_count
    msg["Subject"] = (
        f"[Discogsography] {n} update{'s' if n != 1 else ''} in import {_cut(job.version, 64)}"
    )
    msg["From"] = sender
    msg["To"] = job.email or ""
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = f"<{job.message_id}@notifier.discogsography>"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text(d))
    msg.add_alternative(html_part(d), subtype="html")
    return msg
