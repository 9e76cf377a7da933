"""Where one inferred add's time went, phase by phase.

An inferred add is two LLM calls plus memstream's own work (validation, catching up,
retrieval, sealing, appending, waiting for the projection). `Phases` splits the wall time
into named phases as the pipeline passes them, so an operator sees in
`memstream_inference_phase_seconds{phase}` which part grew, and bench/inference.py prints
per-phase medians instead of one opaque figure.
"""

from __future__ import annotations

import time

from memstream import metrics


class Phases:
    """Consecutive phases of one request: `mark(name)` charges the time since the previous
    mark (or since the start) to `name`; a phase marked twice adds up. Their sum is the
    request's wall time. Work done meanwhile in another task (reading the scope while the
    LLM extracts facts) is recorded with `overlap`, apart: it is not on the request's path
    unless a later phase waits for it (`prefetch_wait`)."""

    __slots__ = ("_last", "overlapped", "seconds")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.overlapped: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + (now - self._last)
        self._last = now

    def overlap(self, name: str, seconds: float) -> None:
        """Record `seconds` of work `name` that ran beside the request's own phases."""
        self.overlapped[name] = self.overlapped.get(name, 0.0) + seconds

    def report(self) -> None:
        """Observe every phase in the Prometheus histogram."""
        for name, seconds in (*self.seconds.items(), *self.overlapped.items()):
            metrics.observe_inference_phase(name, seconds)
