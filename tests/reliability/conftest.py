"""Reliability fixtures: the API fixtures of tests/api, reused as they are."""

from __future__ import annotations

from tests.api.conftest import api, api_env, user
from tests.router.conftest import router_env

__all__ = ["api", "api_env", "router_env", "user"]
