"""Ends a blocked database call at a deadline, whatever the server or the network does.

PyMySQL's read and write timeouts apply to each socket read and write: a server (or a path)
that trickles bytes restarts them, and a call of several packets or statements gets them
afresh for each.  The server-side limits are no bound either: MariaDB's ``max_statement_time``
and MySQL's ``MAX_EXECUTION_TIME`` (SELECT only) are spelt differently, bound the server's work
and not the wire, and cannot cover a handshake or a ping.  So a watchdog thread shuts the
connection's socket down at the deadline: the blocked read returns at once, PyMySQL raises
"Lost connection" (2013), and the store gives up as for any lost connection.  The server rolls
back what the connection had not committed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


class Watchdog:
    """One guarded call at a time (a store is used by one thread at a time); the thread is
    started on first use and sleeps while nothing is guarded."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: tuple[float, Any] | None = None  # (monotonic deadline, connection)
        self._thread: threading.Thread | None = None
        self.fired = 0  # how many calls it cut (tests, logs)

    @contextlib.contextmanager
    def guard(self, conn: Any, until: float | None) -> Iterator[None]:
        """Shut ``conn``'s socket down if the block is still running at ``until`` (monotonic
        seconds; None: no bound).  ``conn`` is read at that moment: TLS replaces the socket."""
        if until is None:
            yield
            return
        with self._cond:
            self._armed = (until, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="outbox-db-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._armed = None

    def _watch(self) -> None:
        with self._cond:
            while True:
                if self._armed is None:
                    self._cond.wait()
                    continue
                until, conn = self._armed
                left = until - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._armed = None
                self.fired += 1
                sock = getattr(conn, "_sock", None)
                if sock is not None:
                    # The plain socket's shutdown: wakes the blocked reader on Linux, and leaves
                    # an SSL socket's state to its own thread (SSLSocket.shutdown would clear it).
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
