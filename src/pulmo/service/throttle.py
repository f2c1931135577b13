"""Per-address back-off on failed token checks (only when ``pulmo serve`` runs with a token).

A client address that fails the token check (wrong or missing token) ``max_failures`` times within
``window_s`` seconds is refused with 429 and a ``Retry-After`` header for ``backoff_s`` seconds, whatever
token it sends meanwhile (so guessing gets no faster by hiding among refusals; refused requests do not
count). Every further failure within ``window_s`` after a back-off ends starts a back-off twice as long,
up to ``max_backoff_s``. A correct token once the back-off is over clears the
address; so does staying quiet for ``window_s`` after a back-off. Nothing sleeps: refusals are answered
at once.

The state is in memory (one server process; a restart forgets it) and bounded: at most ``max_clients``
addresses are tracked, the idle ones dropped first. Behind a reverse proxy every client has the proxy's
address unless uvicorn is told to trust its ``X-Forwarded-For`` (``--forwarded-allow-ips``).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable

from pulmo.service.errors import AuthBackoffError


@dataclasses.dataclass
class _Client:
    failures: list[float] = dataclasses.field(default_factory=list)
    strikes: int = 0  # back-offs imposed since the address was last cleared
    blocked_until: float = 0.0
    last: float = 0.0


class AuthThrottle:
    """Count failed token checks per client address and impose growing back-offs.

    Args:
        max_failures: failures within ``window_s`` that start the first back-off.
        window_s: the counting window, seconds; also the quiet time after a back-off that clears an address.
        backoff_s: the first back-off, seconds (then doubled at each further failure).
        max_backoff_s: the longest back-off, seconds.
        max_clients: most addresses tracked at once.
        clock: a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(self, max_failures: int = 5, window_s: float = 60.0, backoff_s: float = 10.0,
                 max_backoff_s: float = 900.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_clients = max_clients
        self.clock = clock
        self._clients: dict[str, _Client] = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Refuse a request from an address in back-off.

        Raises:
            AuthBackoffError: ``client`` is in back-off (``retry_after`` whole seconds remain).
        """
        with self._lock:
            entry = self._clients.get(client)
            now = self.clock()
            if entry is not None and now < entry.blocked_until:
                wait = max(1, math.ceil(entry.blocked_until - now))
                raise AuthBackoffError(f"too many failed authentication attempts from this address; retry in {wait} s",
                                       retry_after=wait)

    def failure(self, client: str) -> float:
        """Record a failed token check; returns the back-off it started, seconds (0 when none)."""
        with self._lock:
            now = self.clock()
            entry = self._clients.get(client)
            if entry is None:
                self._make_room(now)
                entry = self._clients[client] = _Client()
            if entry.strikes and now >= entry.blocked_until + self.window_s:
                entry.strikes = 0  # quiet for a window after its back-off: a fresh start
            entry.failures = [t for t in entry.failures if now - t < self.window_s]
            entry.failures.append(now)
            entry.last = now
            if not entry.strikes and len(entry.failures) < self.max_failures:
                return 0.0
            delay = min(self.max_backoff_s, self.backoff_s * 2.0 ** min(entry.strikes, 60))
            entry.strikes += 1
            entry.blocked_until = now + delay
            entry.failures.clear()
            return delay

    def success(self, client: str) -> None:
        """A correct token from ``client``: forget its failures."""
        with self._lock:
            self._clients.pop(client, None)

    def tracked(self) -> int:
        """Number of addresses tracked."""
        with self._lock:
            return len(self._clients)

    def _make_room(self, now: float) -> None:
        if len(self._clients) < self.max_clients:
            return
        idle = [c for c, e in self._clients.items()
                if now >= e.blocked_until + self.window_s and now - e.last >= self.window_s]
        for c in idle:
            del self._clients[c]
        if len(self._clients) >= self.max_clients:  # all recent: drop the longest quiet
            for c, _ in sorted(self._clients.items(), key=lambda item: item[1].last)[: len(self._clients) // 10 + 1]:
                del self._clients[c]
