"""The user CLI's pure parts and its failure paths (the API round trip is in tests/api)."""

from __future__ import annotations

import pytest

from notifier import cli, client
from notifier.devkit.services import free_port


def test_render_table() -> None:
    rows = [{"id": 1, "event": "new_releases", "detail": {"a": 1}}, {"id": 22, "event": None}]
    assert client.render_table(rows, ["id", "event", "detail"]).splitlines() == [
        "ID  EVENT         DETAIL",
        '1   new_releases  {"a":1}',
        "22  -             -",
    ]
    assert client.render_table([], ["id"]) == "(none)"
    long = client.render_table([{"x": "y" * 100}], ["x"]).splitlines()[1]
    assert long.endswith("...") and len(long) == 60


@pytest.mark.parametrize(
    ("detail", "text"),
    [
        ({"new_release_count": 3, "release_ids": ["1"]}, "3 new release(s)"),
        ({"aliases": [{"id": "1", "name": "Trane"}]}, "aliases: Trane"),
        ({"members": [{"id": "9"}]}, "members: 9"),
        ({"threshold": 1000, "previous_count": 990, "release_count": 1004},
         "passed 1000 releases (now 1004)"),
        ({"match_count": 2, "matches": []}, "2 match(es)"),
        ({}, ""),
        ("odd", ""),
    ],
)  # fmt: skip
def test_summarize(detail: object, text: str) -> None:
    assert client.summarize(detail) == text


def test_parse_options() -> None:
    assert client.parse_options(["genre=Jazz", "year_from=1960", "q=a=b"]) == {
        "genre": "Jazz", "year_from": 1960, "q": "a=b",
    }  # fmt: skip
    with pytest.raises(client.ClientError, match="not key=value"):
        client.parse_options(["oops"])


def test_a_token_is_required(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NOTIFIER_TOKEN", raising=False)
    assert cli.main(["feed", "count"]) == 2
    assert "token" in capsys.readouterr().err


def test_an_unreachable_api_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["feed", "count", "--url", url, "--token", "t"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("notifier: cannot reach") and err.count("\n") == 1


def test_bad_option_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["watch", "add", "search", "--option", "x", "--url", url, "--token", "t"]) == 1
    assert "not key=value" in capsys.readouterr().err
