"""notifier.percolate: the search index finds exactly what checking every pair finds."""

from __future__ import annotations

import random

import pytest

from notifier.diff import SEARCH_MATCH_CAP, SearchQuery, parse_search
from notifier.percolate import CycleRelease, Percolator, matches


def release(rid: int, title: str = "", **fields: object) -> CycleRelease:
    """A cycle_releases row; `search_text` made as releases.release_row makes it."""
    base: dict[str, object] = dict(
        version="v2", release_id=rid, title=title, year=None, formats=[], artist_ids=[],
        artist_names=[], label_ids=[], label_names=[], genres=[], styles=[], rank=0,
    )  # fmt: skip
    base.update(fields)
    names = [title, *base["artist_names"], *base["label_names"]]  # type: ignore[misc]
    base["search_text"] = " ".join(names).lower()
    return CycleRelease(**base)  # type: ignore[arg-type]


def test_matches_follows_the_documented_rule() -> None:
    r = release(
        7, "A Love Supreme", year=1965, formats=["LP", "Vinyl"], artist_ids=["1"],
        artist_names=["John Coltrane"], label_ids=["10"], label_names=["Impulse!"],
        genres=["Jazz"], styles=["Modal"],
    )  # fmt: skip
    yes = [
        {"q": "love SUPREME"}, {"q": "coltrane impulse"}, {"q": "ove"}, {"genre": "JAZZ"},
        {"style": "modal", "format": "vinyl"}, {"artist": "1"}, {"artist": "john coltrane"},
        {"label": "impulse!"}, {"label": "10"}, {"year_from": 1965, "year_to": 1965},
    ]  # fmt: skip
    no = [
        {"q": "love hate"}, {"q": "supremeimpulse"}, {"genre": "rock"}, {"format": "cd"},
        {"artist": "2"}, {"label": "impulse"}, {"year_from": 1966}, {"year_to": 1964},
    ]  # fmt: skip
    for options in yes:
        query = parse_search(options)
        assert query is not None and matches(query, r), options
    for options in no:
        query = parse_search(options)
        assert query is not None and not matches(query, r), options
    assert not matches(SearchQuery(year_from=1900), release(8))  # no year: outside any bound


WORDS = ["love", "lo", "a", "supreme", "jazz", "blue", "note", "x", "ab", "bab", "ünï", "b"]
TAGS = ["Jazz", "Rock", "Electronic", "Modal", "Techno"]


def random_release(rng: random.Random, rid: int) -> CycleRelease:
    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    return release(
        rid,
        words(rng.randint(0, 4)),
        year=rng.choice([None, 1965, 1999, 2024]),
        formats=rng.sample(["LP", "CD", "Vinyl", "File"], rng.randint(0, 2)),
        artist_ids=[str(rng.randint(1, 5))],
        artist_names=[words(2).title()],
        label_ids=[str(rng.randint(10, 12))],
        label_names=[words(1)],
        genres=rng.sample(TAGS[:3], rng.randint(0, 2)),
        styles=rng.sample(TAGS[3:], rng.randint(0, 1)),
    )


def random_search(rng: random.Random) -> SearchQuery | None:
    options: dict[str, object] = {}
    if rng.random() < 0.6:
        options["q"] = " ".join(rng.choice([*WORDS, "ove", "ab", "zz"]) for _ in range(2))
    for key, values in (
        ("genre", ["jazz", "rock"]), ("style", ["modal"]), ("format", ["lp", "cd"]),
        ("artist", ["1", "2", "love lo"]), ("label", ["10", "blue"]),
    ):  # fmt: skip
        if rng.random() < 0.2:
            options[key] = rng.choice(values)
    if rng.random() < 0.2:
        options["year_from"] = rng.choice([1960, 1990])
    return parse_search(options)


@pytest.mark.parametrize("seed", range(5))
def test_the_index_finds_what_every_pair_finds(seed: int) -> None:
    rng = random.Random(seed)
    queries = {f"s{i}": q for i in range(300) if (q := random_search(rng)) is not None}
    releases = [random_release(rng, rid) for rid in range(1, 400)]
    percolator = Percolator(queries)
    for start in range(0, len(releases), 50):  # in batches, ascending ids
        percolator.add(releases[start : start + 50])
    expected = {
        sid: [r.release_id for r in releases if matches(q, r)] for sid, q in queries.items()
    }
    results = percolator.results()
    got = {sid: [m.release_id for m in f.matches] for sid, f in results.items()}
    assert got == {sid: ids[:SEARCH_MATCH_CAP] for sid, ids in expected.items() if ids}
    assert {sid: f.count for sid, f in results.items()} == {
        sid: len(ids) for sid, ids in expected.items() if ids
    }
    assert sum(1 for ids in expected.values() if ids) > 50  # the data does match things


def test_matches_are_capped_but_counted() -> None:
    percolator = Percolator({"s": SearchQuery(genre="jazz")})
    percolator.add([release(i, genres=["Jazz"]) for i in range(1, SEARCH_MATCH_CAP + 51)])
    found = percolator.results()["s"]
    assert found.count == SEARCH_MATCH_CAP + 50
    assert [m.release_id for m in found.matches] == list(range(1, SEARCH_MATCH_CAP + 1))
