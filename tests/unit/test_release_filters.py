"""Release filters of artist and label watches: parsing, passing, and one event per outcome."""

from __future__ import annotations

from typing import Any

import pytest

from notifier import diff
from notifier.api.errors import ApiError
from notifier.api.watchlist import release_filter_options

VINYL = diff.ReleaseFilter(formats=frozenset({"vinyl"}))
NINETIES = diff.ReleaseFilter(year_from=1990, year_to=1999)


@pytest.mark.parametrize(
    ("rule", "year", "formats", "passes"),
    [
        (VINYL, 1999, ["CD", "Vinyl", "Vinyl"], True),  # repeats, any listed format
        (VINYL, 1999, ["VINYL"], True),  # case-insensitive
        (VINYL, 1999, ["CD", "CD"], False),
        (VINYL, 1999, [], False),  # the platform's "no format_names"
        (VINYL, 1999, None, False),  # formats absent
        (VINYL, 1999, "Vinyl", False),  # not a list, as the contract has it
        (VINYL, None, ["Vinyl", 7, None], True),  # odd entries ignored; no year bound
        (NINETIES, 1990, None, True),  # bounds inclusive, formats not asked for
        (NINETIES, 1999, [], True),
        (NINETIES, 2000, ["Vinyl"], False),
        (NINETIES, 1989, ["Vinyl"], False),
        (NINETIES, None, ["Vinyl"], False),  # no year fails a bound
        (NINETIES, 0, ["Vinyl"], False),  # Discogs' "unknown year"
        (NINETIES, True, ["Vinyl"], False),  # a bool is not a year
        (NINETIES, "1995", ["Vinyl"], False),  # nor is text
        (diff.ReleaseFilter(year_to=1999), 0, None, False),  # year 0 is no year, even below
        (diff.ReleaseFilter(), None, None, True),  # the empty filter passes everything
    ],
)
def test_a_release_passes_a_filter(
    rule: diff.ReleaseFilter, year: object, formats: object, passes: bool
) -> None:
    assert rule.passes(year, formats) is passes


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, diff.ReleaseFilter()),
        ({"formats": ["Vinyl", "CD"]}, diff.ReleaseFilter(formats=frozenset({"vinyl", "cd"}))),
        ({"year_from": 1990, "year_to": 1999}, NINETIES),
        ({"formats": []}, None),
        ({"formats": "Vinyl"}, None),
        ({"formats": [1]}, None),
        ({"year_from": "1990"}, None),
        ({"year_from": True}, None),
        ({"threshold": 5}, None),
        ([], None),
    ],
)
def test_parse_filter(options: object, expected: diff.ReleaseFilter | None) -> None:
    assert diff.parse_filter(options) == expected


def _event(ids: list[int]) -> diff.EventDraft:
    return diff._new_releases("artist", "1", "John Coltrane", ids)


FACETS: dict[int, diff.Facets] = {
    1: (1965, ["Vinyl", "LP", "Vinyl"]),
    2: (2005, ["CD"]),
    3: (None, ["Vinyl"]),
    # 4 is not in the graph (any more): it fails every filter but the empty one
}


def test_one_event_per_distinct_outcome() -> None:
    audiences: list[tuple[Any, diff.ReleaseFilter]] = [
        ({}, diff.ReleaseFilter()),
        ({"formats": ["Vinyl"]}, VINYL),
        ({"formats": ["LP", "vinyl"]}, diff.ReleaseFilter(formats=frozenset({"lp", "vinyl"}))),
        ({"year_from": 2000}, diff.ReleaseFilter(year_from=2000)),
        ({"formats": ["Cassette"]}, diff.ReleaseFilter(formats=frozenset({"cassette"}))),
    ]
    out = diff.filter_new_releases(_event([1, 2, 3, 4]), audiences, FACETS)
    by_ids = {tuple(e.detail["release_ids"]): e for e in out}
    assert set(by_ids) == {("1", "2", "3", "4"), ("1", "3"), ("2",)}  # Cassette: nothing
    assert by_ids[("1", "2", "3", "4")].audience == ({},)
    assert by_ids[("1", "2", "3", "4")].key("v2") == "v2:artist:1:new_releases"
    assert by_ids[("1", "3")].audience == ({"formats": ["LP", "vinyl"]}, {"formats": ["Vinyl"]})
    assert by_ids[("1", "3")].detail == {"new_release_count": 2, "release_ids": ["1", "3"]}
    narrow = by_ids[("2",)].key("v2")
    assert narrow.startswith("v2:artist:1:new_releases:only:")
    assert narrow != by_ids[("1", "3")].key("v2")
    # The key names the outcome: the same outcome from other filters, in any
    # order, has the same key (a re-run makes nothing new).
    again = diff.filter_new_releases(
        _event([1, 2, 3, 4]), [({"year_from": 2001}, diff.ReleaseFilter(year_from=2001))], FACETS
    )
    assert [e.key("v2") for e in again] == [narrow]
    assert [e.audience for e in again] == [({"year_from": 2001},)]


def test_a_filter_passing_everything_shares_the_plain_event() -> None:
    wide = diff.ReleaseFilter(formats=frozenset({"vinyl", "cd"}))
    out = diff.filter_new_releases(
        _event([1, 2]), [({}, diff.ReleaseFilter()), ({"formats": ["CD", "Vinyl"]}, wide)], FACETS
    )
    assert len(out) == 1 and out[0].key("v2") == "v2:artist:1:new_releases"
    assert out[0].audience == ({"formats": ["CD", "Vinyl"]}, {})


def test_nothing_when_no_filter_passes_and_no_plain_watcher() -> None:
    assert diff.filter_new_releases(_event([2, 4]), [({"formats": ["Vinyl"]}, VINYL)], FACETS) == []


def test_release_filter_options_are_validated_and_stored_normalised() -> None:
    stored = release_filter_options(
        {"formats": [" Vinyl ", "cd", "vinyl", '7"  Single'], "year_from": 1960, "year_to": 1969}
    )
    assert stored == {"formats": ['7" Single', "cd", "Vinyl"], "year_from": 1960,
                      "year_to": 1969}  # fmt: skip
    assert release_filter_options({}) == {}
    assert release_filter_options({"formats": None, "year_to": 2000}) == {"year_to": 2000}
    for bad in (
        {"formats": []},
        {"formats": "Vinyl"},
        {"formats": ["  "]},
        {"formats": [""]},
        {"formats": ["x" * 65]},
        {"formats": [f"f{i}" for i in range(21)]},
        {"formats": [3]},
        {"year_from": "1990"},
        {"year_from": 1990.5},
        {"year_from": 999},
        {"year_to": 10_000},
        {"year_from": 2000, "year_to": 1990},
        {"threshold": 5},
        {"format": "Vinyl"},
    ):
        with pytest.raises(ApiError) as err:
            release_filter_options(bad)
        assert err.value.status == 422, bad
        assert err.value.details and err.value.details[0].field.startswith("options"), bad
