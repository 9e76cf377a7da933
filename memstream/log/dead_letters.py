"""Whose data a dead-lettered record holds, so that an erasure can remove it.

A poison record (projector/poison.py) is a copy of log bytes the projector could not apply.
It can hold a subject's identifiers in the clear (the message key is the scope: org,
project, user, agent, app and run ids; the Avro envelope carries the same ids) and, when its
bytes are not memstream's sealed encoding (a foreign or broken producer, an event written
before sealing), plaintext. The sink is derived data like a projection, so erasing a subject
removes its records from it (docs/erasure.md).

A record belongs to a subject when its key is memstream's scope key and the subject owns
that scope (the scope's most personal entity, as for every erasure); failing that, when its
value decodes (without keys) to an event whose scope the subject owns. A record attributable
to nobody is removed when the subject's id occurs anywhere in it (key, value, reason,
headers): erasure errs on the side of removing a copy, never of keeping one.
"""

from __future__ import annotations

from memstream.events import decode_event
from memstream.keystore.base import Subject
from memstream.scope import Scope

__all__ = ["belongs_to"]


def _owner(key: bytes, value: bytes) -> Subject | None | bool:
    """The subject owning the record; None when it has a scope but no entity; False when
    neither its key nor its value says whose it is."""
    scope = Scope.from_key(key)
    if scope is None:
        try:
            scope = decode_event(value, None).scope
        except Exception:  # undecodable: that is what poison mostly is
            return False
    return Subject.of_scope(scope)


def belongs_to(subject: Subject, key: bytes, value: bytes, *other: bytes) -> bool:
    """Whether a dead-lettered record (key, value, and e.g. its reason and headers) is to be
    removed when `subject` is erased."""
    owner = _owner(key, value)
    if owner is not False:
        return owner == subject
    needle = subject.value.encode()
    return any(needle in part for part in (key, value, *other))
