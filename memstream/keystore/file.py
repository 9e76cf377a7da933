"""`FileKeyStore`: subject keys as files beside the embedded file log.

Layout of `directory` (`<data_dir>/log/subject-keys`, see `FileEventLog.subject_keys`):

    .lock                 flock: shared to read or create a key, exclusive to destroy one
    ERASURES              append-only journal, one JSON line per destroy (no secrets):
                          {"subject": <digest>, "key_ids": [...], "at": <ms>}
    <digest>/key          the subject's live key, JSON {key_id, secret (base64), created_at,
                          subject: [org, project, field, value]}, mode 0600

A key is created first-writer-wins: written to a temp file in the subject's directory,
fsynced, then hard-linked to `key` (`os.link` fails if `key` exists; the loser reads the
winner's). So a subject has at most one live key at a time, and every process converges on it.

Destroying appends the journal line first (so other processes drop their cached copy on
their next `refresh`/`key_for`), then overwrites the key file's bytes with zeros, fsyncs,
unlinks it and the subject directory, and fsyncs the parent. Overwriting in place removes the
secret from the disk blocks on ordinary filesystems (ext4, xfs); on copy-on-write filesystems
(btrfs, zfs) or SSDs that remap blocks, old blocks may survive until reused. Either way no
file under the directory holds the secret afterwards.

Caching: keys (and "no key") are cached per subject. `key_for` stats the journal on every
call (one `stat`, no read unless it grew) and drops the cached keys of subjects destroyed
since, so it never returns a key destroyed before the call began. `lookup` reads only the
cache, going to disk on a miss; `refresh` applies the journal and forgets the cached "no key"
answers, so keys created elsewhere are found on the next miss.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from memstream.errors import LogUnavailableError
from memstream.fsutil import fsync_dir
from memstream.keystore.base import KEY_BYTES, KeyStore, Subject, SubjectKey

__all__ = ["FileKeyStore"]

KEY_FILE = "key"
JOURNAL = "ERASURES"
LOCK_FILE = ".lock"
_TMP_PREFIX = "key.tmp."


def encode_key(key: SubjectKey) -> bytes:
    s = key.subject
    return json.dumps(
        {
            "key_id": key.key_id,
            "secret": base64.b64encode(key.secret).decode("ascii"),
            "created_at": key.created_at,
            "subject": [s.org_id, s.project_id, s.field, s.value],
        },
        ensure_ascii=False,
    ).encode()


def decode_key(data: bytes) -> SubjectKey:
    """Parse a stored key (the same JSON in files and in the Kafka topic); ValueError if bad."""
    try:
        obj = json.loads(data)
        secret = base64.b64decode(obj["secret"], validate=True)
        key = SubjectKey(
            key_id=str(obj["key_id"]),
            subject=Subject(*(str(part) for part in obj["subject"])),
            secret=secret,
            created_at=int(obj["created_at"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed subject key: {type(exc).__name__}: {exc}") from exc
    if len(key.secret) != KEY_BYTES:
        raise ValueError(f"malformed subject key: secret is {len(key.secret)} bytes")
    return key


def new_key(subject: Subject) -> SubjectKey:
    return SubjectKey(
        key_id=str(uuid.uuid4()),
        subject=subject,
        secret=os.urandom(KEY_BYTES),
        created_at=int(time.time() * 1000),
    )


class FileKeyStore(KeyStore):
    """Subject keys in `directory`; safe for many processes at once (see the module doc)."""

    name = "file"

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._journal = self.directory / JOURNAL
        self._journal_path = str(self._journal)  # os.stat on a str: no pathlib per write
        self._mutex = threading.Lock()  # guards the cache and the journal position
        self._cache: dict[str, SubjectKey | None] = {}  # digest -> live key, None = none
        self._journal_pos = 0  # bytes of ERASURES applied to the cache
        self._generation = 0  # bumped whenever cached entries are dropped
        self._started = False

    def __repr__(self) -> str:
        return f"FileKeyStore({str(self.directory)!r})"

    def _error(self, action: str, exc: BaseException | str) -> LogUnavailableError:
        return LogUnavailableError(f"subject key store in {self.directory}: cannot {action}: {exc}")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.close(fd)
            size = self._journal.stat().st_size
        except OSError as exc:
            raise self._error("open", exc) from exc
        with self._mutex:
            self._cache.clear()
            self._journal_pos = size  # nothing cached yet: older erasures are already on disk
        self._started = True

    async def close(self) -> None:
        with self._mutex:
            self._cache.clear()
            self._generation += 1
        self._started = False

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        # A fresh open file description per use: flock locks belong to it, so two threads
        # (or two stores in one process) exclude each other like two processes do.
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    # ------------------------------------------------------------------ journal

    def erasure_marker(self) -> str | None:
        """The journal's inode and size: every destroy appends its line before it wipes
        anything, and a journal replaced from outside has another inode."""
        try:
            st = self._journal.stat()
        except FileNotFoundError:
            return "absent"
        except OSError:
            return None
        return f"{st.st_ino}:{st.st_size}"

    def _apply_journal(self) -> None:
        """Drop cached keys of subjects destroyed (by anyone) since the journal was last read."""
        try:
            size = os.stat(self._journal_path).st_size
        except OSError as exc:
            raise self._error("read the erasure journal", exc) from exc
        with self._mutex:
            if size == self._journal_pos:
                return
            if size < self._journal_pos:  # replaced from outside: trust nothing cached
                self._cache.clear()
                self._generation += 1
                self._journal_pos = size
                return
            start = self._journal_pos
        try:
            with open(self._journal, "rb") as f:
                f.seek(start)
                data = f.read(size - start)
        except OSError as exc:
            raise self._error("read the erasure journal", exc) from exc
        complete = data.rfind(b"\n") + 1  # a line still being appended waits for next time
        digests = set()
        for line in data[:complete].splitlines():
            try:
                digests.add(str(json.loads(line)["subject"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a crashed destroy; its subject is gone anyway
        with self._mutex:
            if self._journal_pos == start:
                for digest in digests:
                    self._cache.pop(digest, None)
                self._journal_pos = start + complete
                self._generation += 1

    # ------------------------------------------------------------------ reading

    def _read_sync(self, subject: Subject) -> SubjectKey | None:
        """The subject's key on disk (None if none, or if a destroy was cut short)."""
        path = self.directory / subject.digest() / KEY_FILE
        try:
            with self._locked(exclusive=False):
                data = path.read_bytes()
        except FileNotFoundError:
            if not self.directory.is_dir():  # the store itself is gone: not an erasure
                raise self._error("read keys", "the directory is missing") from None
            return None
        except OSError as exc:
            raise self._error(f"read {path}", exc) from exc
        if not data.strip(b"\0"):
            return None  # zeroed by a destroy that crashed before unlinking: destroyed
        try:
            key = decode_key(data)
        except ValueError as exc:
            raise self._error(f"read {path}", exc) from exc
        if key.subject != subject:
            raise self._error(f"read {path}", "it belongs to another subject")
        return key

    def lookup(self, subject: Subject, key_id: str) -> SubjectKey | None:
        if not self._started:
            raise self._error("look up a key", "the store is not started")
        digest = subject.digest()
        with self._mutex:
            if digest in self._cache:
                key = self._cache[digest]
                return key if key is not None and key.key_id == key_id else None
            seen = self._generation
        key = self._read_sync(subject)
        self._remember(digest, key, seen)
        return key if key is not None and key.key_id == key_id else None

    async def refresh(self) -> None:
        if not self._started:
            await self.start()
        await asyncio.to_thread(self._apply_journal)
        with self._mutex:  # keys created elsewhere since: look again on the next miss
            for digest in [d for d, k in self._cache.items() if k is None]:
                del self._cache[digest]
            self._generation += 1

    # ------------------------------------------------------------------ creating

    async def key_for(self, subject: Subject) -> SubjectKey:
        if not self._started:
            await self.start()
        self._apply_journal()  # a stat; a read only when someone destroyed something
        digest = subject.digest()
        with self._mutex:
            cached = self._cache.get(digest)
            seen = self._generation
        if cached is not None:
            return cached
        key = await asyncio.to_thread(self._get_or_create_sync, subject)
        self._remember(digest, key, seen)
        return key

    def _remember(self, digest: str, key: SubjectKey | None, seen: int) -> None:
        """Cache what was read from disk, unless entries were dropped meanwhile (a destroy or
        a creation may have come after the read: the next miss reads again)."""
        with self._mutex:
            if self._generation == seen:
                self._cache[digest] = key

    def _get_or_create_sync(self, subject: Subject) -> SubjectKey:
        for _ in range(3):
            existing = self._read_sync(subject)
            if existing is not None:
                return existing
            created = self._create_sync(subject)
            if created is not None:
                return created
        raise self._error(f"create a key for {subject}", "its key file keeps being destroyed")

    def _create_sync(self, subject: Subject) -> SubjectKey | None:
        """Create the subject's key, or return the key another writer made first.

        None when a zeroed key file (a destroy cut short by a crash) was in the way; it is
        wiped here, and the caller tries again.
        """
        subject_dir = self.directory / subject.digest()
        path = subject_dir / KEY_FILE
        key = new_key(subject)
        try:
            with self._locked(exclusive=False):  # a destroy cannot run meanwhile
                if not subject_dir.exists():
                    subject_dir.mkdir(mode=0o700, exist_ok=True)
                    fsync_dir(self.directory)
                tmp = subject_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                won = False
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(encode_key(key))
                        f.flush()
                        os.fsync(f.fileno())
                    with contextlib.suppress(FileExistsError):
                        os.link(tmp, path)  # first writer wins
                        won = True
                finally:
                    if won:
                        tmp.unlink()  # `key` is the same inode now: unlink, never wipe
                    else:
                        _wipe(tmp)
                fsync_dir(subject_dir)
                if won:
                    return key
                data = path.read_bytes()
        except OSError as exc:
            raise self._error(f"create a key for {subject}", exc) from exc
        if data.strip(b"\0"):
            try:
                return decode_key(data)
            except ValueError as exc:
                raise self._error(f"read {path}", exc) from exc
        self._destroy_sync(subject)  # finish the interrupted destroy, then try again
        return None

    # ------------------------------------------------------------------ destroying

    async def destroy(self, subject: Subject) -> list[str]:
        if not self._started:
            await self.start()
        ids = await asyncio.to_thread(self._destroy_sync, subject)
        with self._mutex:
            self._cache.pop(subject.digest(), None)
            self._generation += 1
        return ids

    def _destroy_sync(self, subject: Subject) -> list[str]:
        digest = subject.digest()
        subject_dir = self.directory / digest
        path = subject_dir / KEY_FILE
        try:
            with self._locked(exclusive=True):
                if not subject_dir.exists():
                    return []
                ids: list[str] = []
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    data = b""
                if data.strip(b"\0"):
                    with contextlib.suppress(ValueError):  # unreadable: destroy it all the same
                        ids.append(decode_key(data).key_id)
                # Journal first: from here on every process drops its copy on refresh.
                line = json.dumps(
                    {"subject": digest, "key_ids": ids, "at": int(time.time() * 1000)}
                )
                fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode() + b"\n")
                    os.fsync(fd)
                finally:
                    os.close(fd)
                for entry in subject_dir.iterdir():  # the key, and temp files of crashed writers
                    _wipe(entry)
                subject_dir.rmdir()
                fsync_dir(self.directory)
                return ids
        except OSError as exc:
            raise self._error(f"destroy the keys of {subject}", exc) from exc


def _wipe(path: Path) -> None:
    """Overwrite a file's bytes with zeros, fsync, unlink (missing is fine)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        if size:
            os.pwrite(fd, b"\0" * size, 0)
            os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)
