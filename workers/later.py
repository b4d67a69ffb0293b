"""Calls due later in a render node's processes (``LATER``): the "started" notices, an
attempt's entry into the energy ledger, the ledger client's batched briefs."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Later:
    """Calls due later, made by one thread of this process: a thread (``threading.Timer``)
    per attempt cost more than a short chunk takes to render. A forked render slot
    starts its own thread. A call that is no longer wanted returns at once (``StartNotice``
    is settled), so nothing is ever cancelled."""

    def __init__(self) -> None:
        self._forked()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """A new process: no thread yet, no calls (a parent's are not this process's),
        and a lock that no thread of the parent can be holding."""
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._wake = threading.Condition()
        self._order = itertools.count()  # calls due at the same moment keep their order
        self._running = False
        self._until = math.inf  # when the thread wakes by itself

    def call(self, delay: float, function: Callable[[], None]) -> None:
        with self._wake:
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="later", daemon=True).start()
            due = time.monotonic() + delay
            heapq.heappush(self._due, (due, next(self._order), function))
            if due < self._until:  # else the thread wakes in time by itself: no switch
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._until = self._due[0][0] if self._due else math.inf
                    self._wake.wait(self._until - time.monotonic() if self._due else None)
                self._until = -math.inf  # busy: it looks at the heap again before waiting
                _, _, function = heapq.heappop(self._due)
            try:
                function()
            except Exception:
                log.exception("a call due later failed")


LATER = Later()
