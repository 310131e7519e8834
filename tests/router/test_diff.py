"""The pure diff functions: ids, caps, baselines, thresholds, ranking, search options."""

from __future__ import annotations

import json

import pytest

from notifier import diff
from notifier.router import BadMessage, decode_message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("123", 123),
        (123, 123),
        ("0", 0),
        ("007", None),
        ("00", None),
        ("12a", None),
        (" 12", None),
        ("1" * 20, None),
        ("", None),
        ("-1", None),
        (-1, None),
        (True, None),
        (None, None),
        (1.5, None),
        ("١٢", None),
        (str(2**63), None),
        (str(2**63 - 1), 2**63 - 1),
    ],
)
def test_parse_id(raw: object, expected: int | None) -> None:
    assert diff.parse_id(raw) == expected


def test_clip_name_drops_nul_and_clips() -> None:
    assert diff.clip_name("a\x00b") == "ab"  # PostgreSQL text cannot hold NUL
    assert diff.clip_name(12) == "12"
    assert diff.clip_name("x" * 300, 10) == "x" * 9 + "…"
    assert diff.clip_name(None) is None


def test_parse_ids_sorts_dedups_and_counts_bad() -> None:
    c = diff.Counters()
    assert diff.parse_ids(["3", "1", "3", None, "x", 2], c, "release_ids") == [1, 2, 3]
    assert c.values == {"non_numeric_release_ids": 1}


def _artist(releases: list[object], aliases=(), members=()) -> diff.ArtistState:  # type: ignore[no-untyped-def]
    return diff.ArtistState("A", releases, list(aliases), list(members))


def test_artist_baseline_then_changes_then_stale_snapshot() -> None:
    first = diff.diff_artist("v1", None, "1", _artist(["1"]), None)
    assert first.events == [] and first.counters.values == {"baseline": 1}
    snap = first.snapshot
    assert snap is not None and list(snap.release_ids or []) == [1]
    second = diff.diff_artist("v2", "v1", "1", _artist(["1", "2"], [("9", "Al")]), snap)
    assert [(e.event, e.detail) for e in second.events] == [
        ("new_releases", {"new_release_count": 1, "release_ids": ["2"]}),
        ("new_aliases", {"aliases": [{"id": "9", "name": "Al"}], "alias_count": 1}),
    ]
    assert second.events[0].key("v2") == "v2:artist:1:new_releases"
    # A snapshot from an older cycle (the entity was unwatched meanwhile): baseline again.
    stale = diff.diff_artist("v3", "v2", "1", _artist(["1", "2", "3"]), snap)
    assert stale.events == [] and stale.counters.values == {"baseline": 1}


@pytest.mark.parametrize(
    ("state", "same"),
    [
        (diff.ArtistState("A", ["2", "1"], [], []), True),  # graph order does not matter
        (diff.ArtistState("A", ["1", "2", "3"], [], []), False),  # a new release
        (diff.ArtistState("A", ["1"], [], []), False),  # one gone: the snapshot is rewritten
        (diff.ArtistState("B", ["1", "2"], [], []), False),
        (diff.ArtistState(None, ["1", "2"], [], []), False),  # counted as missing_name
        (diff.ArtistState(7, ["1", "2"], [], []), False),
        (diff.ArtistState("A", ["1", "2", "2"], [], []), False),  # duplicate
        (diff.ArtistState("A", ["1", "02"], [], []), False),  # counted as non-numeric
        (diff.ArtistState("A", ["1", 2], [], []), False),
        (diff.ArtistState("A", ["1", "2"], [("9", "Al")], []), False),
        (diff.ArtistState("A", ["1", "2"], [], [("8", None)]), False),
        (diff.ArtistState("A" * 600, ["1", "2"], [], []), False),  # clipped
    ],
)
def test_artist_unchanged_is_the_diff_finding_nothing(state: diff.ArtistState, same: bool) -> None:
    """The fast path answers True only when the full diff has nothing to say."""
    snap = diff.Snapshot("v1", "A", [1, 2], [], [], 2)
    assert diff.artist_unchanged(state, snap) is same
    full = diff.diff_artist("v2", "v1", "1", state, snap)
    if same:
        assert full.events == [] and full.counters.values == {}
        assert full.snapshot == diff.Snapshot("v2", "A", [1, 2], [], [], 2)
    # A snapshot without alias/member sets (NULL) is rewritten, never left as it is.
    assert not diff.artist_unchanged(state, diff.Snapshot("v1", "A", [1, 2], None, [], 2))


def test_removed_items_are_not_events() -> None:
    snap = diff.Snapshot("v1", "A", [1, 2], [5], [6], 2)
    result = diff.diff_artist("v2", "v1", "1", _artist(["1"]), snap)
    assert result.events == []


def test_vanished_keeps_its_last_known_snapshot() -> None:
    snap = diff.Snapshot("v1", "A", [1], [], [], 1)
    result = diff.diff_artist("v2", "v1", "1", None, snap)
    assert result.events == [] and result.counters.values == {"vanished": 1}
    assert result.snapshot == diff.Snapshot("v2", "A", [1], [], [], 1)
    assert diff.diff_label("v2", "v1", "1", None, None).snapshot is None


def test_release_ids_capped_with_full_count_and_body_small() -> None:
    snap = diff.Snapshot("v1", "A", [], [], [], 0)
    big = [str(10**17 + i) for i in range(5000)]
    aliases = [(str(i), "n" * 10_000) for i in range(1, 400)]
    result = diff.diff_artist("v2", "v1", "1", _artist(big, aliases, aliases), snap)
    by_event = {e.event: e.detail for e in result.events}
    assert by_event["new_releases"]["new_release_count"] == 5000
    assert len(by_event["new_releases"]["release_ids"]) == diff.RELEASE_ID_CAP
    assert by_event["new_aliases"]["alias_count"] == 399
    assert len(by_event["new_aliases"]["aliases"]) <= diff.NAMED_CAP
    assert all(len(a["name"]) <= diff.NAME_MAX for a in by_event["new_aliases"]["aliases"])
    for detail in by_event.values():
        assert len(json.dumps(detail).encode()) < diff.DETAIL_MAX_BYTES


