"""Build Discogsography-shaped graph data (contract §4) and write it over Bolt.

Used by the tests and by `notifier dev` to seed a sample graph. The notifier
itself never writes to the graph; only this builder does, for fixtures.

    g = GraphBuilder()
    g.artist("1", "John Coltrane")
    g.release("10", "Giant Steps", year=1960, artists=["1"], labels=["5"], genres=["Jazz"])
    await g.write(driver, database)

Writes are idempotent (MERGE on the node key), so a second `write` with more
releases models the next monthly import.

`GraphBuilder(platform=True)` writes the graph as the platform does
(graphinator/batch_processor.py, api/syncer.py, brainzgraphinator): nodes a
release only references are stubs carrying nothing but their `id`; a missing
title, name or year is an absent property; `formats` is the list of format
names (repeats kept, `[]` when there are none); the styles of a single-genre
release are PART_OF its genre; members, aliases and parent labels are stubbed
when not written. Both modes put a `sha256` on every Discogs node written
fully (never on a stub). `master`, `user`, `person`, `musicbrainz_edge`,
`musicbrainz_id`, `latch` and `platform_schema` add what the platform writes
besides the contract's shapes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from neo4j import AsyncDriver

# Node labels and the property that identifies each (Genre and Style by name).
NODE_KEYS: dict[str, str] = {
    "Release": "id",
    "Artist": "id",
    "Label": "id",
    "Master": "id",
    "Genre": "name",
    "Style": "name",
}
# The four record types graphinator imports; each one it writes fully carries
# the sha256 of its record (its hash-skip gate), a stub never does.
DISCOGS_LABELS = frozenset({"Artist", "Label", "Master", "Release"})
# What a release (or master, artist, label) record MERGEs as a bare {id} stub
# for a reference the dump has not written (yet).
STUB_LABELS = frozenset({"Artist", "Label", "Master"})

BATCH = 1000

# schema-init/neo4j_schema.py SCHEMA_STATEMENTS, verbatim: (name, Cypher).
PLATFORM_SCHEMA: tuple[tuple[str, str], ...] = (
    (
        "artist_id",
        "CREATE CONSTRAINT artist_id IF NOT EXISTS FOR (a:Artist) REQUIRE a.id IS UNIQUE",
    ),
    ("label_id", "CREATE CONSTRAINT label_id IF NOT EXISTS FOR (l:Label) REQUIRE l.id IS UNIQUE"),
    (
        "master_id",
        "CREATE CONSTRAINT master_id IF NOT EXISTS FOR (m:Master) REQUIRE m.id IS UNIQUE",
    ),
    (
        "release_id",
        "CREATE CONSTRAINT release_id IF NOT EXISTS FOR (r:Release) REQUIRE r.id IS UNIQUE",
    ),
    (
        "genre_name",
        "CREATE CONSTRAINT genre_name IF NOT EXISTS FOR (g:Genre) REQUIRE g.name IS UNIQUE",
    ),
    (
        "style_name",
        "CREATE CONSTRAINT style_name IF NOT EXISTS FOR (s:Style) REQUIRE s.name IS UNIQUE",
    ),
    ("user_id", "CREATE CONSTRAINT user_id IF NOT EXISTS FOR (u:User) REQUIRE u.id IS UNIQUE"),
    (
        "person_name",
        "CREATE CONSTRAINT person_name IF NOT EXISTS FOR (p:Person) REQUIRE p.name IS UNIQUE",
    ),
    ("artist_sha256", "CREATE INDEX artist_sha256 IF NOT EXISTS FOR (a:Artist) ON (a.sha256)"),
    ("label_sha256", "CREATE INDEX label_sha256 IF NOT EXISTS FOR (l:Label) ON (l.sha256)"),
    ("master_sha256", "CREATE INDEX master_sha256 IF NOT EXISTS FOR (m:Master) ON (m.sha256)"),
    ("release_sha256", "CREATE INDEX release_sha256 IF NOT EXISTS FOR (r:Release) ON (r.sha256)"),
    ("artist_name", "CREATE INDEX artist_name IF NOT EXISTS FOR (a:Artist) ON (a.name)"),
    ("label_name", "CREATE INDEX label_name IF NOT EXISTS FOR (l:Label) ON (l.name)"),
    (
        "release_year_index",
        "CREATE INDEX release_year_index IF NOT EXISTS FOR (r:Release) ON (r.year)",
    ),
    (
        "master_year_index",
        "CREATE INDEX master_year_index IF NOT EXISTS FOR (m:Master) ON (m.year)",
    ),
    (
        "genre_first_year_index",
        "CREATE INDEX genre_first_year_index IF NOT EXISTS FOR (g:Genre) ON (g.first_year)",
    ),
    (
        "style_first_year_index",
        "CREATE INDEX style_first_year_index IF NOT EXISTS FOR (s:Style) ON (s.first_year)",
    ),
    (
        "person_credit_count",
        "CREATE INDEX person_credit_count IF NOT EXISTS FOR (p:Person) ON (p.credit_count)",
    ),
    (
        "artist_name_fulltext",
        "CREATE FULLTEXT INDEX artist_name_fulltext IF NOT EXISTS FOR (n:Artist) ON EACH [n.name]",
    ),
    (
        "release_title_fulltext",
        "CREATE FULLTEXT INDEX release_title_fulltext IF NOT EXISTS "
        "FOR (n:Release) ON EACH [n.title]",
    ),
    (
        "label_name_fulltext",
        "CREATE FULLTEXT INDEX label_name_fulltext IF NOT EXISTS FOR (n:Label) ON EACH [n.name]",
    ),
    (
        "genre_name_fulltext",
        "CREATE FULLTEXT INDEX genre_name_fulltext IF NOT EXISTS FOR (n:Genre) ON EACH [n.name]",
    ),
    (
        "style_name_fulltext",
        "CREATE FULLTEXT INDEX style_name_fulltext IF NOT EXISTS FOR (n:Style) ON EACH [n.name]",
    ),
    (
        "person_name_fulltext",
        "CREATE FULLTEXT INDEX person_name_fulltext IF NOT EXISTS FOR (n:Person) ON EACH [n.name]",
    ),
    ("artist_mbid", "CREATE INDEX artist_mbid IF NOT EXISTS FOR (a:Artist) ON (a.mbid)"),
    ("label_mbid", "CREATE INDEX label_mbid IF NOT EXISTS FOR (l:Label) ON (l.mbid)"),
    ("release_mbid", "CREATE INDEX release_mbid IF NOT EXISTS FOR (r:Release) ON (r.mbid)"),
    ("master_mbid", "CREATE INDEX master_mbid IF NOT EXISTS FOR (m:Master) ON (m.mbid)"),
)

# graphinator.py, _persist_extraction_signals: the durable completion latch.
LATCH = (
    "MERGE (m:ExtractionCompletion {version: $version}) "
    "ON CREATE SET m.created_at = datetime() "
    "SET m.signals = $signals, m.updated_at = datetime()"
)

# brainzgraphinator.py MB_RELATIONSHIP_MAP's edge types (Artist to Artist).
# MEMBER_OF is among them: MERGEd onto the same type the Discogs import uses.
MUSICBRAINZ_EDGES = frozenset(
    {"MEMBER_OF", "COLLABORATED_WITH", "TAUGHT", "TRIBUTE_TO", "FOUNDED", "SUPPORTED",
     "SUBGROUP_OF", "RENAMED_TO"}
)  # fmt: skip

# api/syncer.py (sync_collection, sync_wantlist), one row per user; the
# platform runs one query per user with the same clauses. Both start with
# the user's upsert.
_USER = """
UNWIND $rows AS row
MERGE (u:User {id: row.user_id})
ON CREATE SET u.discogs_username = row.discogs_username
ON MATCH SET u.discogs_username = row.discogs_username
WITH u, row"""
_USER_COLLECTED = (
    _USER
    + """
