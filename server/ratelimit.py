"""Rate limits of the shopper's order endpoints, per phone and per client address.

The ``limits`` library counts (a moving window, in this process's memory: a restart
forgets the counts, and several server processes each count their own share); the
limits are strings like ``"10/minute;60/hour"`` (``Settings.order_rate_phone``,
``Settings.order_rate_addr``).  Over a limit the route answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import time

from fastapi import HTTPException, Request, status
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

logger = logging.getLogger(__name__)


class RateLimits:
    def __init__(self, per_phone: str, per_addr: str) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self.per_phone: list[RateLimitItem] = parse_many(per_phone)
        self.per_addr: list[RateLimitItem] = parse_many(per_addr)

    def _hit(self, limits: list[RateLimitItem], scope: str, subject: str, what: str) -> None:
        for limit in limits:
            if not self._limiter.hit(limit, scope, subject):
                stats = self._limiter.get_window_stats(limit, scope, subject)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                logger.warning("rate limit %s hit by %s %s", limit, scope, subject[:12])
                raise HTTPException(
                    status.HTTP_429_TOO_MANY_REQUESTS,
                    f"操作太频繁，请 {wait} 秒后再试 / too many requests from this {what} "
                    f"(at most {limit}): try again in {wait} s",
                    headers={"Retry-After": str(wait)})

    def address(self, request: Request) -> None:
        """Count one request of the client's address; 429 over its limit."""
        addr = request.client.host if request.client is not None else "unknown"
        self._hit(self.per_addr, "addr", addr, "address")

    def phone(self, key: str) -> None:
        """Count one request of a shopper (her phone's key); 429 over its limit."""
        self._hit(self.per_phone, "phone", key, "phone number")
