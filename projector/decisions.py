"""The decisions (audit rows) of recently applied events, kept in memory so a writer
waiting on its events need not read them back from the events table."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from memstream.keystore.base import Subject
from memstream.projector.apply import scope_of_row

RECENT_DECISIONS = 100_000  # audit rows kept in memory for writers waiting on them


class RecentDecisions:
    """Audit rows by event id, oldest dropped first; written by the apply thread, read on
    the event loop."""

    def __init__(self) -> None:
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._recent_lock = threading.Lock()  # written by the apply thread, read on the loop

    def get(self, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self._recent_lock:
            return {i: row for i in event_ids if (row := self._recent.get(i)) is not None}

    def record(self, audits: list[dict[str, Any]]) -> None:
        with self._recent_lock:
            for row in audits:
                self._recent[row["event_id"]] = row
            while len(self._recent) > RECENT_DECISIONS:
                self._recent.popitem(last=False)

    def forget(self, subject: Subject) -> None:
        with self._recent_lock:
            for event_id in [
                i
                for i, row in self._recent.items()
                if Subject.of_scope(scope_of_row(row)) == subject
            ]:
                del self._recent[event_id]
