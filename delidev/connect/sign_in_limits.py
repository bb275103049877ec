"""A per-address rate limit on the sign-in calls anyone may make without a token.

``AuthService``'s ``GetLoginUrl``, ``HandleCallback`` and ``RefreshToken`` answer anonymous
callers. An audit sent 10,200 ``GetLoginUrl`` calls in 85 s from one address: each stored a
pending sign-in, the oldest were evicted to stay under the cap (``services/oidc.py``), and a
user who had just been to the provider was told to start again. Guessing codes and refresh
tokens was just as unthrottled. Here each client address (an IPv6 client: its /64) gets a
token bucket: ``burst`` calls at once, then ``per_minute`` a minute; past it the call is
answered 429 with a Connect ``resource_exhausted`` error and ``Retry-After``, before it
reaches the service. The address is the one uvicorn gives (``FORWARDED_ALLOW_IPS`` decides
whether a proxy's ``X-Forwarded-For`` is believed).

Written by hand on cachetools' ``TTLCache`` (bounded, expires idle addresses on the way):
the ``limits`` package's in-memory storage walks every key from a timer thread every 10 ms,
which under a flood from many addresses costs more than the flood.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import time

from cachetools import TTLCache
from starlette.types import ASGIApp, Receive, Scope, Send

from delidev.connect.refusals import send_error

log = logging.getLogger(__name__)

LIMITED_PATHS = frozenset(
    f"/delidev.v1.AuthService/{method}"
    for method in ("GetLoginUrl", "HandleCallback", "RefreshToken")
)
# Addresses tracked at once; past it the least recently seen is forgotten (it starts full).
MAX_ADDRESSES = 100_000
# Refusals are logged as a count, at most this often (a flood would write a line per call).
LOG_EVERY_S = 10.0


class SignInRateLimit:
    def __init__(self, app: ASGIApp, *, per_minute: int, burst: int) -> None:
        self.app = app
        self._rate = per_minute / 60.0  # tokens a second
        self._burst = float(burst)
        self._buckets: TTLCache[str, tuple[float, float]] | None = None
        self._refused = 0
        self._logged_at = 0.0
        if per_minute > 0:
            # An address idle long enough to refill its bucket is as good as a new one.
            self._buckets = TTLCache(maxsize=MAX_ADDRESSES, ttl=burst / self._rate)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._buckets is not None and scope["type"] == "http" and scope["path"] in LIMITED_PATHS:
            client = scope.get("client")
            wait = self.take(_bucket_of(client[0] if client else ""))
            if wait > 0:
                self._count_refusal()
                await _refuse(send, wait)
                return
        await self.app(scope, receive, send)

    def _count_refusal(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning(
                "refused %d sign-in calls: too many from one address (DELIDEV_SIGN_IN_PER_MINUTE)",
                self._refused,
            )
            self._refused = 0
            self._logged_at = now

    def take(self, address: str) -> float:
        """Takes a call from ``address``'s bucket: 0 when it may go on, else the seconds until
        it may."""
        assert self._buckets is not None
        now = time.monotonic()
        tokens, last = self._buckets.get(address, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            return (1.0 - tokens) / self._rate
        self._buckets[address] = (tokens - 1.0, now)
        return 0.0


def _bucket_of(address: str) -> str:
    """The bucket an address draws from: an IPv6 address's /64 (one host usually holds a
    whole /64, and would otherwise get a fresh bucket per address), else the address."""
    if ":" in address:
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return address


async def _refuse(send: Send, wait: float) -> None:
    seconds = max(1, math.ceil(wait))
    await send_error(
        send,
        429,
        "resource_exhausted",
        f"too many sign-in calls from your address: try again in {seconds} s",
        [(b"retry-after", str(seconds).encode())],
    )
