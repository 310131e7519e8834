"""The email digest's text and HTML (pure): grouping, caps, links, escaping."""

from __future__ import annotations

import email
import email.policy
import uuid
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

from notifier.channels import digest
from notifier.digests import DigestEvent, DigestJob

JOB = DigestJob(1, uuid.uuid4(), uuid.uuid4(), "20260301", uuid.uuid4(), 1, 0, "fan@example.org")


def _event(etype: str, eid: str, name: str | None, event: str, **detail: Any) -> DigestEvent:
    return DigestEvent(uuid.uuid4(), event, etype, eid, name, detail)


def _parse(events: list[DigestEvent], public_url: str | None) -> email.message.EmailMessage:
    msg = digest.message(JOB, events, sender="n@example.org", public_url=public_url,
                         now=datetime(2026, 3, 5, tzinfo=UTC))  # fmt: skip
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


class _Headings(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.items: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "li"):
            self._in = tag
            (self.h2 if tag == "h2" else self.items).append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "h2":
            self.h2[-1] += data
        elif self._in == "li":
            self.items[-1] += data


def test_events_are_grouped_by_watch_in_both_parts_with_links() -> None:
    events = [
        _event("label", "10", "Blue <Note>", "new_releases", new_release_count=1,
               release_ids=["300"]),
        _event("artist", "1", "John Coltrane", "new_releases", new_release_count=12,
               release_ids=[str(100 + i) for i in range(12)]),
        _event("artist", "1", "John Coltrane", "new_aliases",
               aliases=[{"id": "6", "name": "Trane"}], alias_count=1),
        _event("genre", "Jazz", "Jazz", "release_count_threshold", threshold=100,
               previous_count=99, release_count=101),
    ]  # fmt: skip
    msg = _parse(events, "https://notifier.example/n")
    assert msg["Subject"] == "[Discogsography] 4 updates in import 20260301"
    assert msg["Message-ID"] == f"<{JOB.message_id}@notifier.discogsography>"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    body = text.get_content()
    assert (
        body.index("Artist: John Coltrane")
        < body.index("Label: Blue <Note>")
        < body.index("Genre: Jazz")
    )
    coltrane = body[body.index("Artist: John Coltrane") : body.index("Label:")]
    assert "<https://www.discogs.com/artist/1>" in coltrane
    assert "new aliases: Trane (6)" in coltrane
    assert (
        "12 new releases: 100, 101, 102, 103, 104, 105, 106, 107, 108, 109 and 2 more" in coltrane
    )
    assert "passed 100 releases (now 101, was 99)" in body
    assert "https://notifier.example/n/api/notifications" in body
    parser = _Headings()
    parser.feed(html.get_content())
    assert parser.h2 == ["Artist: John Coltrane", "Label: Blue <Note>", "Genre: Jazz"]
    assert "Blue &lt;Note&gt;" in html.get_content()  # escaped, not markup
    assert 'href="https://notifier.example/n/api/notifications"' in html.get_content()
    assert len(parser.items) == 4


def test_without_a_public_url_there_is_no_feed_link() -> None:
    msg = _parse([_event("artist", "1", "A", "new_releases", release_ids=["1"])], None)
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    assert "/api/notifications" not in text.get_content()
    assert "/api/notifications" not in html.get_content()


def test_size_is_bounded_and_says_how_many_more() -> None:
    many = [
        _event("artist", "1", "Busy", "new_releases", release_ids=[str(i)]) for i in range(25)
    ] + [
        _event("artist", str(1000 + w), f"W{w:03d}", "new_releases", release_ids=["9"] * 500,
               new_release_count=5000)
        for w in range(digest.MAX_WATCHES + 9)
    ]  # fmt: skip
    msg = _parse(many, None)
    text = msg.get_body(("plain",))
    assert text is not None
    body = text.get_content()
    busy = body[body.index("Artist: Busy") : body.index("Artist: W000")]
    assert busy.count("  - ") == digest.MAX_EVENTS_PER_WATCH
    assert "… and 15 more events" in busy
    assert "… and 10 more watches with news." in body
    assert "5000 new releases: " + ", ".join(["9"] * digest.MAX_LIST) + " and 4990 more" in body
    assert len(msg.as_bytes()) < 100_000


def test_names_cannot_break_lines_or_headers() -> None:
    msg = _parse([_event("artist", "1", "Evil\r\nBcc: x@y.z", "new_releases", release_ids=[])],
                 None)  # fmt: skip
    assert msg["Bcc"] is None
    text = msg.get_body(("plain",))
    assert text is not None and "Artist: Evil Bcc: x@y.z" in text.get_content()
