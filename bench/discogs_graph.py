"""A Discogs-shaped graph at a fraction of the real catalogue, and one month on it.

The real catalogue (2026): 19M releases, 10M artists, 2.3M labels, 2.5M
masters, 16 genres, 757 styles. `Shape.at(f)` scales the four big counts by
`f`; genres and styles stay as they are. Per release about 3.2 IS (1.33
genres, 1.9 styles), 1.4 BY, 1.1 ON and 0.97 DERIVED_FROM; per artist 0.5
ALIAS_OF and 0.23 MEMBER_OF; per label 0.12 SUBLABEL_OF; per master one BY
and one or two IS (a master's edges are not a release's).

Degrees follow a power law in popularity rank (Zipf-like, p(rank k) ∝
k^-(1 - 1/p) for the artists and labels a release is by or on, drawn as
`rank = N * u**p`, p = 2.6 for 1M artists and 2.3 for 230k labels): the
power is chosen per N so that the most popular ordinary artist or label
holds 0.5 % of the draws at every scale; most artists hold a handful of
releases, many none. Two hubs are drawn apart:
artist rank 0, "Various", is the only artist of 5.5 % of releases, and label
rank 0, "Not On Label", the only label of 6 %; the biggest genre
("Electronic") is on about 35 % of releases. A rank maps to an id through a
fixed permutation (`Ids`), so popular ids are spread over the id range; both
hubs have id "1".

Written as graphinator writes it (see notifier.devkit.graphbuilder's platform
mode): 3 % of artists, 2 % of labels and masters are bare {id} stubs;
titles (1.5 %) and years (12 %) are absent properties; `formats` is a list
of format names with repeats (a double album is ["Vinyl", "Vinyl"]) or
`[]`; every node written fully has a `sha256`. The platform's constraints
are created before the load (the loader's MATCHes use them), its other
indexes (sha256, names, years, full text) after it.

Everything is drawn from `random.Random` seeded per part, so the same shape
and seed give the same graph whatever the batch size.
"""

from __future__ import annotations

import bisect
import csv
import functools
import itertools
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neo4j import Driver

from notifier.devkit.graphbuilder import LATCH, PLATFORM_SCHEMA, GraphBuilder

REAL = {"releases": 19_000_000, "artists": 10_000_000, "labels": 2_300_000, "masters": 2_500_000}
SIGNALS = ("artists", "labels", "masters", "releases")  # graphinator's data types, in order

HUB_ARTIST_SHARE = 0.055  # releases by "Various" alone
HUB_LABEL_SHARE = 0.06  # releases on "Not On Label" alone
# rank = N * u**power: p(rank k) ∝ k^-(1 - 1/power), the power chosen per N so
# that rank 1 (after the hub) holds TOP_SHARE of the draws at every scale.
TOP_SHARE = 0.005
BY_COUNTS = ((1, 0.72), (2, 0.18), (3, 0.07), (4, 0.03))  # ordinary releases: mean 1.41
ON_COUNTS = ((1, 0.88), (2, 0.10), (3, 0.02))  # mean 1.14
GENRE_COUNTS = ((1, 0.72), (2, 0.23), (3, 0.05))  # mean 1.33
STYLE_COUNTS = ((0, 0.10), (1, 0.30), (2, 0.30), (3, 0.20), (4, 0.10))  # mean 1.9
MASTER_SHARE = 0.97
ALIAS_PER_ARTIST, MEMBER_PER_ARTIST, SUBLABEL_PER_LABEL = 0.5, 0.23, 0.12
STUB_ARTIST, STUB_LABEL, STUB_MASTER = 0.03, 0.02, 0.02
NO_TITLE, NO_YEAR, NO_FORMATS = 0.015, 0.12, 0.03
MONTH_GROWTH = 0.02  # a monthly dump adds 2 % of every record type
MONTH_NEW_ARTIST = 0.2  # share of the month's releases by one of the month's new artists

# Discogs' genres; the first is the biggest (its weight gives it ~35 % of releases).
GENRES = ("Electronic", "Rock", "Pop", "Funk / Soul", "Jazz", "Hip Hop", "Folk, World, & Country",
          "Classical", "Latin", "Reggae", "Stage & Screen", "Blues", "Non-Music", "Children's",
          "Brass & Military", "Spoken Word")  # fmt: skip