def test_fit_detail_halves_lists_until_small() -> None:
    detail = {"n": 3, "items": ["x" * 1000] * 200}
    fitted = diff.fit_detail(detail, max_bytes=10_000)
    assert fitted["n"] == 3 and 0 < len(fitted["items"]) < 10
    assert len(json.dumps(fitted).encode()) < 10_000
    # Between half the limit and the limit (compact): measured as json.dumps does.
    spaced = {"ids": list(range(1500))}  # 6,399 bytes compact, 7,899 with spaces
    assert diff.fit_detail(spaced, max_bytes=7_800)["ids"] == list(range(750))
    assert diff.fit_detail(spaced, max_bytes=7_900) == spaced


def test_thresholds_one_event_per_crossed_value() -> None:
    snap = diff.Snapshot("v1", release_count=90)
    result = diff.diff_tag(
        "v2", "v1", "genre", "Jazz", diff.TagState(1200), snap, [95, 100, 5000, 1000, 90], []
    )
    assert [(e.detail["threshold"], e.key("v2")) for e in result.events] == [
        (95, "v2:genre:Jazz:release_count_threshold:95"),
        (100, "v2:genre:Jazz:release_count_threshold:100"),
        (1000, "v2:genre:Jazz:release_count_threshold:1000"),
    ]
    assert result.events[0].detail == {"threshold": 95, "previous_count": 90, "release_count": 1200}
    # Falling counts cross nothing; a baseline never fires.
    assert diff.diff_tag("v2", "v1", "genre", "J", diff.TagState(10), snap, [50], []).events == []
    assert diff.diff_tag("v1", None, "genre", "J", diff.TagState(500), None, [100], []).events == []


def test_notable_ranking_biggest_artist_then_lowest_id() -> None:
    snap = diff.Snapshot("v1", release_count=1)
    new = [
        diff.NotableRelease(i, None, rank)
        for i, rank in [(5, 1), (3, 10), (4, 10), (9, 2)] + [(100 + i, 0) for i in range(20)]
    ]
    result = diff.diff_tag("v2", "v1", "style", "Bop", diff.TagState(25), snap, [], new)
    assert [(e.event, e.detail) for e in result.events] == [
        (
            "notable_releases",
            {
                "release_ids": ["3", "4", "9", "5", "100", "101", "102", "103", "104", "105"],
                "new_release_count": 24,
            },
        ),
    ]


@pytest.mark.parametrize(
    ("options", "ok"),
    [
        ({"q": "Love  Supreme"}, True),
        ({"genre": "Jazz", "year_from": 1960}, True),
        ({}, False),
        ({"q": "  "}, False),
        ({"q": 5}, False),
        ({"year_to": "1970"}, False),
        ({"year_to": True}, False),
        ({"year_from": 10**12}, False),
        ({"genre": ["a"]}, False),
        ({"entity_type": "artist", "q": "x"}, False),
        ({"entity_type": "Release", "q": "x"}, True),
        ("not a dict", False),
        (None, False),
    ],
)
def test_parse_search(options: object, ok: bool) -> None:
    assert (diff.parse_search(options) is not None) is ok


def test_parse_search_normalises() -> None:
    query = diff.parse_search({"q": "Love  SUPREME", "genre": " Jazz ", "label": "Impulse!"})
    assert query == diff.SearchQuery(terms=("love", "supreme"), genre="jazz", label="impulse!")


def test_search_match_detail_and_baseline() -> None:
    matches = [diff.SearchMatch(i, "t" * 1000) for i in range(150)]
    snap = diff.Snapshot("v1", release_count=0)
    result = diff.diff_search("v2", "v1", "h", "my search", matches, 150, snap)
    (event,) = result.events
    assert event.detail["match_count"] == 150
    assert len(event.detail["matches"]) == diff.SEARCH_MATCH_CAP
    assert event.detail["matches"][0]["entity_type"] == "release"
    assert diff.diff_search("v2", "v1", "h", None, [], 0, snap).events == []
    assert diff.diff_search("v1", None, "h", None, matches, 150, None).events == []
    assert diff.diff_search("v2", "v1", "h", None, None, 0, snap).counters.values == {
        "invalid_search": 1
    }


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b'{"type": "import_completed"}',
        b"\xff\xfe",
        b'{"type": "import_completed", "service": "", "version": "v1"}',
        b'{"type": "import_completed", "service": "g", "version": ""}',
        b'{"type": "import_completed", "service": "g\\u0000", "version": "v1"}',
        b'{"type": "import_completed", "service": "g", "version": "a b"}',
        b'{"type": "import_completed", "service": "g", "version": 20260201}',
        b'{"type": "import_completed", "service": "g", "version": "v", "completed_at": 5}',
        b'{"type": "x", "service": "g", "version": "v"}',
        b" " * 70_000,
    ],
)
def test_decode_message_rejects(body: bytes) -> None:
    with pytest.raises(BadMessage):
        decode_message(body)


def test_decode_message_accepts_contract_example_and_ignores_unknown_fields() -> None:
    msg = decode_message(
        b'{"type": "import_completed", "service": "graphinator", "version": "20260201",'
        b' "completed_at": "2026-02-03T04:05:06Z", "extra": [1]}'
    )
    assert (msg.service, msg.version, msg.completed_at and msg.completed_at.year) == (
        "graphinator",
        "20260201",
        2026,
    )
