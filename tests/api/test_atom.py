"""The Atom feed: secret URL, hashed token, revocation, RFC 4287 document, ETag/304, 404."""

from __future__ import annotations

import hashlib
import uuid
import xml.etree.ElementTree as ET

import feedparser
import psycopg

from tests.api.conftest import Api, bearer, seed_feed

ATOM = "{http://www.w3.org/2005/Atom}"


async def _feed_url(api: Api, user: uuid.UUID) -> str:
    r = await api.client.post("/api/feed-token", headers=bearer(user))
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    url = r.json()["url"]
    assert set(r.json()) == {"url"}
    assert url.startswith(f"{api.url}/feeds/") and url.endswith(".atom")
    return str(url)


async def test_feed_url_serves_a_valid_atom_feed_of_the_50_newest(
    api: Api, user: uuid.UUID
) -> None:
    seed_feed(api.pg_url, user, 60)
    url = await _feed_url(api, user)
    token = url.rsplit("/", 1)[1].removesuffix(".atom")
    assert len(token) == 43
    r = await api.client.get(url)  # no Authorization header: the URL is the credential
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/atom+xml; charset=utf-8"
    parsed = feedparser.parse(r.content)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert parsed.feed.title == "Discogsography notifications"
    assert parsed.feed.id.startswith("urn:uuid:") and parsed.feed.updated
    entries = parsed.entries
    assert len(entries) == 50
    assert [e.title for e in entries[:3]] == [
        "Artist 60: 60 new release(s)", "Artist 59: 59 new release(s)",
        "Artist 58: 58 new release(s)",
    ]  # fmt: skip
    assert entries[-1].title == "Artist 11: 11 new release(s)"
    ids = [e.id for e in entries]
    assert len(set(ids)) == 50 and all(i.startswith("urn:uuid:") for i in ids)
    api_items = (await api.client.get("/api/notifications", headers=bearer(user))).json()["items"]
    first = entries[0]
    assert first.link == "https://www.discogs.com/artist/60"
    own = f"{api.url}/api/notifications/{api_items[0]['id']}"
    assert [(lk.rel, lk.href) for lk in first.links if lk.rel == "related"] == [("related", own)]
    assert first.updated and "new_releases on artist 60" in first.summary
    assert [t.term for t in first.tags] == ["new_releases"]
    # The same feed again: the same (stable) entry ids.
    again = feedparser.parse((await api.client.get(url)).content)
    assert [e.id for e in again.entries] == ids
    # Structure straight from the XML, too: RFC 4287's required elements.
    root = ET.fromstring(r.content)  # noqa: S314 - our own server's answer
    assert root.tag == f"{ATOM}feed"
    for tag in ("id", "title", "updated", "author"):
        assert root.find(f"{ATOM}{tag}") is not None, tag
    for entry in root.findall(f"{ATOM}entry"):
        for tag in ("id", "title", "updated", "summary", "link"):
            assert entry.find(f"{ATOM}{tag}") is not None, tag


async def test_etag_and_304(api: Api, user: uuid.UUID) -> None:
    seed_feed(api.pg_url, user, 3)
    url = await _feed_url(api, user)
    r = await api.client.get(url)
    tag = r.headers["etag"]
    assert tag.startswith('"') and r.headers["cache-control"] == "private, no-cache"
    r = await api.client.get(url, headers={"If-None-Match": tag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == tag
    seed_feed(api.pg_url, user, 1)
    r = await api.client.get(url, headers={"If-None-Match": tag})
    assert r.status_code == 200 and r.headers["etag"] != tag
    assert len(feedparser.parse(r.content).entries) == 4


async def test_new_token_revokes_the_old_and_only_its_hash_is_stored(
    api: Api, user: uuid.UUID
) -> None:
    seed_feed(api.pg_url, user, 2)
    old = await _feed_url(api, user)
    new = await _feed_url(api, user)
    assert old != new
    r = await api.client.get(old)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await api.client.get(new)).status_code == 200
    token = new.rsplit("/", 1)[1].removesuffix(".atom")
    with psycopg.connect(api.pg_url) as conn:
        rows = conn.execute("SELECT user_id, token_hash FROM notifier.feed_tokens").fetchall()
        dump = conn.execute("SELECT to_jsonb(t)::text FROM notifier.feed_tokens t").fetchall()
    assert rows == [(user, hashlib.sha256(token.encode()).digest())]
    assert token not in str(dump)


async def test_unknown_and_malformed_tokens_are_404(api: Api, user: uuid.UUID) -> None:
    url = await _feed_url(api, user)
    token = url.rsplit("/", 1)[1].removesuffix(".atom")
    for bad in ("A" * 43, token[:-1], token + "A", "x", "%00" * 43, token.upper() + "!"):
        r = await api.client.get(f"/feeds/{bad}.atom")
        assert r.status_code == 404, bad
        assert r.json()["error"]["code"] == "not_found", bad
    # Another user's URL shows only that user's feed; a JWT does not change whose feed it is.
    other = uuid.uuid4()
    seed_feed(api.pg_url, other, 2)
    r = await api.client.get(url, headers=bearer(other))
    assert r.status_code == 200 and feedparser.parse(r.content).entries == []
    assert (await api.client.post("/api/feed-token")).status_code == 401


async def test_characters_xml_cannot_hold_are_replaced(api: Api, user: uuid.UUID) -> None:
    seed_feed(api.pg_url, user, 1)
    with psycopg.connect(api.pg_url) as conn:
        conn.execute(
            "UPDATE notifier.events SET entity_name = %s WHERE id = (SELECT event_id "
            "FROM notifier.notification_events WHERE user_id = %s)",
            ("Bad\x01Name <script>&amp; \ufffe]]>", user),
        )
    r = await api.client.get(await _feed_url(api, user))
    parsed = feedparser.parse(r.content)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.entries[0].title == "Bad\ufffdName <script>&amp; \ufffd]]>: 1 new release(s)"
