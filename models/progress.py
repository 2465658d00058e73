"""Progress of long engine runs: a share done (0..1) and what is being done, for job rows, logs and CLI bars.

Engines take an optional ``progress(fraction, message)`` callback. `Meter` turns counted work (frames read,
segments done) into calls to it that never go backwards, come at most every `step` of the share (a job stores
them at most every 0.5 s), and reach 1.0 only when the run is done.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

Progress = Callable[[float, str], None]


class Meter:
    """Counts work towards an expected `total` and reports the share done to `progress` (None: counts silently).

    The total is an estimate: the share is held below 1.0 until `done()`.
    """

    def __init__(self, progress: Progress | None, total: float, message: str = "", step: float = 0.01) -> None:
        self.progress = progress
        self.total = max(float(total), 1.0)
        self.message = message
        self.step = step
        self.count = 0.0
        self.reported = -1.0
        self._lock = threading.Lock()  # engines count from several threads (two propagation sweeps)

    def add(self, amount: float = 1.0) -> None:
        with self._lock:
            self.count += amount
            fraction = min(self.count / self.total, 0.99)
            if fraction - self.reported < self.step:
                return
            self.reported = fraction
        self._report(fraction, self.message)

    def reach(self, count: float, message: str | None = None) -> None:
        """At least `count` done (e.g. the end of a segment that stopped early); a new message, if given."""
        if message is not None:
            self.message = message
        with self._lock:
            self.count = max(self.count, float(count))
        self.add(0.0)

    def done(self, message: str = "done") -> None:
        with self._lock:
            self.reported = 1.0
        self._report(1.0, message)

    def _report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(round(fraction, 4), message)


def scaled(progress: Progress | None, start: float, stop: float) -> Progress | None:
    """A callback for one part of a larger run: its 0..1 becomes start..stop of `progress`."""
    if progress is None:
        return None

    def report(fraction: float, message: str = "") -> None:
        progress(start + (stop - start) * min(max(fraction, 0.0), 1.0), message)

    return report