UNWIND row.releases AS rel
MATCH (r:Release {id: toString(rel.release_id)})
MERGE (u)-[c:COLLECTED {instance_id: rel.instance_id}]->(r)
SET c.rating = rel.rating,
    c.folder_id = rel.folder_id,
    c.date_added = rel.date_added,
    c.synced_at = row.synced_at,
    r += rel.metadata
"""
)
_USER_WANTS = (
    _USER
    + """
UNWIND row.wants AS w
MATCH (r:Release {id: toString(w.release_id)})
MERGE (u)-[wnt:WANTS]->(r)
SET wnt.rating = w.rating,
    wnt.date_added = w.date_added,
    wnt.synced_at = row.synced_at,
    r += w.metadata
"""
)
# graphinator/batch_processor.py, the release batch's credits (extraartists).
_CREDITS = """
UNWIND $rows AS credit
MATCH (r:Release {id: credit.release_id})
MERGE (p:Person {name: credit.name})
MERGE (p)-[c:CREDITED_ON {role: credit.role}]->(r)
SET c.category = credit.category
"""
_SAME_AS = """
UNWIND $rows AS credit
MATCH (p:Person {name: credit.name})
MATCH (a:Artist {id: credit.artist_id})
MERGE (p)-[:SAME_AS]->(a)
"""
# brainzgraphinator.py create_relationship_edges; the type is a fixed name.
_MB_EDGE = {
    t: "UNWIND $rows AS row "
    "MATCH (a:Artist {id: row.source_id}) "
    "MATCH (b:Artist {id: row.target_id}) "
    f"MERGE (a)-[r:{t}]->(b) "
    "SET r.source = 'musicbrainz'"
    for t in MUSICBRAINZ_EDGES
}
# brainzgraphinator.py enrich_*: MATCH only, never creates the node.
_MB_ID = {
    label: f"UNWIND $rows AS row MATCH (n:{label} {{id: row.id}}) "
    "SET n.mbid = row.mbid, n.mb_updated_at = row.mb_updated_at"
    for label in DISCOGS_LABELS
}
# A fixed sync/enrichment time, so fixtures are reproducible.
SYNCED_AT = datetime(2026, 3, 1, tzinfo=UTC)


def record_sha256(label: str, props: dict[str, Any]) -> str:
    """A stand-in for the sha256 of a Discogs record: stable, changed by any property change."""
    body = {k: v for k, v in props.items() if k != "sha256"}
    text = json.dumps([label, body], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class GraphBuilder:
    """Collects nodes and relationships in memory; `write` sends them in batches."""

    nodes: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    rels: dict[tuple[str, str, str], set[tuple[Any, Any]]] = field(
        default_factory=lambda: defaultdict(set)
    )
    # Nodes only referenced (by a release): created when missing, never overwritten.
    refs: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    # Rows of the platform's own statements (users, credits, MusicBrainz), by
    # statement, written after the nodes and relationships in insertion order.
    extra: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    # Write as the platform does (see the module docstring) instead of the defaults.
    platform: bool = False

    def node(self, label: str, props: dict[str, Any]) -> GraphBuilder:
        """Any node, with any properties (odd types and nulls included, for bad-data tests)."""
        if label not in NODE_KEYS:
            raise ValueError(f"unknown label {label!r}")
        key = props.get(NODE_KEYS[label])
        self.refs[label].pop(key, None)
        self.nodes[label].setdefault(key, {}).update(props)
        return self

    def _ref(self, label: str, key: str, props: dict[str, Any]) -> None:
        if key not in self.nodes[label]:
            self.refs[label].setdefault(key, props)

    def _stub(self, label: str, key: str) -> None:
        """A referenced Artist/Label/Master: a bare {id} stub on the platform, else named."""
        if self.platform:
            self._ref(label, key, {"id": key})
        else:
            self._ref(label, key, {"id": key, "name": f"{label} {key}"})

    def stub(self, label: str, id: str) -> GraphBuilder:
        """(:Artist|Label|Master {id}) alone, as a release batch MERGEs a dangling reference.

        Never overwrites a node written fully (here or by an earlier `write`).
        """
        if label not in STUB_LABELS:
            raise ValueError(f"no stubs of {label!r}")
        self._ref(label, id, {"id": id})
        return self

    def rel(
        self, src_label: str, src: Any, rel_type: str, dst_label: str, dst: Any
    ) -> GraphBuilder:
        """A relationship between two nodes given by label and key."""
        self.rels[(src_label, rel_type, dst_label)].add((src, dst))
        return self

    def artist(self, id: str, name: str | None) -> GraphBuilder:
        """(:Artist {id, name}); on the platform also its resource_url and releases_url."""
        props: dict[str, Any] = {"id": id, "name": name}
        if self.platform:  # batch_processor.py _process_artists_batch
            props["resource_url"] = f"https://api.discogs.com/artists/{id}"
            props["releases_url"] = f"https://api.discogs.com/artists/{id}/releases"
        return self.node("Artist", props)

    def label(self, id: str, name: str | None, parent: str | None = None) -> GraphBuilder:
        """(:Label {id, name}), optionally (label)-[:SUBLABEL_OF]->(parent)."""
        self.node("Label", {"id": id, "name": name})
        if parent is not None:
            if self.platform:  # MERGE (p:Label {id: rel.parent_id})
                self.stub("Label", parent)
            self.rel("Label", id, "SUBLABEL_OF", "Label", parent)
        return self

    def genre(self, name: str) -> GraphBuilder:
        """(:Genre {name})."""
        return self.node("Genre", {"name": name})

    def style(self, name: str, genre: str | None = None) -> GraphBuilder:
        """(:Style {name}), optionally (style)-[:PART_OF]->(genre)."""
        self.node("Style", {"name": name})
        if genre is not None:
            self.genre(genre).rel("Style", name, "PART_OF", "Genre", genre)
        return self

    def member(self, member: str, group: str) -> GraphBuilder:
        """(member:Artist)-[:MEMBER_OF]->(group:Artist); on the platform, missing ends are stubs."""
        if self.platform:
            self.stub("Artist", member).stub("Artist", group)
        return self.rel("Artist", member, "MEMBER_OF", "Artist", group)

    def alias(self, alias: str, artist: str) -> GraphBuilder:
        """(alias:Artist)-[:ALIAS_OF]->(artist:Artist); on the platform, missing ends are stubs."""
        if self.platform:
            self.stub("Artist", alias).stub("Artist", artist)
        return self.rel("Artist", alias, "ALIAS_OF", "Artist", artist)

    def _tags(self, label: str, id: str, genres: Sequence[str], styles: Sequence[str]) -> None:
        """IS edges of a release or master; on the platform, PART_OF from a single genre."""
        for gn in genres:
            self.genre(gn).rel(label, id, "IS", "Genre", gn)
        for st in styles:
            self._ref("Style", st, {"name": st})
            self.rel(label, id, "IS", "Style", st)
        # batch_processor.py: only a single-genre record links its styles to it.
        if self.platform and len(genres) == 1 and genres[0]:
            for st in styles:
                self.rel("Style", st, "PART_OF", "Genre", genres[0])

    def release(
        self,
        id: str,
        title: str | None = None,
        *,
        year: int | None = None,
        formats: list[str] | None = None,
        artists: Sequence[str] = (),
        labels: Sequence[str] = (),
        genres: Sequence[str] = (),
        styles: Sequence[str] = (),
        master: str | None = None,
    ) -> GraphBuilder:
        """(:Release) with its BY, ON, IS and DERIVED_FROM relationships.

        Artists, labels, styles and masters named here are created when
        missing (artists and labels then get a name derived from their id;
        on the platform they are bare {id} stubs); existing ones keep their
        properties. By default a missing title or formats get a value; on the
        platform a missing title is absent and missing formats are `[]`.
        """
        if self.platform:  # SET r.title = release.title, r.formats = release.format_names
            props = {"id": id, "title": title, "year": year, "formats": list(formats or [])}
        else:
            props = {"id": id, "title": title or f"Release {id}", "year": year,
                     "formats": formats or ["Vinyl"]}  # fmt: skip
        self.node("Release", props)
        for a in artists:
            self._stub("Artist", a)
            self.rel("Release", id, "BY", "Artist", a)
        for lb in labels:
            self._stub("Label", lb)
            self.rel("Release", id, "ON", "Label", lb)
        self._tags("Release", id, genres, styles)
        if master is not None:
            if self.platform:
                self.stub("Master", master)
            else:
                self._ref("Master", master, {"id": master, "title": title, "year": year})
            self.rel("Release", id, "DERIVED_FROM", "Master", master)
        return self

    def master(
        self,
        id: str,
        title: str | None = None,
        *,
        year: int | None = None,
        artists: Sequence[str] = (),
        genres: Sequence[str] = (),
        styles: Sequence[str] = (),
    ) -> GraphBuilder:
        """(:Master {id, title, year}) with its own (master)-[:BY]->(artist) and IS edges.

        A master is not a release: the notifier must never count these edges.
        """
        self.node("Master", {"id": id, "title": title, "year": year})
        for a in artists:
            self._stub("Artist", a)
            self.rel("Master", id, "BY", "Artist", a)
        self._tags("Master", id, genres, styles)
        return self

    def user(
        self,
        id: str,
        username: str | None = None,
        *,
        collected: Sequence[str] = (),
        wants: Sequence[str] = (),
    ) -> GraphBuilder:
        """(:User {id, discogs_username}) with COLLECTED and WANTS edges to existing releases.

        As api/syncer.py writes them: releases are MATCHed, never created.
        """
        base = {"user_id": id, "discogs_username": username, "synced_at": SYNCED_AT}
        releases = [
            {"release_id": r, "instance_id": f"{id}-{r}", "rating": 0, "folder_id": 1,
             "date_added": "2026-01-01T00:00:00-08:00", "metadata": {}}
            for r in collected
        ]  # fmt: skip
        self.extra[_USER_COLLECTED].append({**base, "releases": releases})
        rows = [
            {"release_id": r, "rating": 0, "date_added": "2026-01-01T00:00:00-08:00",
             "metadata": {}}
            for r in wants
        ]  # fmt: skip
        self.extra[_USER_WANTS].append({**base, "wants": rows})
        return self

    def person(
        self,
        name: str,
        credits: Sequence[tuple[str, str]],
        *,
        artist: str | None = None,
        category: str = "production",
    ) -> GraphBuilder:
        """(:Person {name})-[:CREDITED_ON {role, category}]->(release) per (release id, role).

        With `artist`, also (person)-[:SAME_AS]->(artist), as a credit carrying
        an artist id does. Releases and the artist are MATCHed, never created.
        """
        for release, role in credits:
            row = {"name": name, "role": role, "category": category, "release_id": release}
            self.extra[_CREDITS].append(row)
        if artist is not None and credits:
            self.extra[_SAME_AS].append({"name": name, "artist_id": artist})
        return self

    def musicbrainz_edge(self, source: str, rel_type: str, target: str) -> GraphBuilder:
        """(source:Artist)-[:rel_type {source: 'musicbrainz'}]->(target:Artist), both existing."""
        if rel_type not in MUSICBRAINZ_EDGES:
            raise ValueError(f"not a MusicBrainz edge type: {rel_type!r}")
        self.extra[_MB_EDGE[rel_type]].append({"source_id": source, "target_id": target})
        return self

    def musicbrainz_id(self, label: str, id: str, mbid: str) -> GraphBuilder:
        """An existing Discogs node's `mbid` and `mb_updated_at`, as brainzgraphinator sets them."""
        if label not in DISCOGS_LABELS:
            raise ValueError(f"unknown label {label!r}")
        row = {"id": id, "mbid": mbid, "mb_updated_at": SYNCED_AT.isoformat()}
        self.extra[_MB_ID[label]].append(row)
        return self

    def clear(self) -> GraphBuilder:
        """Forget what was collected (after a write, to model the next import)."""
        self.nodes.clear()
        self.rels.clear()
        self.refs.clear()
        self.extra.clear()
        return self

    async def write(self, driver: AsyncDriver, database: str) -> None:
        """MERGE everything collected into `database`, in batches of UNWIND rows.

        Labels and relationship types are interpolated from the fixed names
        above, never from input; every value is a bound parameter. The Cypher
        stays inside what both Neo4j and ArcadeDB's OpenCypher accept.
        """
        async with driver.session(database=database) as session:
            for nodes, action in ((self.nodes, "SET"), (self.refs, "ON CREATE SET")):
                for label, by_key in nodes.items():
                    key = NODE_KEYS[label]
                    rows = [{"key": k, "props": self._full(label, p, action)}
                            for k, p in by_key.items()]  # fmt: skip
                    for i in range(0, len(rows), BATCH):
                        await session.run(
                            f"UNWIND $rows AS row MERGE (n:{label} {{{key}: row.key}}) "
                            f"{action} n += row.props",
                            rows=rows[i : i + BATCH],
                        )
            for (src_label, rel_type, dst_label), pairs in self.rels.items():
                src_key, dst_key = NODE_KEYS[src_label], NODE_KEYS[dst_label]
                rows = [{"src": s, "dst": d} for s, d in pairs]
                for i in range(0, len(rows), BATCH):
                    await session.run(
                        f"UNWIND $rows AS row "
                        f"MATCH (a:{src_label} {{{src_key}: row.src}}) "
                        f"MATCH (b:{dst_label} {{{dst_key}: row.dst}}) "
                        f"MERGE (a)-[:{rel_type}]->(b)",
                        rows=rows[i : i + BATCH],
                    )
            for cypher, rows in self.extra.items():
                for i in range(0, len(rows), BATCH):
                    await session.run(cypher, rows=rows[i : i + BATCH])

    @staticmethod
    def _full(label: str, props: dict[str, Any], action: str) -> dict[str, Any]:
        """A fully written Discogs node's properties with its sha256 (kept if given)."""
        if action != "SET" or label not in DISCOGS_LABELS or "sha256" in props:
            return props
        return {**props, "sha256": record_sha256(label, props)}

    @staticmethod
    async def latch(
        driver: AsyncDriver, database: str, version: str, signals: Sequence[str]
    ) -> None:
        """The ExtractionCompletion latch of `version`, exactly as graphinator writes it.

        graphinator persists the sorted set of data types flushed so far
        (graphinator.py _persist_extraction_signals), once per signal.
        """
        async with driver.session(database=database) as session:
            result = await session.run(LATCH, version=version, signals=sorted(set(signals)))
            await result.consume()


