"""A FIFO counting gate, shared by the webhook sender's slots and the endpoint pools."""

from __future__ import annotations

import asyncio
import collections
import contextlib


class Gate:
    """A FIFO counting gate: like `asyncio.Semaphore`, but O(1) with many waiters.

    (`Semaphore.locked()` scans every waiter on Python 3.11, which made each
    send cost O(rows queued) when hundreds of rows wait for one endpoint.) A
    freed slot is handed straight to the oldest waiter.
    """

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def busy(self) -> bool:
        """No slot is free right now."""
        return self.free == 0

    async def enter(self, deadline: float | None = None) -> None:
        """Take a slot, waiting in line if none is free; TimeoutError at `deadline` (loop time)."""
        if self.free > 0 and not self._waiters:
            self.free -= 1  # the common case: no future, no timer
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout_at(deadline):
                await fut
        except BaseException:  # cancelled, or the deadline passed
            if fut.done() and not fut.cancelled():
                self.leave()  # the slot was handed over just as we gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def leave(self) -> None:
        """Give the slot back (to the oldest waiter, if any)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1