GENRE_WEIGHTS = (27.0, 20.0, 12.0, 8.0, 6.0, 5.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.5, 1.0, 0.8, 0.7)
STYLE_COUNT = 757
_STYLE_HEADS = ("House", "Techno", "Pop Rock", "Experimental", "Synth-pop", "Punk", "Ambient",
                "Disco", "Soul", "Indie Rock", "Hard Rock", "Downtempo", "Alternative Rock",
                "Folk", "Ballad", "Trance", "Electro", "Deep House", "Tech House",
                "Soundtrack")  # fmt: skip
FORMATS = (("Vinyl", 0.42), ("CD", 0.30), ("File", 0.15), ("Cassette", 0.08), ("CDr", 0.05))
_GENRE_CUM = list(itertools.accumulate(GENRE_WEIGHTS))
_FORMAT_CUM = list(itertools.accumulate(w for _, w in FORMATS))
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "da", "fu", "gi", "ho", "ja")


def style_names() -> list[str]:
    """The 757 style names: some of Discogs' biggest, then numbered ones."""
    return [*_STYLE_HEADS, *(f"Style {n}" for n in range(len(_STYLE_HEADS), STYLE_COUNT))]


def vocabulary(size: int = 3000) -> list[str]:
    """Title words (and saved searches' terms), most common first: "kalo", "kami", ..."""
    words: list[str] = []
    n = 0
    while len(words) < size:
        a, b, c = n % 14, n // 14 % 14, n // 196 % 14
        words.append(_SYLLABLES[a] + _SYLLABLES[b] + (_SYLLABLES[c] if n >= 196 else ""))
        n += 1
    return words


def home_genre(style: int) -> int:
    """The genre a style is PART_OF (styles spread over genres by weight)."""
    return min(style * 7 % 23, len(GENRES) - 1) if style % 3 else 0


class Ids:
    """Popularity rank <-> id for one label: id = (rank * step) % n + 1, a bijection."""

    def __init__(self, n: int) -> None:
        self.n = max(1, n)
        step = 1_000_003
        while math.gcd(step, self.n) != 1:
            step += 2
        self.step = step

    def id(self, rank: int) -> str:
        """The id of popularity rank `rank` (0: the most popular; id "1")."""
        return str(rank * self.step % self.n + 1)


@dataclass(frozen=True)
class Shape:
    """How many of each node; the rest follows from the module's constants."""

    releases: int
    artists: int
    labels: int
    masters: int
    genres: int = len(GENRES)
    styles: int = STYLE_COUNT
    seed: int = 17

    @classmethod
    def at(cls, fraction: float, seed: int = 17) -> Shape:
        """The real catalogue scaled by `fraction` (at least a few of each)."""
        n = {k: max(20, round(v * fraction)) for k, v in REAL.items()}
        return cls(n["releases"], n["artists"], n["labels"], n["masters"], seed=seed)

    @functools.cached_property
    def artist_ids(self) -> Ids:
        """Artist rank <-> id."""
        return Ids(self.artists)

    @functools.cached_property
    def label_ids(self) -> Ids:
        """Label rank <-> id."""
        return Ids(self.labels)

    @functools.cached_property
    def master_ids(self) -> Ids:
        """Master rank <-> id."""
        return Ids(self.masters)


def _rng(shape: Shape, part: str) -> random.Random:
    return random.Random(f"{shape.seed}:{part}")


def _count(rng: random.Random, table: Sequence[tuple[int, float]]) -> int:
    u = rng.random()
    for n, p in table:
        u -= p
        if u < 0:
            return n
    return table[-1][0]


def rank_power(n: int) -> float:
    """The power that gives the most popular of n ranks TOP_SHARE of the draws (at least 1)."""
    return max(1.0, math.log(max(n, 2)) / math.log(1 / TOP_SHARE))


def _rank(rng: random.Random, n: int, power: float | None = None, lo: int = 0) -> int:
    """A popularity rank in [lo, n): a power law favouring lo."""
    if power is None:
        power = rank_power(n - lo)
    return lo + int((n - lo) * rng.random() ** power)


def _distinct(draw: Any, k: int) -> list[Any]:
    out: list[Any] = []
    for _ in range(k * 4):
        if len(out) == k:
            break
        x = draw()
        if x not in out:
            out.append(x)
    return out