async def platform_schema(driver: AsyncDriver, database: str, *, neo4j: bool = True) -> list[str]:
    """Apply schema-init's constraints and indexes (PLATFORM_SCHEMA) to `database`.

    Returns the names applied. On Neo4j every statement runs and the call
    waits for the indexes to come online (the planner ignores a populating
    index). ArcadeDB's OpenCypher (`neo4j=False`, i.e. the GraphService has an
    admin_url) accepts the constraints and range indexes but refuses FULLTEXT
    ("Only standard, RANGE and TEXT index types are supported"): those are
    skipped, and nothing of the notifier reads them.
    """
    applied: list[str] = []
    async with driver.session(database=database) as session:
        for name, cypher in PLATFORM_SCHEMA:
            if not neo4j and cypher.startswith("CREATE FULLTEXT"):
                continue
            await (await session.run(cypher)).consume()
            applied.append(name)
        if neo4j:
            await (await session.run("CALL db.awaitIndexes(300)")).consume()
    return applied


async def drop_platform_schema(driver: AsyncDriver, database: str, *, neo4j: bool = True) -> None:
    """Drop what `platform_schema` created (Neo4j's per-test wipe deletes nodes only).

    A no-op on ArcadeDB, whose test databases are dropped whole.
    """
    if not neo4j:
        return
    async with driver.session(database=database) as session:
        for name, cypher in PLATFORM_SCHEMA:  # names are fixed strings, never input
            kind = "CONSTRAINT" if cypher.startswith("CREATE CONSTRAINT") else "INDEX"
            await (await session.run(f"DROP {kind} {name} IF EXISTS")).consume()


@contextlib.asynccontextmanager
async def platform_schema_applied(
    driver: AsyncDriver, database: str, *, neo4j: bool = True
) -> AsyncIterator[list[str]]:
    """`platform_schema` for the duration of the block (for a test), then dropped."""
    try:
        yield await platform_schema(driver, database, neo4j=neo4j)
    finally:
        await drop_platform_schema(driver, database, neo4j=neo4j)
