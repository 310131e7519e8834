"""Saved searches against a cycle's new releases, all at once (pure logic).

Checking every search against every new release costs searches x releases.
Here each release is read once: the search terms occurring in its text and
the facet values searches ask for (genre, style, format, artist, label) that
it carries are noted in posting lists of release positions. A search is then
the intersection of its terms' and facets' lists, filtered by its years;
identical searches are evaluated once. `matches` is the rule itself (the
matching documented on `diff.SearchQuery`), which the lists reproduce.

A term contains no whitespace, so where it occurs in a release's text it lies
inside one whitespace-free run: terms are looked up by the text at each
position (their first `PREFIX` characters, shorter terms whole).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from notifier.diff import SEARCH_MATCH_CAP, SearchMatch, SearchQuery

PREFIX = 6  # longer keys, fewer terms to check at each position


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


FACETS = ("genre", "style", "format", "artist", "label")


def facet_values(release: CycleRelease) -> dict[str, set[str]]:
    """The values of `release` a search's facets are compared with (lowercased names)."""
    return {
        "genre": _lowered(release.genres),
        "style": _lowered(release.styles),
        "format": _lowered(release.formats),
        "artist": {*release.artist_ids, *_lowered(release.artist_names)},
        "label": {*release.label_ids, *_lowered(release.label_names)},
    }


@dataclass
class Found:
    """A search's matches: the count, and the first SEARCH_MATCH_CAP by release id."""

    count: int = 0
    matches: list[SearchMatch] = field(default_factory=list)


class Percolator:
    """`add` the new releases (ascending ids), then `results` per search."""

    def __init__(self, searches: Mapping[str, SearchQuery]) -> None:
        self.queries = dict(searches)
        terms = {t for q in self.queries.values() for t in q.terms}
        self.by_prefix: dict[str, list[str]] = defaultdict(list)
        for term in terms:
            self.by_prefix[term[:PREFIX]].append(term)
        self.sizes = sorted({min(len(t), PREFIX) for t in terms})
        self.wanted = {
            kind: {v for q in self.queries.values() if (v := getattr(q, kind)) is not None}
            for kind in FACETS
        }
        # Posting lists by (kind, value), kind "term" or a facet: positions in `added`.
        self.postings: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.added: list[tuple[int, str | None, int | None]] = []  # id, title, year
        # Posting lists as sets, and the positions within a year range, built when needed.
        self.sets: dict[tuple[Any, Any], set[int]] = {}

    def add(self, releases: Iterable[CycleRelease]) -> None:
        """Note what each of `releases` carries; ids must ascend over all calls."""
        by_prefix, sizes, wanted, postings = self.by_prefix, self.sizes, self.wanted, self.postings
        for release in releases:
            position = len(self.added)
            self.added.append((release.release_id, release.title, release.year))
            keys: set[tuple[str, str]] = set()
            text = release.search_text
            if by_prefix:
                for start in range(len(text)):
                    for size in sizes:
                        for term in by_prefix.get(text[start : start + size], ()):
                            if text.startswith(term, start):
                                keys.add(("term", term))
            for kind, values in facet_values(release).items():
                keys.update((kind, v) for v in values & wanted[kind])
            for key in keys:
                postings[key].append(position)

    def _set(self, key: tuple[str, str]) -> set[int]:
        """The posting list of `key` as a set, built once."""
        if (found := self.sets.get(key)) is None:
            found = self.sets[key] = set(self.postings.get(key, ()))
        return found

    def _evaluate(self, query: SearchQuery) -> Found | None:
        keys = [("term", t) for t in set(query.terms)]
        keys += [(kind, v) for kind in FACETS if (v := getattr(query, kind)) is not None]
        years = (query.year_from, query.year_to)
        if years != (None, None) and years not in self.sets:
            low, high = years
            self.sets[years] = {
                i for i, (_, _, y) in enumerate(self.added)
                if y is not None and (low is None or y >= low) and (high is None or y <= high)
            }  # fmt: skip
        if len(keys) == 1 and years == (None, None):
            hits = self.postings.get(keys[0], [])  # in position order already
        else:
            sets = [self._set(k) for k in keys]
            if years != (None, None):
                sets.append(self.sets[years])
            sets.sort(key=len)
            hits = sorted(sets[0].intersection(*sets[1:]))
        if not hits:
            return None
        return Found(len(hits), [SearchMatch(*self.added[i][:2]) for i in hits[:SEARCH_MATCH_CAP]])

    def results(self) -> dict[str, Found]:
        """Each matching search's count and first matches (searches without a match left out)."""
        by_query: dict[SearchQuery, Found | None] = {}
        out: dict[str, Found] = {}
        for search_id, query in self.queries.items():
            if query not in by_query:
                by_query[query] = self._evaluate(query)
            if (found := by_query[query]) is not None:
                out[search_id] = found
        return out
