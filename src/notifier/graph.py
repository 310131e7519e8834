"""Batched reads of the graph (contract §4) for the diff, returning plain data.

One query per batch (`UNWIND $ids AS id MATCH ...`), never one per entity
or per user; the diff's artist and label reads are one query per unit. Every
value is a bound parameter; labels and relationship types are fixed strings.
The Cypher stays inside what both Neo4j 5 and ArcadeDB's OpenCypher (the
fallback test server) accept: no pattern predicates (pattern comprehensions
and COUNT {} are fine), no APOC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Container, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from neo4j import AsyncDriver

from notifier.diff import (
    ArtistMarks,
    ArtistPeople,
    ArtistState,
    Facets,
    LabelState,
    LabelTree,
    TagState,
    parse_id,
)

# Sublabels are followed this deep (a label's releases include those of its
# sublabels, their sublabels, ... up to this depth).
SUBLABEL_DEPTH = 10

# One query per unit, returning ONE record: the list of the unit's rows. The
# driver's cost is mostly per Bolt record, so a single record of 500 rows reads
# ~1.7x faster than 500 records (bench/diff_rate.py). Pattern comprehensions
# (Neo4j 5 and ArcadeDB) read each artist's releases, aliases and members
# without multiplying rows. ALIAS_OF is treated as undirected (contract §4).
ARTIST_STATES = (
    "UNWIND $ids AS id MATCH (a:Artist {id: id}) "
    "WITH collect([a.id, a.name, [(a)<-[:BY]-(r:Release) | r.id], "
    "[(a)-[:ALIAS_OF]-(x:Artist) | [x.id, x.name]], "
    "[(a)<-[:MEMBER_OF]-(m:Artist) | [m.id, m.name]]]) AS rows "
    "RETURN rows"
)
# An artist's cheap read, without its releases: its name and three degrees
# from the degree store (Neo4j answers COUNT { (a)<-[:BY]-() } without touching
# the edges, tests/router/test_artist_news.py), so a hub costs what a small
# artist costs: BY in (releases and masters point BY at artists, nothing
# else does), ALIAS_OF either way (as ARTIST_STATES reads aliases), MEMBER_OF
# in. Its rows are what artist units digest (unitstore.row_digests). One
# record, as above.
ARTIST_MARKS = (
    "UNWIND $ids AS id MATCH (a:Artist {id: id}) "
    "WITH collect([a.id, a.name, COUNT { (a)<-[:BY]-() }, COUNT { (a)-[:ALIAS_OF]-() }, "
    "COUNT { (a)<-[:MEMBER_OF]-() }]) AS rows "
    "RETURN rows"
)
# An artist's aliases and members alone (ARTIST_STATES' without the releases),
# for the artists whose ALIAS_OF or MEMBER_OF degree changed. One record.
ARTIST_PEOPLE = (
    "UNWIND $ids AS id MATCH (a:Artist {id: id}) "
    "WITH collect([a.id, [(a)-[:ALIAS_OF]-(x:Artist) | [x.id, x.name]], "
    "[(a)<-[:MEMBER_OF]-(m:Artist) | [m.id, m.name]]]) AS rows "
    "RETURN rows"
)
# Anchored at the label and walking down to its sublabels, then their
# releases: the pattern written from the release side is ~15x slower on ArcadeDB.
# One record, as above.
LABEL_STATES = (
    "UNWIND $ids AS id MATCH (l:Label {id: id}) "
    f"OPTIONAL MATCH (l)<-[:SUBLABEL_OF*0..{SUBLABEL_DEPTH}]-(s:Label) "
    "OPTIONAL MATCH (s)<-[:ON]-(r:Release) "
    "WITH l, collect(DISTINCT r.id) AS releases "
    "RETURN collect([l.id, l.name, releases]) AS rows"
)
# A label's cheap read, without its releases: its name and, for it and each
# label of its sublabel tree (LABEL_STATES' depth), the id and ON degree, from
# the degree store (Neo4j answers COUNT { (s)<-[:ON]-() } without touching
# the edges, tests/router/test_label_news.py), so a hub costs what a small
# label costs. Only releases are ON a label (graphinator MERGEs one edge per
# release and label). One record, as above.
LABEL_TREES = (
    "UNWIND $ids AS id MATCH (l:Label {id: id}) "
    f"MATCH (l)<-[:SUBLABEL_OF*0..{SUBLABEL_DEPTH}]-(s:Label) "
    "WITH DISTINCT l, s "
    "WITH l, collect([s.id, COUNT { (s)<-[:ON]-() }]) AS tree "
    "RETURN collect([l.id, l.name, tree]) AS rows"
)
# A genre's (style's) release count: its IS degree from the degree store (O(1),
# whatever the tag's size) less the IS edges of masters, which are not
# releases. The masters' edges are counted from the master side (a scan of
# the masters, a tenth of the catalogue, by design: from the tag it would
# walk every release of it).
TAG_COUNTS = {
    tag: f"UNWIND $ids AS id MATCH (g:{tag} {{name: id}}) "
    "RETURN g.name AS id, COUNT { (g)<-[:IS]-() } AS n"
    for tag in ("Genre", "Style")
}
TAG_MASTERS = {
    tag: f"MATCH (m:Master)-[:IS]->(g:{tag}) USING SCAN m:Master WHERE g.name IN $ids "
    "RETURN g.name AS id, count(*) AS n"
    for tag in ("Genre", "Style")
}
# The highest numeric master id, and the masters whose numeric id is above
# `$mark` (`$mark` null: none) with the ids of the artists they are BY and
# the names of the genres and styles they are IS (one entry per edge:
# graphinator MERGEs one edge per master and artist or tag). One pass over
# the masters' ids; edges are read only for the new masters (a month's, not
# the catalogue's). Read once a cycle by the releases unit. One record.
CYCLE_MASTERS = (
    "MATCH (m:Master) WITH m, toIntegerOrNull(m.id) AS n "
    "WITH max(n) AS highest, collect(CASE WHEN n > $mark THEN m END) AS fresh "
    "RETURN highest, [m IN fresh | [m.id, [(m)-[:BY]->(a:Artist) | a.id], "
    "[(m)-[:IS]->(g:Genre) | g.name], [(m)-[:IS]->(s:Style) | s.name]]] AS rows"
)
# The catalogue's size (Neo4j answers from its count store, without a scan).
RELEASE_COUNT = "MATCH (r:Release) RETURN count(r) AS n"
# The releases whose numeric id is above `$max`, filtered in the server: the
# month's new releases come with new ids, and only they travel. One record.
RELEASES_ABOVE = (
    "MATCH (r:Release) WITH r.id AS id WHERE toIntegerOrNull(id) > $max RETURN collect(id) AS rows"
)
# Every string release id, a page at a time in id order (the unique
# constraint's index gives the order): one record a page.
RELEASE_ID_PAGE = (
    "MATCH (r:Release) WHERE r.id > $after WITH r.id AS id ORDER BY id LIMIT $limit "
    "RETURN collect(id) AS rows"
)
# What percolation and the notable ranking need of new releases, one record a batch.
RELEASES = (
    "UNWIND $ids AS id MATCH (r:Release {id: id}) "
    "RETURN collect([r.id, r.title, r.year, r.formats, "
    "[(r)-[:BY]->(a:Artist) | [a.id, a.name]], [(r)-[:ON]->(l:Label) | [l.id, l.name]], "
    "[(r)-[:IS]->(g:Genre) | g.name], [(r)-[:IS]->(s:Style) | s.name]]) AS rows"
)
# An artist's size (its releases, never its masters) ranks notable releases.
# Asked once a cycle per artist (Graph.releases' cache), so a hub costs its
# size once a cycle, not once per new release of it.
ARTIST_SIZES = (
    "UNWIND $ids AS id MATCH (a:Artist {id: id}) "
    "RETURN collect([a.id, COUNT { (a)<-[:BY]-(:Release) }]) AS rows"
)
# The year and formats of releases, for the release filters of artist and
# label watches: one record, as ARTIST_STATES.
RELEASE_FACETS = (
    "UNWIND $ids AS id MATCH (r:Release {id: id}) RETURN collect([r.id, r.year, r.formats]) AS rows"
)


def artist_marks(rows: Sequence[Any]) -> dict[str, ArtistMarks]:
    """ArtistMarks by id from `Graph.artist_marks` rows (an id read twice: its last row)."""
    return {
        key: ArtistMarks(name, by, aliases, members)
        for key, name, by, aliases, members in rows
        if isinstance(key, str)
    }


def artist_states(
    rows: Sequence[Any], only: Container[str] | None = None
) -> dict[str, ArtistState]:
    """ArtistStates by id from `Graph.artist_rows` rows (those in `only`, when given)."""
    out: dict[str, ArtistState] = {}
    # Most artists have neither aliases nor members: no list is built for them.
    for key, name, releases, aliases, members in rows:
        if isinstance(key, str) and (only is None or key in only):
            out[key] = ArtistState(
                name,
                releases or [],
                [(o, n) for o, n in aliases if o != key] if aliases else [],
                [(o, n) for o, n in members] if members else [],
            )
    return out


class Graph:
    """The read side of the graph for one database."""

    def __init__(self, driver: AsyncDriver, database: str) -> None:
        self.driver, self.database = driver, database

    async def _rows(self, cypher: str, **params: Any) -> list[dict[str, Any]]:
        async with self.driver.session(database=self.database) as session:
            result = await session.run(cypher, **params)
            return [record.data() async for record in result]

    async def _one(self, cypher: str, **params: Any) -> list[Any]:
        """The `rows` list of a query returning one record (none: an empty list)."""
        async with self.driver.session(database=self.database) as session:
            result = await session.run(cypher, **params)
            record = await result.single()
        rows = None if record is None else record["rows"]
        return rows if isinstance(rows, list) else []

    async def artist_rows(self, ids: Sequence[str]) -> list[Any]:
        """ARTIST_STATES' raw rows ([id, name, release ids, aliases, members]) for `ids`."""
        return await self._one(ARTIST_STATES, ids=list(ids))

    async def artist_marks(self, ids: Sequence[str]) -> list[Any]:
        """ARTIST_MARKS' raw rows ([id, name, BY, ALIAS_OF, MEMBER_OF degrees]) for `ids`."""
        return await self._one(ARTIST_MARKS, ids=list(ids))

    async def artist_people(self, ids: Sequence[str]) -> dict[str, ArtistPeople]:
        """The aliases and members of the artists among `ids` that exist (no release)."""
        return {
            key: ArtistPeople(aliases or [], members or [])
            for key, aliases, members in await self._one(ARTIST_PEOPLE, ids=list(ids))
            if isinstance(key, str)
        }

    async def labels(self, ids: Sequence[str]) -> dict[str, LabelState]:
        """The labels among `ids` that exist, with their and their sublabels' releases."""
        return {
            key: LabelState(name, releases or [])
            for key, name, releases in await self._one(LABEL_STATES, ids=list(ids))
            if isinstance(key, str)
        }

    async def label_trees(self, ids: Sequence[str]) -> dict[str, LabelTree]:
        """The labels among `ids` that exist: name, sublabel tree, ON degrees (no release)."""
        return {
            key: LabelTree(name, tree or [])
            for key, name, tree in await self._one(LABEL_TREES, ids=list(ids))
            if isinstance(key, str)
        }

    async def tags(
        self, tag: Literal["Genre", "Style"], names: Sequence[str]
    ) -> dict[str, TagState]:
        """The genres (or styles) among `names` that exist, with their release counts."""
        degrees = await self.tag_degrees(tag, names)
        masters = await self.tag_masters(tag, list(degrees))
        return {i: TagState(n - masters.get(i, 0)) for i, n in degrees.items()}

    async def tag_degrees(
        self, tag: Literal["Genre", "Style"], names: Sequence[str]
    ) -> dict[str, int]:
        """The IS degree of each genre (or style) among `names` that exists (TAG_COUNTS)."""
        rows = await self._rows(TAG_COUNTS[tag], ids=list(names))
        return {r["id"]: int(r["n"]) for r in rows if isinstance(r["id"], str)}

    async def tag_masters(
        self, tag: Literal["Genre", "Style"], names: Sequence[str]
    ) -> dict[str, int]:
        """Every master's IS edges on each of `names` (TAG_MASTERS: a scan of the masters)."""
        rows = await self._rows(TAG_MASTERS[tag], ids=list(names))
        return {r["id"]: int(r["n"]) for r in rows}

    async def cycle_masters(self, mark: int | None) -> tuple[int | None, list[Any]]:
        """The highest numeric master id (None: none), and the raw rows of masters above
        `mark` ([id, BY artist ids, IS genre names, IS style names]; none if `mark` is None)."""
        rows = await self._rows(CYCLE_MASTERS, mark=mark)
        if not rows:
            return None, []
        highest, masters = rows[0]["highest"], rows[0]["rows"]
        return (highest if type(highest) is int else None), (masters or [])

    async def release_facets(self, ids: Sequence[int], batch: int) -> dict[int, Facets]:
        """(year, formats) of each release among `ids` that exists, read `batch` ids a query."""
        out: dict[int, Facets] = {}
        for start in range(0, len(ids), batch):
            chunk = [str(i) for i in ids[start : start + batch]]
            for key, year, formats in await self._one(RELEASE_FACETS, ids=chunk):
                if (rid := parse_id(key)) is not None:
                    out[rid] = (year, formats)
        return out

    async def release_count(self) -> int:
        """How many Release nodes the graph holds."""
        rows = await self._rows(RELEASE_COUNT)
        return int(rows[0]["n"]) if rows else 0

    async def releases_above(self, highest: int) -> list[Any]:
        """The ids of releases whose numeric id is above `highest` (raw graph values)."""
        return await self._one(RELEASES_ABOVE, max=highest)

    async def release_ids(self, batch: int) -> AsyncIterator[list[Any]]:
        """Every string release id in the graph, in lists of `batch`, in id (text) order."""
        after = ""
        while True:
            page = await self._one(RELEASE_ID_PAGE, after=after, limit=batch)
            if not page:
                return
            yield page
            if not isinstance(last := page[-1], str) or len(page) < batch:
                return
            after = last

    async def releases(self, ids: Sequence[str], sizes: dict[Any, int]) -> list[ReleaseInfo]:
        """What percolation and the notable ranking need of each release among `ids`.

        `sizes` caches artists' sizes (release counts) across calls: only
        artists not in it are counted, and added.
        """
        infos: list[ReleaseInfo] = []
        for row in await self._one(RELEASES, ids=list(ids)):
            key, title, year, formats, artists, labels, genres, styles = row
            info = ReleaseInfo(key, title, year, formats)
            info.artists.extend((other, name) for other, name in artists or [])
            info.labels.extend((other, name) for other, name in labels or [])
            info.genres.extend(genres or [])
            info.styles.extend(styles or [])
            infos.append(info)
        unknown = {a for i in infos for a, _ in i.artists if isinstance(a, str) and a not in sizes}
        for artist, size in await self._one(ARTIST_SIZES, ids=sorted(unknown)):
            sizes[artist] = size if isinstance(size, int) else 0
        for info in infos:
            info.rank = max((sizes.get(a, 0) for a, _ in info.artists), default=0)
        return infos


@dataclass
class ReleaseInfo:
    """A release with its artists, labels, genres, styles and ranking key (raw graph values)."""

    id: object
    title: object
    year: object
    formats: object
    artists: list[tuple[object, object]] = field(default_factory=list)
    labels: list[tuple[object, object]] = field(default_factory=list)
    genres: list[object] = field(default_factory=list)
    styles: list[object] = field(default_factory=list)
    rank: int = 0
