"""The Discogs-shaped graph has the platform's proportions and hubs; its month runs end to end."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from bench.discogs_graph import GENRES, Generator, Ids, Month, Shape, month_builders
from notifier.devkit import services

ROOT = Path(__file__).resolve().parent.parent


def test_the_shape_has_the_platforms_proportions_and_hubs() -> None:
    shape = Shape.at(0.0005)  # 9,500 releases, 5,000 artists, 1,150 labels
    gen = Generator(shape)
    releases = list(gen.releases())
    n = len(releases)
    by = collections.Counter(a for r in releases for a in r.artists)
    on = collections.Counter(x for r in releases for x in r.labels)
    genres = collections.Counter(g for r in releases for g in r.genres)
    assert n == shape.releases == 9_500
    assert sum(by.values()) / n == pytest.approx(1.4, abs=0.1)
    assert sum(on.values()) / n == pytest.approx(1.1, abs=0.1)
    assert sum(len(r.genres) + len(r.styles) for r in releases) / n == pytest.approx(3.2, abs=0.15)
    assert sum(r.master is not None for r in releases) / n == pytest.approx(1.0, abs=0.05)
    # The hubs: "Various" and "Not On Label" (both id "1") hold >= 5 % each.
    assert by.most_common(1)[0][0] == "1" and by["1"] / n >= 0.05
    assert on.most_common(1)[0][0] == "1" and on["1"] / n >= 0.05
    assert genres.most_common(1)[0][0] == GENRES[0]
    assert 0.30 <= genres[GENRES[0]] / n <= 0.40
    assert sum(1 for _ in gen.aliases()) / shape.artists == pytest.approx(0.5, abs=0.02)
    assert sum(1 for _ in gen.members()) / shape.artists == pytest.approx(0.23, abs=0.02)
    assert sum(1 for _ in gen.sublabels()) / shape.labels == pytest.approx(0.12, abs=0.01)
    # As graphinator writes: stubs, absent titles and years, repeated formats.
    artists = list(gen.artists())
    assert any(a.keys() == {"id"} for a in artists) and "sha256" in artists[0]
    assert any("title" not in r.props for r in releases)
    assert any("year" not in r.props for r in releases)
    assert any(r.props["formats"] == [] for r in releases)
    assert any(len(r.props["formats"]) == 2 for r in releases)
    # Deterministic.
    again = Generator(shape).releases()
    assert [next(again).props for _ in range(50)] == [r.props for r in releases[:50]]


def test_ids_are_a_permutation_and_the_month_adds_two_percent() -> None:
    ids = Ids(1_000)
    assert sorted(int(ids.id(r)) for r in range(1_000)) == list(range(1, 1_001))
    shape = Shape.at(0.0005)
    month = Month.after(shape)
    assert len(month.releases) == round(shape.releases * 0.02)
    assert month.releases.start == shape.releases + 1
    kinds = [kind for kind, _ in month_builders(Generator(shape), month)]
    assert kinds == sorted(kinds, key=["artists", "labels", "masters", "releases"].index)


def test_bench_discogs_runs_a_month_at_tiny_scale(
    pg_server: services.PostgresService, graph_server: services.GraphService, tmp_path: Path
) -> None:
    if graph_server.admin_url is not None:
        pytest.fail("bench.discogs runs on Neo4j; this session's graph server is ArcadeDB")
    out = tmp_path / "discogs.json"
    user, password = quote(graph_server.user, safe=""), quote(graph_server.password, safe="")
    env = {
        **os.environ,
        services.POSTGRES_URL_ENV: pg_server.url(),
        services.NEO4J_URL_ENV: f"bolt://{user}:{password}@{graph_server.host}:{graph_server.port}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.discogs", "--scale", "tiny", "--json", str(out),
         "--router-workers", "4", "--deliveries", "2", "--delivery-nice", "10"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1 = a target missed
    result = json.loads(out.read_text())
    names = {f["name"] for f in result["figures"]}
    assert {"feed rows visible after the latch", "webhooks delivered after the latch",
            "peak RSS: router", "month's new releases found (releases unit)",
            "hub artist unit cost / median unit",
            "hub label unit cost / median unit"} <= names  # fmt: skip
    run = result["run"]
    # The router found exactly the month's releases, and the hubs' watchers heard of them.
    assert run["units"]["releases_unit"]["new_releases"] == run["expected_new_releases"]
    assert run["feed_rows"] > 0 and run["webhooks"] > 0
    assert run["seeded"]["hub_artist_watchers"] == 30
    assert run["events"].get("artist:new_releases", 0) > 0
    # The placement asked for: four router workers, two delivery replicas at a lower priority.
    assert run["placement"] == {"router_workers": 4, "deliveries": 2, "delivery_nice": 10}
    assert set(run["usage"]) == {"router", "delivery", "delivery-2"}


def test_python_m_bench_runs_a_month_at_the_discogs_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import __main__ as harness
    from bench import discogs

    seen: list[list[str]] = []
    monkeypatch.setattr(discogs, "main", lambda argv: seen.append(argv) or 0)
    assert harness.main(["--scale", "discogs", "--json", "out.json"]) == 0
    assert harness.main(["--scale", "discogs-small"]) == 0
    assert seen == [["--scale", "discogs", "--json", "out.json"], ["--scale", "discogs-small"]]
    with pytest.raises(SystemExit):  # --only names stage figures, not a month's
        harness.main(["--scale", "discogs", "--only", "diff"])
