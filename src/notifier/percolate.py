"""Saved searches against a cycle's new releases, indexed by search (pure logic).

Checking every search against every new release costs searches x releases;
here each search is filed under one anchor (an artist, a label, its longest
term, a style, a format or a genre, in that order of selectivity) and each
release looks up only the anchors it carries, so a release costs the searches
it could match. Every candidate is then checked in full by `matches`, which
is the matching rule of `diff.SearchQuery`.

A term contains no whitespace, so where it occurs in a release's text it lies
inside one whitespace-free run: terms are looked up by the text at each
position (their first `PREFIX` characters, shorter terms whole).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from notifier.diff import SEARCH_MATCH_CAP, SearchMatch, SearchQuery

PREFIX = 3


class CycleRelease(NamedTuple):
    """A row of notifier.cycle_releases: a new release as percolation and ranking see it."""

    version: str
    release_id: int
    title: str | None
    year: int | None
    formats: list[str]
    artist_ids: list[str]
    artist_names: list[str]
    label_ids: list[str]
    label_names: list[str]
    genres: list[str]
    styles: list[str]
    search_text: str  # lower(title, artist names, label names)
    rank: int


def _lowered(values: Iterable[str]) -> set[str]:
    return {v.lower() for v in values}


def matches(query: SearchQuery, release: CycleRelease) -> bool:
    """Whether `release` matches `query` (the rule documented on `diff.SearchQuery`)."""
    text = release.search_text
    if any(term not in text for term in query.terms):
        return False
    for wanted, values in (
        (query.genre, release.genres),
        (query.style, release.styles),
        (query.format, release.formats),
    ):
        if wanted is not None and wanted not in _lowered(values):
            return False
    for wanted, ids, names in (
        (query.label, release.label_ids, release.label_names),
        (query.artist, release.artist_ids, release.artist_names),
    ):
        if wanted is not None and wanted not in ids and wanted not in _lowered(names):
            return False
    year = release.year
    if query.year_from is not None and (year is None or year < query.year_from):
        return False
    return query.year_to is None or (year is not None and year <= query.year_to)


def anchor(query: SearchQuery) -> tuple[str, str] | None:
    """The most selective value a matching release must carry (None: years only)."""
    if query.artist is not None:
        return ("artist", query.artist)
    if query.label is not None:
        return ("label", query.label)
    if query.terms:
        return ("term", max(query.terms, key=len))
    for kind, value in (("style", query.style), ("format", query.format), ("genre", query.genre)):
        if value is not None:
            return (kind, value)
    return None


@dataclass
class Found:
    """A search's matches so far: the first SEARCH_MATCH_CAP by release id, and the count."""

    count: int = 0
    matches: list[SearchMatch] = field(default_factory=list)


class Percolator:
    """Saved searches indexed by anchor; `add` the new releases, then read `found`."""

    def __init__(self, searches: Mapping[str, SearchQuery]) -> None:
        self.queries = dict(searches)
        self.by_value: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.terms: dict[str, list[tuple[str, str]]] = defaultdict(list)  # key -> (term, search)
        self.everywhere: list[str] = []
        self.found: dict[str, Found] = {}
        for search_id, query in self.queries.items():
            where = anchor(query)
            if where is None:
                self.everywhere.append(search_id)
            elif where[0] == "term":
                term = where[1]
                self.terms[term[:PREFIX]].append((term, search_id))
            else:
                self.by_value[where].append(search_id)
        self.short = sorted({len(k) for k in self.terms if len(k) < PREFIX})

    def _candidates(self, release: CycleRelease) -> set[str]:
        out = set(self.everywhere)
        by_value = self.by_value
        for kind, values in (
            ("artist", (*release.artist_ids, *_lowered(release.artist_names))),
            ("label", (*release.label_ids, *_lowered(release.label_names))),
            ("style", _lowered(release.styles)),
            ("format", _lowered(release.formats)),
            ("genre", _lowered(release.genres)),
        ):
            for value in values:
                out.update(by_value.get((kind, value), ()))
        if self.terms:
            text, terms = release.search_text, self.terms
            for start in range(len(text)):
                for size in (PREFIX, *self.short):
                    for term, search_id in terms.get(text[start : start + size], ()):
                        if text.startswith(term, start):
                            out.add(search_id)
        return out

    def add(self, releases: Sequence[CycleRelease]) -> None:
        """Record which searches each of `releases` matches.

        Releases must come in ascending id order (over all calls): a search
        keeps its first SEARCH_MATCH_CAP matches and counts the rest.
        """
        for release in releases:
            for search_id in self._candidates(release):
                if matches(self.queries[search_id], release):
                    found = self.found.setdefault(search_id, Found())
                    found.count += 1
                    if len(found.matches) < SEARCH_MATCH_CAP:
                        found.matches.append(SearchMatch(release.release_id, release.title))
