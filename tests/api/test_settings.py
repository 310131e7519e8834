"""The API's settings (NOTIFIER_API_*)."""

from __future__ import annotations

import pytest

from notifier import config

JWT_KEY = "jwt-key-of-thirty-two-bytes-or-more"
BASE = {"POSTGRES_PASSWORD": "pw", "NEO4J_PASSWORD": "pw", "JWT_SECRET_KEY": JWT_KEY}


def test_defaults() -> None:
    s = config.load(BASE, role="api")
    assert (s.api_rate_limit_per_minute, s.api_rate_limit_burst, s.api_pool_size) == (600, 120, 10)


def test_values_and_errors() -> None:
    env = BASE | {"NOTIFIER_API_RATE_LIMIT": "0", "NOTIFIER_API_RATE_BURST": "5",
                  "NOTIFIER_API_POOL_SIZE": "3"}  # fmt: skip
    s = config.load(env, role="api")
    assert (s.api_rate_limit_per_minute, s.api_rate_limit_burst, s.api_pool_size) == (0, 5, 3)
    for name, bad in [("NOTIFIER_API_RATE_LIMIT", "-1"), ("NOTIFIER_API_RATE_BURST", "0"),
                      ("NOTIFIER_API_POOL_SIZE", "many")]:  # fmt: skip
        with pytest.raises(config.ConfigError, match=name):
            config.load(BASE | {name: bad}, role="api")
