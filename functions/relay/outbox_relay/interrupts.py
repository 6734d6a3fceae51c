"""Ctrl-C for commands that change data: honoured between two statements, never inside one.

A KeyboardInterrupt raised while PyMySQL waits for an answer leaves the server running the
statement (an autocommit DELETE completes after the client is gone), so the operator cannot tell
what happened.  Inside ``Deferred`` the first SIGINT only asks to stop; the command stops at its
next ``checkpoint()`` with everything before it done and nothing after it started.  A second
SIGINT stops at once, as Python would (the statement in flight may or may not complete).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

from .admin_dead import Interrupted


class Deferred:
    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> Deferred:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write("interrupt: stopping after the statement in flight (Ctrl-C again to stop at once)\n")
        sys.stderr.flush()

    def __call__(self) -> None:
        """A checkpoint: stop here if the operator asked to."""
        if self.requested:
            raise Interrupted("interrupted")
