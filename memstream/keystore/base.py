"""Per-subject keys: the one place where erasing a subject can actually destroy something.

Events are immutable, so an erased subject's texts cannot be deleted from the log; instead
every sensitive field is sealed under a key that belongs to the subject (crypto-shredding),
and erasure destroys that key. The key store must therefore live as long as, and be shared
exactly like, the log it serves: beside the file log in its directory, and in a compacted
`<topic>.subject-keys` topic beside a Kafka log. It is never under `projections/`, which is
derived data that a rebuild deletes.

Every key has its own id and every sealed event names the id it was sealed with, so two
writers that race to create a subject's first key can both succeed: each event opens with the
key it names, and later writers converge on the oldest live key. Destroying a subject
destroys every key it ever had; a key created afterwards is a new key for new data.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache

from memstream.scope import ENTITY_FIELDS, Scope

KEY_BYTES = 32  # AES-256-GCM


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose data a memory is: the most personal entity of its scope, within its project.

    A memory with a user_id belongs to that user (even when an agent or run is also named);
    one without belongs to its agent, else its app, else its run.
    """

    org_id: str
    project_id: str
    field: str  # user_id | agent_id | app_id | run_id
    value: str

    def __post_init__(self) -> None:
        if self.field not in ENTITY_FIELDS:
            raise ValueError(f"subject field must be one of {ENTITY_FIELDS}, not {self.field!r}")

    @classmethod
    def of_scope(cls, scope: Scope) -> Subject | None:
        for name in ENTITY_FIELDS:
            value = getattr(scope, name)
            if value is not None:
                return cls(scope.org_id, scope.project_id, name, value)
        return None

    def canonical(self) -> str:
        return json.dumps(
            [self.org_id, self.project_id, self.field, self.value],
            separators=(",", ":"),
            ensure_ascii=False,
        )

    def digest(self) -> str:
        """A fixed-length name for files and topic keys (sha256 hex of the canonical form)."""
        return _digest(self)


@lru_cache(maxsize=65_536)
def _digest(subject: Subject) -> str:  # asked for every event written and read
    return hashlib.sha256(subject.canonical().encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SubjectKey:
    key_id: str  # a uuid4, unique per key ever created
    subject: Subject
    secret: bytes  # KEY_BYTES random bytes from os.urandom
    created_at: int  # ms UTC

    def __repr__(self) -> str:  # never print a secret by accident
        return f"SubjectKey({self.key_id!r}, {self.subject!r})"


class KeyStore(ABC):
    """Create, find and destroy subject keys; shared by every process using one log."""

    name: str = "keys"

    @abstractmethod
    async def start(self) -> None:
        """Open files / connect and load what exists. Idempotent."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def key_for(self, subject: Subject) -> SubjectKey:
        """The subject's current key, created if it has none (writers call this per event).

        Never returns a key destroyed before this call began in this process, nor one another
        process destroyed more than the store's staleness bound earlier (the file store: none;
        Kafka: `max_staleness_s`, 1 s by default). A write racing an erasure of its subject
        inside that bound may be sealed under the dead key and so be erased with the rest,
        as if it had happened just before the erasure. Cheap when cached.
        """

    @abstractmethod
    async def refresh(self) -> None:
        """Make `lookup` see every key created or destroyed (by any process) before this call."""

    @abstractmethod
    def lookup(self, subject: Subject, key_id: str) -> SubjectKey | None:
        """The key `key_id` of `subject` as of the last `refresh`, or None if it was destroyed
        (or never existed). Synchronous and thread-safe: the projector calls it from its apply
        thread. An I/O failure raises (LogUnavailableError) rather than answering None, since
        None makes the projector treat the data as erased for good."""

    @abstractmethod
    async def destroy(self, subject: Subject) -> list[str]:
        """Destroy every key the subject has (idempotent); return the ids destroyed."""

    def erasure_marker(self) -> str | None:
        """A cheap value that changes whenever any process destroys a key of this store, so
        a clean scan for interrupted erasures stays valid while it is the same (see
        projector/erasure.py, ScanStamp); None when the store cannot tell cheaply (then
        every start scans the whole projection)."""
        return None

    async def __aenter__(self) -> KeyStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
