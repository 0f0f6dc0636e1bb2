"""Wall time and JAX compile time of one block of code.

A :class:`Stopwatch` listens to JAX's compile events only while it runs and only for the thread
that started it, so the compilation it reports is the part of its own wall time that JAX spent
tracing, lowering and compiling: never more than the wall time, and never another thread's.
"""

from __future__ import annotations

import threading
import time

import jax

_COMPILE_EVENTS = "/jax/core/compile/"


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (wall) and ``sw.compile_seconds``."""

    def __init__(self):
        self.seconds = 0.0
        self.compile_seconds = 0.0
        self._thread = None

    def _listen(self, event: str, duration: float, **_) -> None:
        if event.startswith(_COMPILE_EVENTS) and threading.get_ident() == self._thread:
            self.compile_seconds += duration

    def __enter__(self) -> Stopwatch:
        self._thread = threading.get_ident()
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        jax.monitoring.unregister_event_duration_listener(self._listen)
        # nested compile events can overlap; the compile share never exceeds the wall time
        self.compile_seconds = min(self.compile_seconds, self.seconds)
