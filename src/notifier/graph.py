"""Batched reads of the graph (contract §4) for the diff, returning plain data.

One query per entity type and relationship per batch (`UNWIND $ids AS id
MATCH ...`), never one per entity or per user. Every value is a bound
parameter; labels and relationship types are fixed strings. The Cypher stays
inside what both Neo4j 5 and ArcadeDB's OpenCypher (the test server) accept:
no COUNT {} subqueries, no pattern expressions, no APOC (tests/router run it
on ArcadeDB).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from neo4j import AsyncDriver

from notifier.diff import ArtistState, LabelState, TagState

# Sublabels are followed this deep (a label's releases include those of its
# sublabels, their sublabels, ... up to this depth).
SUBLABEL_DEPTH = 10

ARTIST_NAMES = "UNWIND $ids AS id MATCH (a:Artist {id: id}) RETURN a.id AS id, a.name AS name"
ARTIST_RELEASES = (
    "UNWIND $ids AS id MATCH (a:Artist {id: id})<-[:BY]-(r:Release) "
    "RETURN a.id AS id, collect(r.id) AS releases"
)
# ALIAS_OF is treated as undirected (contract §4).
ARTIST_ALIASES = (
    "UNWIND $ids AS id MATCH (a:Artist {id: id})-[:ALIAS_OF]-(x:Artist) "
    "RETURN a.id AS id, x.id AS other, x.name AS name"
)
ARTIST_MEMBERS = (
    "UNWIND $ids AS id MATCH (a:Artist {id: id})<-[:MEMBER_OF]-(x:Artist) "
    "RETURN a.id AS id, x.id AS other, x.name AS name"
)
LABEL_NAMES = "UNWIND $ids AS id MATCH (l:Label {id: id}) RETURN l.id AS id, l.name AS name"
# Anchored at the label and walking down to its sublabels, then their
# releases: the pattern written from the release side is ~15x slower on ArcadeDB.
LABEL_RELEASES = (
    "UNWIND $ids AS id MATCH (l:Label {id: id}) "
    f"MATCH (l)<-[:SUBLABEL_OF*0..{SUBLABEL_DEPTH}]-(s:Label) "
    "MATCH (s)<-[:ON]-(r:Release) "
    "RETURN l.id AS id, collect(DISTINCT r.id) AS releases"
)
TAG_COUNTS = {
    tag: f"UNWIND $ids AS id MATCH (g:{tag} {{name: id}}) "
    "OPTIONAL MATCH (r:Release)-[:IS]->(g) RETURN g.name AS id, count(r) AS n"
    for tag in ("Genre", "Style")
}
ALL_RELEASE_IDS = "MATCH (r:Release) RETURN r.id AS id"
RELEASE_PROPS = (
    "UNWIND $ids AS id MATCH (r:Release {id: id}) "
    "RETURN r.id AS id, r.title AS title, r.year AS year, r.formats AS formats"
)
# An artist's size (its release count in the graph) ranks notable releases.
RELEASE_ARTISTS = (
    "UNWIND $ids AS id MATCH (r:Release {id: id})-[:BY]->(a:Artist) "
    "OPTIONAL MATCH (o:Release)-[:BY]->(a) "
    "RETURN r.id AS id, a.id AS other, a.name AS name, count(o) AS size"
)
RELEASE_LABELS = (
    "UNWIND $ids AS id MATCH (r:Release {id: id})-[:ON]->(l:Label) "
    "RETURN r.id AS id, l.id AS other, l.name AS name"
)
RELEASE_TAGS = {
    tag: f"UNWIND $ids AS id MATCH (r:Release {{id: id}})-[:IS]->(g:{tag}) "
    "RETURN r.id AS id, g.name AS name"
    for tag in ("Genre", "Style")
}


class Graph:
    """The read side of the graph for one database."""

    def __init__(self, driver: AsyncDriver, database: str) -> None:
        self.driver, self.database = driver, database

    async def _rows(self, cypher: str, **params: Any) -> list[dict[str, Any]]:
        async with self.driver.session(database=self.database) as session:
            result = await session.run(cypher, **params)
            return [record.data() async for record in result]

    async def artists(self, ids: Sequence[str]) -> dict[str, ArtistState]:
        """The artists among `ids` that exist, with releases, aliases and members."""
        names = {r["id"]: r["name"] for r in await self._rows(ARTIST_NAMES, ids=list(ids))}
        releases = {
            r["id"]: r["releases"] for r in await self._rows(ARTIST_RELEASES, ids=list(ids))
        }
        aliases: dict[str, list[tuple[object, object]]] = defaultdict(list)
        for r in await self._rows(ARTIST_ALIASES, ids=list(ids)):
            if r["other"] != r["id"]:
                aliases[r["id"]].append((r["other"], r["name"]))
        members: dict[str, list[tuple[object, object]]] = defaultdict(list)
        for r in await self._rows(ARTIST_MEMBERS, ids=list(ids)):
            members[r["id"]].append((r["other"], r["name"]))
        return {
            key: ArtistState(
                name, releases.get(key) or [], aliases.get(key, []), members.get(key, [])
            )
            for key, name in names.items()
            if isinstance(key, str)
        }

    async def labels(self, ids: Sequence[str]) -> dict[str, LabelState]:
        """The labels among `ids` that exist, with their and their sublabels' releases."""
        names = {r["id"]: r["name"] for r in await self._rows(LABEL_NAMES, ids=list(ids))}
        releases = {r["id"]: r["releases"] for r in await self._rows(LABEL_RELEASES, ids=list(ids))}
        return {
            key: LabelState(name, releases.get(key) or [])
            for key, name in names.items()
            if isinstance(key, str)
        }

    async def tags(
        self, tag: Literal["Genre", "Style"], names: Sequence[str]
    ) -> dict[str, TagState]:
        """The genres (or styles) among `names` that exist, with their release counts."""
        rows = await self._rows(TAG_COUNTS[tag], ids=list(names))
        return {r["id"]: TagState(int(r["n"])) for r in rows if isinstance(r["id"], str)}

    async def release_ids(self, batch: int) -> AsyncIterator[list[object]]:
        """Every release id in the graph, streamed in lists of `batch`."""
        async with self.driver.session(database=self.database, fetch_size=batch) as session:
            result = await session.run(ALL_RELEASE_IDS)
            chunk: list[object] = []
            async for record in result:
                chunk.append(record["id"])
                if len(chunk) >= batch:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    async def releases(self, ids: Sequence[str]) -> list[ReleaseInfo]:
        """What percolation and the notable ranking need of each release among `ids`."""
        infos: dict[object, ReleaseInfo] = {}
        for r in await self._rows(RELEASE_PROPS, ids=list(ids)):
            infos[r["id"]] = ReleaseInfo(r["id"], r["title"], r["year"], r["formats"])
        for r in await self._rows(RELEASE_ARTISTS, ids=list(ids)):
            if (info := infos.get(r["id"])) is not None:
                info.artists.append((r["other"], r["name"]))
                info.rank = max(info.rank, int(r["size"] or 0))
        for r in await self._rows(RELEASE_LABELS, ids=list(ids)):
            if (info := infos.get(r["id"])) is not None:
                info.labels.append((r["other"], r["name"]))
        for tag, attr in (("Genre", "genres"), ("Style", "styles")):
            for r in await self._rows(RELEASE_TAGS[tag], ids=list(ids)):
                if (info := infos.get(r["id"])) is not None:
                    getattr(info, attr).append(r["name"])
        return list(infos.values())


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
