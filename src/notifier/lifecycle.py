"""Serving small Starlette apps inside a role's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import uvicorn

T = TypeVar("T")


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the role owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signals to the caller."""
        yield


async def until_signalled(run: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run `run(stop)`, with SIGTERM and SIGINT setting `stop` (the roles drain on it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run(stop)
