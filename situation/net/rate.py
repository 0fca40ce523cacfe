"""One bound on probe packets per second for the whole agent (``--discovery-rate``)."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """A token bucket shared by every active module: at most ``per_second`` packets a second.

    Callers reserve packets before sending them. The bucket may go into debt:
    a caller that overdraws sleeps until its share is repaid, so concurrent
    senders are served in the order they asked, and no await sits between
    reading and updating the bucket (nothing to lock).
    """

    def __init__(self, per_second: float, burst: float | None = None):
        if not per_second > 0:
            raise ValueError("a rate must be a positive number of packets per second")
        self.per_second = float(per_second)
        # A burst of a few milliseconds' worth keeps sends smooth without sleeping per packet.
        self.burst = float(burst) if burst is not None else max(1.0, self.per_second / 100)
        self._tokens = self.burst
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now

    async def acquire(self, packets: int = 1) -> None:
        """Wait until ``packets`` more packets may be sent."""
        self._refill()
        self._tokens -= packets
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.per_second)
