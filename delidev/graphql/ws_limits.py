"""Caps on one server process's GraphQL WebSocket connections and subscriptions.

Written by hand: Strawberry caps only the operations of one connection
(``max_subscriptions_per_connection``), so a client could open as many connections as it
liked, each with that many subscriptions. An audit held 10,000 workspace subscriptions on
one process: every task change was then re-read and executed 10,000 times, and a health
probe waited 7.8 s. Here:

- connections past ``max_connections``, or past ``max_per_address`` from one client address
  (so that one client, signed in or not, cannot take every connection of a process), are
  refused at the handshake (HTTP 503, or close code 1013 "try again later" where the server
  cannot answer a handshake with a status);
- a subscription past ``max_subscriptions`` in the process, or past ``max_per_user`` of
  one user (multi-user mode: one user's clients cannot take every subscription of a
  replica), is answered with an UNAVAILABLE error naming the limit, and the connection
  stays open for the subscriptions it has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class WsLimits:
    max_connections: int
    max_subscriptions: int
    max_per_user: int | None  # None: no per-user cap (single-user mode)
    max_per_address: int | None = None  # connections from one client address
    connections: int = 0
    subscriptions: int = 0
    _per_user: Counter[Hashable] = field(default_factory=Counter)
    _per_address: Counter[str] = field(default_factory=Counter)

    def connect(self, address: str = "") -> str | None:
        """Counts a new connection from ``address`` in; else (not counted) says why not."""
        if self.connections >= self.max_connections:
            return (
                f"this server process holds its limit of {self.max_connections} "
                "WebSocket connections"
            )
        if self.max_per_address is not None and self._per_address[address] >= self.max_per_address:
            return (
                f"your address holds the limit of {self.max_per_address} WebSocket connections "
                "on this server process"
            )
        self.connections += 1
        self._per_address[address] += 1
        return None

    def disconnect(self, address: str = "") -> None:
        self.connections -= 1
        left = self._per_address[address] - 1
        if left > 0:
            self._per_address[address] = left
        else:
            del self._per_address[address]

    def open(self, user: Hashable) -> str | None:
        """Counts a subscription of ``user`` in; else (not counted) says why it is refused."""
        if self.subscriptions >= self.max_subscriptions:
            return (
                f"this server process holds its limit of {self.max_subscriptions} "
                "subscriptions; try again later or on another replica"
            )
        if self.max_per_user is not None and self._per_user[user] >= self.max_per_user:
            return (
                f"you hold the limit of {self.max_per_user} subscriptions on this server "
                "process; end some before you start more"
            )
        self.subscriptions += 1
        self._per_user[user] += 1
        return None

    def close(self, user: Hashable) -> None:
        self.subscriptions -= 1
        left = self._per_user[user] - 1
        if left > 0:
            self._per_user[user] = left
        else:
            del self._per_user[user]
