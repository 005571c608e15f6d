"""
Counters that refuse work past a configured limit with 503.
"""

from __future__ import annotations

from typing import Any

from yeti.errors import Unavailable


class InFlight:
    """Counts requests being handled; refuses more than C{limit} (503)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0

    def enter(self) -> None:
        if self.current >= self.limit:
            raise Unavailable("too many requests in flight; retry later")
        self.current += 1

    def leave(self) -> None:
        self.current -= 1


class Connections:
    """
    The open long-lived connections, WebSockets and SSE streams, which count
    together against C{http.maxConnections}.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.websockets: set[Any] = set()
        self.streams: set[Any] = set()

    def check(self) -> None:
        """Refuse (503) a new connection when C{limit} are open."""
        if len(self.websockets) + len(self.streams) >= self.limit:
            raise Unavailable("too many connections; retry later")
