"""`NOTIFIER_TEST_GRAPH` picks the local graph server (services.graph's third step)."""

from __future__ import annotations

import pytest

from notifier.devkit import services

CHOICES = [(None, "neo4j"), ("", "neo4j"), ("neo4j", "neo4j"), ("ArcadeDB", "arcadedb")]


@pytest.mark.parametrize(("value", "expected"), CHOICES)
def test_the_choice_defaults_to_neo4j(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str
) -> None:
    if value is None:
        monkeypatch.delenv(services.GRAPH_CHOICE_ENV, raising=False)
    else:
        monkeypatch.setenv(services.GRAPH_CHOICE_ENV, value)
    assert services.local_graph_choice() == expected


def test_an_unknown_choice_stops_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(services.GRAPH_CHOICE_ENV, "memgraph")
    with pytest.raises(services.ServiceUnavailable, match="NOTIFIER_TEST_GRAPH='memgraph'"):
        services.local_graph_choice()
