"""Per-address rate limits on the calls a client makes before it holds an identity.

Sign-in: ``AuthService``'s ``GetLoginUrl``, ``HandleCallback`` and ``RefreshToken``
answer anonymous callers. An audit sent 10,200 ``GetLoginUrl`` calls in 85 s from one
address: each stored a pending sign-in, the oldest were evicted to stay under the cap
(``services/oidc.py``), and a user who had just been to the provider was told to start
again. Guessing codes and refresh tokens was just as unthrottled.

Each client address (an IPv6 client: its /64) gets a token bucket: ``burst`` calls at once,
then ``per_minute`` a minute; past it the call is answered 429 with a Connect
``resource_exhausted`` error and ``Retry-After``, before it reaches the service. The address
is the one uvicorn gives (``FORWARDED_ALLOW_IPS`` decides whether a proxy's
``X-Forwarded-For`` is believed).

Worker registration: every ``WorkerService.Register`` stores a worker row (up to ~8.5 KB with
its labels and endpoint), kept until the worker is forgotten (7 days by default). An audit
registered 3,000 workers in 17 s from one address with one registration token (~25 MB; at that
rate ~5 GB a day). Register gets its own bucket per address, roomy enough for a fleet behind
one NAT address that restarts at once (``DELIDEV_WORKER_REGISTER_PER_MINUTE``, ``_BURST``).

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

SIGN_IN_PATHS = frozenset(
    f"/delidev.v1.AuthService/{method}"
    for method in ("GetLoginUrl", "HandleCallback", "RefreshToken")
)
REGISTER_PATHS = frozenset({"/delidev.v1.WorkerService/Register"})
# Addresses tracked at once; past it the least recently seen is forgotten (it starts full).
MAX_ADDRESSES = 100_000
# Refusals are logged as a count, at most this often (a flood would write a line per call).
LOG_EVERY_S = 10.0


class AddressRateLimit:
    """ASGI middleware: calls to ``paths`` draw from their client address's bucket.
    ``what`` names them in the refusal ("sign-in calls"), ``setting`` in the log."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: frozenset[str],
        what: str,
        setting: str,
        per_minute: int,
        burst: int,
    ) -> None:
        self.app = app
        self._paths = paths
        self._what = what
        self._setting = setting
        self._rate = per_minute / 60.0  # tokens a second
        self._burst = float(burst)
        self._buckets: TTLCache[str, tuple[float, float]] | None = None
        self._refused = 0
        self._logged_at = 0.0
        if per_minute > 0:
            # An address idle long enough to refill its bucket is as good as a new one.
            self._buckets = TTLCache(maxsize=MAX_ADDRESSES, ttl=burst / self._rate)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._buckets is not None and scope["type"] == "http" and scope["path"] in self._paths:
            client = scope.get("client")
            wait = self.take(_bucket_of(client[0] if client else ""))
            if wait > 0:
                self._count_refusal()
                await self._refuse(send, wait)
                return
        await self.app(scope, receive, send)

    def _count_refusal(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning(
                "refused %d %s: too many from one address (%s)",
                self._refused,
                self._what,
                self._setting,
            )
            self._refused = 0
            self._logged_at = now

    async def _refuse(self, send: Send, wait: float) -> None:
        seconds = max(1, math.ceil(wait))
        await send_error(
            send,
            429,
            "resource_exhausted",
            f"too many {self._what} from your address: try again in {seconds} s",
            [(b"retry-after", str(seconds).encode())],
        )

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
