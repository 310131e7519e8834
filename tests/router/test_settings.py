"""The router's settings (NOTIFIER_ROUTER_*)."""

from __future__ import annotations

import pytest

from notifier import config

BASE = {"POSTGRES_PASSWORD": "pw", "NEO4J_PASSWORD": "pw"}


def test_router_defaults() -> None:
    s = config.load(BASE, "router")
    assert (s.router_unit_size, s.router_lease_seconds) == (500, 120.0)
    assert (s.router_prefetch, s.router_poll_seconds) == (16, 1.0)
    assert s.router_workers == 2


def test_router_values_are_read() -> None:
    s = config.load(
        {
            **BASE,
            "NOTIFIER_ROUTER_UNIT_SIZE": "7",
            "NOTIFIER_ROUTER_LEASE_SECONDS": "2.5",
            "NOTIFIER_ROUTER_PREFETCH": "3",
            "NOTIFIER_ROUTER_POLL_SECONDS": "0.05",
            "NOTIFIER_ROUTER_WORKERS": "4",
        },
        "router",
    )
    assert (s.router_unit_size, s.router_lease_seconds) == (7, 2.5)
    assert (s.router_prefetch, s.router_poll_seconds) == (3, 0.05)
    assert s.router_workers == 4


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NOTIFIER_ROUTER_UNIT_SIZE", "0"),
        ("NOTIFIER_ROUTER_UNIT_SIZE", "1.5"),
        ("NOTIFIER_ROUTER_UNIT_SIZE", "lots"),
        ("NOTIFIER_ROUTER_LEASE_SECONDS", "nan"),
        ("NOTIFIER_ROUTER_LEASE_SECONDS", "0"),
        ("NOTIFIER_ROUTER_PREFETCH", "-1"),
        ("NOTIFIER_ROUTER_POLL_SECONDS", "inf"),
        ("NOTIFIER_ROUTER_WORKERS", "0"),
        ("NOTIFIER_ROUTER_WORKERS", "65"),
    ],
)
def test_router_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load({**BASE, name: value}, "router")
    assert str(err.value).startswith(f"{name}: ")
    assert "\n" not in str(err.value)