def _sha(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


@dataclass
class Release:
    """One release as drawn: its properties and the ids it points at."""

    props: dict[str, Any]
    artists: list[str]
    labels: list[str]
    genres: list[str]
    styles: list[str]
    master: str | None


@dataclass
class Generator:
    """Draws the graph's records (deterministic for a shape and seed)."""

    shape: Shape
    words: list[str] = field(default_factory=vocabulary)
    style_list: list[str] = field(default_factory=style_names)

    def artist_name(self, rank: int) -> str:
        """Artist names: "Various" for the hub."""
        return "Various" if rank == 0 else f"{self.words[rank % 500].title()} Artist {rank}"

    def label_name(self, rank: int) -> str:
        """Label names: "Not On Label" for the hub."""
        return "Not On Label" if rank == 0 else f"{self.words[rank % 400].title()} Records {rank}"

    def artists(self) -> Iterator[dict[str, Any]]:
        """Artist nodes (a stub carries only its id)."""
        rng, ids = _rng(self.shape, "artists"), self.shape.artist_ids
        for rank in range(self.shape.artists):
            aid = ids.id(rank)
            if rank and rng.random() < STUB_ARTIST:
                yield {"id": aid}
                continue
            yield {"id": aid, "name": self.artist_name(rank),
                   "resource_url": f"https://api.discogs.com/artists/{aid}",
                   "releases_url": f"https://api.discogs.com/artists/{aid}/releases",
                   "sha256": _sha(rng)}  # fmt: skip

    def labels(self) -> Iterator[dict[str, Any]]:
        """Label nodes."""
        rng, ids = _rng(self.shape, "labels"), self.shape.label_ids
        for rank in range(self.shape.labels):
            lid = ids.id(rank)
            if rank and rng.random() < STUB_LABEL:
                yield {"id": lid}
            else:
                yield {"id": lid, "name": self.label_name(rank), "sha256": _sha(rng)}

    def masters(self) -> Iterator[tuple[dict[str, Any], list[str], list[str]]]:
        """Master nodes with their own BY artist and IS genres."""
        rng, ids = _rng(self.shape, "masters"), self.shape.master_ids
        arts = self.shape.artist_ids
        for rank in range(self.shape.masters):
            mid = ids.id(rank)
            if rng.random() < STUB_MASTER:
                yield {"id": mid}, [], []
                continue
            props = {"id": mid, "title": self._title(rng), "year": 1950 + int(75 * rng.random()),
                     "sha256": _sha(rng)}  # fmt: skip
            by = [arts.id(_rank(rng, self.shape.artists, lo=1))]
            yield props, by, [GENRES[self._genre(rng)]]

    def _title(self, rng: random.Random) -> str:
        n = 1 + int(rng.random() * 3)
        return " ".join(self.words[_rank(rng, len(self.words), 2.0)] for _ in range(n)).title()

    def _genre(self, rng: random.Random) -> int:
        return bisect.bisect(_GENRE_CUM, rng.random() * _GENRE_CUM[-1])

    def release(self, rng: random.Random, rid: str, new_artists: Sequence[str] = ()) -> Release:
        """One release drawn with `rng` (the month's may be by one of `new_artists`)."""
        s = self.shape
        arts, labs, mids = s.artist_ids, s.label_ids, s.master_ids
        props: dict[str, Any] = {"id": rid}
        if rng.random() >= NO_TITLE:
            props["title"] = self._title(rng)
        if rng.random() >= NO_YEAR:
            props["year"] = 2025 - int(75 * rng.random() ** 1.5)
        if rng.random() < NO_FORMATS:
            props["formats"] = []
        else:
            fmt = FORMATS[bisect.bisect(_FORMAT_CUM, rng.random() * _FORMAT_CUM[-1])][0]
            props["formats"] = [fmt] * (2 if rng.random() < 0.12 else 1)
        props["sha256"] = _sha(rng)
        if rng.random() < HUB_ARTIST_SHARE:
            artists = [arts.id(0)]
        elif new_artists and rng.random() < MONTH_NEW_ARTIST:
            artists = [new_artists[int(rng.random() * len(new_artists))]]
        else:
            k = _count(rng, BY_COUNTS)
            artists = _distinct(lambda: arts.id(_rank(rng, s.artists, lo=1)), k)
        if rng.random() < HUB_LABEL_SHARE:
            labels = [labs.id(0)]
        else:
            k = _count(rng, ON_COUNTS)
            labels = _distinct(lambda: labs.id(_rank(rng, s.labels, lo=1)), k)
        genres = [GENRES[g] for g in _distinct(lambda: self._genre(rng), _count(rng, GENRE_COUNTS))]
        styles = _distinct(
            lambda: self.style_list[_rank(rng, s.styles, 2.0)], _count(rng, STYLE_COUNTS)
        )
        master = mids.id(_rank(rng, s.masters, 1.5)) if rng.random() < MASTER_SHARE else None
        return Release(props, artists, labels, genres, styles, master)

    def releases(self) -> Iterator[Release]:
        """The catalogue's releases, ids 1..releases."""
        rng = _rng(self.shape, "releases")
        for n in range(1, self.shape.releases + 1):
            yield self.release(rng, str(n))

    def aliases(self) -> Iterator[tuple[str, str]]:
        """(alias, artist) pairs: ALIAS_OF; the hub has none."""
        rng, s = _rng(self.shape, "aliases"), self.shape
        ids = s.artist_ids
        for _ in range(round(s.artists * ALIAS_PER_ARTIST)):
            a = 1 + int(rng.random() * (s.artists - 1))
            b = _rank(rng, s.artists, 2.0, lo=1)
            if a != b:
                yield ids.id(a), ids.id(b)

    def members(self) -> Iterator[tuple[str, str]]:
        """(member, group) pairs: MEMBER_OF; the hub has none."""
        rng, s = _rng(self.shape, "members"), self.shape
        ids = s.artist_ids
        for _ in range(round(s.artists * MEMBER_PER_ARTIST)):
            m = 1 + int(rng.random() * (s.artists - 1))
            g = _rank(rng, s.artists, 2.0, lo=1)
            if m != g:
                yield ids.id(m), ids.id(g)

    def sublabels(self) -> Iterator[tuple[str, str]]:
        """(child, parent) pairs: a forest (a parent is always more popular), deep in places."""
        rng, s = _rng(self.shape, "sublabels"), self.shape
        ids = s.label_ids
        k = min(s.labels - 1, round(s.labels * SUBLABEL_PER_LABEL))
        for child in sorted(rng.sample(range(1, s.labels), k)):
            yield ids.id(child), ids.id(int(child * rng.random() ** 2))


# ----------------------------------------------------------------------------- loading

CONSTRAINTS = [c for _, c in PLATFORM_SCHEMA if c.startswith("CREATE CONSTRAINT")]
INDEXES = [c for _, c in PLATFORM_SCHEMA if not c.startswith("CREATE CONSTRAINT")]
# An empty graph: CREATE, never MERGE (every id is drawn once); rows are maps.
CREATE_NODES = {
    label: f"UNWIND $rows AS row CREATE (n:{label}) SET n = row"
    for label in ("Artist", "Label", "Master", "Release", "Genre", "Style")
}
# Pairs [from id, to id|name], both ends found by their unique constraint.
_PAIR = (
    "UNWIND $rows AS p MATCH (a:{a} {{{ak}: p[0]}}) MATCH (b:{b} {{{bk}: p[1]}}) "
    "CREATE (a)-[:{t}]->(b)"
)
CREATE_RELS = {
    (a, t, b): _PAIR.format(a=a, b=b, t=t, ak="id", bk="name" if b in ("Genre", "Style") else "id")
    for a, t, b in (
        ("Release", "BY", "Artist"), ("Release", "ON", "Label"), ("Release", "IS", "Genre"),
        ("Release", "IS", "Style"), ("Release", "DERIVED_FROM", "Master"),
        ("Master", "BY", "Artist"), ("Master", "IS", "Genre"), ("Artist", "ALIAS_OF", "Artist"),
        ("Artist", "MEMBER_OF", "Artist"), ("Label", "SUBLABEL_OF", "Label"),
    )
}  # fmt: skip
CREATE_RELS[("Style", "PART_OF", "Genre")] = (
    "UNWIND $rows AS p MATCH (a:Style {name: p[0]}) MATCH (b:Genre {name: p[1]}) "
    "CREATE (a)-[:PART_OF]->(b)"
)
# A batch of releases with all their relationships, one statement: each
# release is created once and its edges hang off it, so only the far end of
# an edge is looked up (by its unique constraint).
CREATE_RELEASES = """
UNWIND $rows AS row
CREATE (r:Release) SET r = row.p
WITH r, row
CALL (r, row) { UNWIND row.a AS x MATCH (a:Artist {id: x}) CREATE (r)-[:BY]->(a) }
CALL (r, row) { UNWIND row.l AS x MATCH (l:Label {id: x}) CREATE (r)-[:ON]->(l) }
CALL (r, row) { UNWIND row.g AS x MATCH (g:Genre {name: x}) CREATE (r)-[:IS]->(g) }
CALL (r, row) { UNWIND row.s AS x MATCH (s:Style {name: x}) CREATE (r)-[:IS]->(s) }
CALL (r, row) { UNWIND row.m AS x MATCH (m:Master {id: x}) CREATE (r)-[:DERIVED_FROM]->(m) }
"""
NODE_BATCH = 20_000
RELEASE_BATCH = 5_000


@dataclass
class LoadStats:
    """What the load wrote and how long each part took."""

    nodes: int = 0
    rels: int = 0
    node_s: float = 0.0
    rel_s: float = 0.0
    index_s: float = 0.0
    # Releases are written with their edges in one statement (CREATE_RELEASES).
    release_s: float = 0.0
    release_rels: int = 0
    # The import tool's run (`write_csv`, then neo4j-admin): CSV writing, import.
    csv_s: float = 0.0
    import_s: float = 0.0
    by_type: dict[str, int] = field(default_factory=dict)

    def add_rels(self, key: str, n: int) -> None:
        """Count `n` relationships of `key`."""
        self.by_type[key] = self.by_type.get(key, 0) + n
        self.rels += n


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Loader:
    """Writes a Generator's graph into an empty Neo4j database over Bolt, in big batches."""

    def __init__(self, driver: Driver, database: str, progress: Any = None) -> None:
        self.driver, self.database = driver, database
        self.stats = LoadStats()
        self.progress = progress or (lambda _msg: None)

    def _run(self, cypher: str, rows: list[Any]) -> None:
        with self.driver.session(database=self.database) as session:
            session.run(cypher, rows=rows).consume()

    def _nodes(self, label: str, rows: list[dict[str, Any]]) -> None:
        start = time.perf_counter()
        self._run(CREATE_NODES[label], rows)
        self.stats.node_s += time.perf_counter() - start
        self.stats.nodes += len(rows)

    def _rels(self, key: tuple[str, str, str], pairs: list[list[str]]) -> None:
        if not pairs:
            return
        start = time.perf_counter()
        for i in range(0, len(pairs), NODE_BATCH):
            self._run(CREATE_RELS[key], pairs[i : i + NODE_BATCH])
        self.stats.rel_s += time.perf_counter() - start
        self.stats.add_rels("-".join(key), len(pairs))

    def schema(self) -> None:
        """The platform's uniqueness constraints (each backs the loader's MATCHes)."""
        with self.driver.session(database=self.database) as session:
            for cypher in CONSTRAINTS:
                session.run(cypher).consume()

    def indexes(self) -> None:
        """The platform's other indexes, built once over the loaded graph."""
        start = time.perf_counter()
        with self.driver.session(database=self.database) as session:
            for cypher in INDEXES:
                session.run(cypher).consume()
            session.run("CALL db.awaitIndexes(3600)").consume()
        self.stats.index_s = time.perf_counter() - start

    def load(self, gen: Generator) -> LoadStats:
        """Constraints, every node and relationship, then the other indexes."""
        self.schema()
        self._nodes("Genre", [{"name": g} for g in GENRES])
        self._nodes("Style", [{"name": s} for s in gen.style_list])
        parts = [[s, GENRES[home_genre(i)]] for i, s in enumerate(gen.style_list)]
        self._rels(("Style", "PART_OF", "Genre"), parts)
        for chunk in _chunks(gen.artists(), NODE_BATCH):
            self._nodes("Artist", chunk)
        self.progress(f"artists: {self.stats.nodes:,} nodes")
        for chunk in _chunks(gen.labels(), NODE_BATCH):
            self._nodes("Label", chunk)
        by: list[list[str]] = []
        tags: list[list[str]] = []
        for chunk in _chunks(gen.masters(), NODE_BATCH):
            self._nodes("Master", [props for props, _, _ in chunk])
            by = [[p["id"], a] for p, artists, _ in chunk for a in artists]
            tags = [[p["id"], g] for p, _, genres in chunk for g in genres]
            self._rels(("Master", "BY", "Artist"), by)
            self._rels(("Master", "IS", "Genre"), tags)
        self.progress(f"labels, masters: {self.stats.nodes:,} nodes")
        for key, pairs in ((("Artist", "ALIAS_OF", "Artist"), gen.aliases()),
                           (("Artist", "MEMBER_OF", "Artist"), gen.members()),
                           (("Label", "SUBLABEL_OF", "Label"), gen.sublabels())):  # fmt: skip
            for chunk in _chunks((list(p) for p in pairs), NODE_BATCH):
                self._rels(key, chunk)
        done = 0
        for chunk in _chunks(gen.releases(), RELEASE_BATCH):
            self._releases(chunk)
            done += len(chunk)
            if done % (RELEASE_BATCH * 20) == 0:
                self.progress(f"releases: {done:,}, {self.stats.rels:,} relationships")
        self.progress(f"{self.stats.nodes:,} nodes, {self.stats.rels:,} relationships; indexes…")
        self.indexes()
        return self.stats

    def _releases(self, chunk: list[Release]) -> None:
        """A batch of releases and their BY, ON, IS and DERIVED_FROM edges (CREATE_RELEASES)."""
        rows = [{"p": r.props, "a": r.artists, "l": r.labels, "g": r.genres, "s": r.styles,
                 "m": [] if r.master is None else [r.master]} for r in chunk]  # fmt: skip
        start = time.perf_counter()
        self._run(CREATE_RELEASES, rows)
        self.stats.release_s += time.perf_counter() - start
        self.stats.nodes += len(chunk)
        for key, n in (("Release-BY-Artist", sum(len(r.artists) for r in chunk)),
                       ("Release-ON-Label", sum(len(r.labels) for r in chunk)),
                       ("Release-IS-Genre", sum(len(r.genres) for r in chunk)),
                       ("Release-IS-Style", sum(len(r.styles) for r in chunk)),
                       ("Release-DERIVED_FROM-Master",
                        sum(r.master is not None for r in chunk))):  # fmt: skip
            self.stats.add_rels(key, n)
            self.stats.release_rels += n


# ----------------------------------------------------------------------------- the month


@dataclass(frozen=True)
class Month:
    """What one monthly dump adds: new ids of each type (after the catalogue's)."""

    releases: range
    artists: range
    labels: range
    masters: range

    @classmethod
    def after(cls, shape: Shape) -> Month:
        """+2 % of every type, ids continuing the catalogue's."""

        def grow(n: int) -> range:
            return range(n + 1, n + 1 + max(1, round(n * MONTH_GROWTH)))

        return cls(grow(shape.releases), grow(shape.artists), grow(shape.labels),
                   grow(shape.masters))  # fmt: skip


def month_builders(
    gen: Generator, month: Month, chunk: int = 5_000
) -> Iterator[tuple[str, GraphBuilder]]:
    """The month as graphinator writes it, per data type in its order, in chunks.

    Yields (data type, builder); every builder is `GraphBuilder(platform=True)`
    (MERGE by id, stubs for references, sha256 on what is written fully). New
    artists bring aliases and memberships, new labels sublabels, at the
    catalogue's rates; new releases point at old and new artists and labels.
    """
    s = gen.shape
    rng = _rng(s, "month")
    arts, labs = s.artist_ids, s.label_ids
    new_artists = [str(i) for i in month.artists]
    g = GraphBuilder(platform=True)
    for n, aid in enumerate(new_artists):
        g.artist(aid, f"New Artist {aid}")
        if rng.random() < ALIAS_PER_ARTIST:
            g.alias(aid, arts.id(_rank(rng, s.artists, 2.0, lo=1)))
        if rng.random() < MEMBER_PER_ARTIST:
            g.member(aid, arts.id(_rank(rng, s.artists, 2.0, lo=1)))
        if (n + 1) % chunk == 0:
            yield "artists", g
            g = GraphBuilder(platform=True)
    yield "artists", g
    g = GraphBuilder(platform=True)
    for lid in month.labels:
        parent = labs.id(_rank(rng, s.labels, 2.0)) if rng.random() < SUBLABEL_PER_LABEL else None
        g.label(str(lid), f"New Label {lid}", parent)
    yield "labels", g
    g = GraphBuilder(platform=True)
    for mid in month.masters:
        g.master(str(mid), gen._title(rng), year=2026,
                 artists=[arts.id(_rank(rng, s.artists, lo=1))],
                 genres=[GENRES[gen._genre(rng)]])  # fmt: skip
    yield "masters", g
    g = GraphBuilder(platform=True)
    for n, rid in enumerate(month.releases):
        r = gen.release(rng, str(rid), new_artists)
        p = r.props
        g.release(p["id"], p.get("title"), year=p.get("year"), formats=p["formats"],
                  artists=r.artists, labels=r.labels, genres=r.genres, styles=r.styles,
                  master=r.master)  # fmt: skip
        if (n + 1) % chunk == 0:
            yield "releases", g
            g = GraphBuilder(platform=True)
    yield "releases", g


def write_latch(driver: Driver, database: str, version: str, signals: Sequence[str]) -> None:
    """graphinator's ExtractionCompletion latch (notifier.devkit.graphbuilder.LATCH)."""
    with driver.session(database=database) as session:
        session.run(LATCH, version=version, signals=sorted(set(signals))).consume()


# ----------------------------------------------------------------------------- import tool

# `neo4j-admin database import full` input: one CSV per node label and per
# relationship (label, type, label), ids in a space per label. An empty
# field is an absent property, so a release without formats gets none
# (graphinator writes `[]`); everything else is as the Bolt loader writes it.
_CSV_NODES = {
    "Artist": ("id:ID(Artist)", "name", "resource_url", "releases_url", "sha256"),
    "Label": ("id:ID(Label)", "name", "sha256"),
    "Master": ("id:ID(Master)", "title", "year:int", "sha256"),
    "Release": ("id:ID(Release)", "title", "year:int", "formats:string[]", "sha256"),
    "Genre": ("name:ID(Genre)",),
    "Style": ("name:ID(Style)",),
}


def write_csv(gen: Generator, folder: Path) -> tuple[list[str], dict[str, int]]:
    """The graph as import CSV files in `folder`: the import tool's arguments, rows per file."""
    args: list[str] = []
    counts: dict[str, int] = {}
    files: dict[str, Any] = {}
    writers: dict[str, Any] = {}

    def writer(name: str, header: Sequence[str]) -> Any:
        if name not in writers:
            files[name] = (folder / f"{name}.csv").open("w", newline="")
            writers[name] = csv.writer(files[name])
            writers[name].writerow(header)
        counts[name] = counts.get(name, 0) + 1  # the row the caller writes next
        return writers[name]

    def rel(a: str, t: str, b: str) -> Any:
        name = f"{a}-{t}-{b}"
        if name not in writers:
            args.append(f"--relationships={t}={folder / name}.csv")
        return writer(name, (f":START_ID({a})", f":END_ID({b})"))

    def node(label: str, props: dict[str, Any]) -> None:
        cols = _CSV_NODES[label]
        row = []
        for col in cols:
            value = props.get(col.split(":")[0])
            row.append(";".join(value) if isinstance(value, list) else value)
        writer(label, cols).writerow(row)

    for label in _CSV_NODES:
        args.append(f"--nodes={label}={folder / label}.csv")
    for g in GENRES:
        node("Genre", {"name": g})
    for i, s in enumerate(gen.style_list):
        node("Style", {"name": s})
        rel("Style", "PART_OF", "Genre").writerow((s, GENRES[home_genre(i)]))
    for props in gen.artists():
        node("Artist", props)
    for props in gen.labels():
        node("Label", props)
    for props, by, genres in gen.masters():
        node("Master", props)
        for a in by:
            rel("Master", "BY", "Artist").writerow((props["id"], a))
        for g in genres:
            rel("Master", "IS", "Genre").writerow((props["id"], g))
    for key, pairs in ((("Artist", "ALIAS_OF", "Artist"), gen.aliases()),
                       (("Artist", "MEMBER_OF", "Artist"), gen.members()),
                       (("Label", "SUBLABEL_OF", "Label"), gen.sublabels())):  # fmt: skip
        for pair in pairs:
            rel(*key).writerow(pair)
    for r in gen.releases():
        rid = r.props["id"]
        node("Release", r.props)
        for a in r.artists:
            rel("Release", "BY", "Artist").writerow((rid, a))
        for x in r.labels:
            rel("Release", "ON", "Label").writerow((rid, x))
        for g in r.genres:
            rel("Release", "IS", "Genre").writerow((rid, g))
        for s in r.styles:
            rel("Release", "IS", "Style").writerow((rid, s))
        if r.master is not None:
            rel("Release", "DERIVED_FROM", "Master").writerow((rid, r.master))
    for f in files.values():
        f.close()
    return args, counts
