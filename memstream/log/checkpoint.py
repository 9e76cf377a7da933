"""Signed checkpoints of the log's chain heads, and `verify`: the walk that checks them.

A checkpoint says "at time T the log had these heads" (memstream.log.chain.Heads: next
offset and reader-computed head hash per partition), signed with Ed25519. `serve` writes one
periodically, `memstream verify --checkpoint` after a clean walk, and every audit export
carries one. A later walk that reaches a checkpointed offset with a different head proves the
log before it was changed; a log that ends before a checkpointed offset was truncated -- the
one change a hash chain alone cannot show.

The signing key: `MEMSTREAM_CHECKPOINT_KEY` (64 hex characters: the Ed25519 seed; anything
else is hashed into one), else the file `MEMSTREAM_CHECKPOINT_KEY_FILE`, else
`<data dir>/checkpoint.key`, created on first use (mode 0600). Keep the key away from the
data directory for checkpoints that someone able to rewrite the log cannot forge; the public
key (in every checkpoint and in `memstream verify`'s output) is all a third party needs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from memstream.errors import ValidationError
from memstream.fsutil import fsync_dir
from memstream.log.base import EventLog, LogRecord, Offsets
from memstream.log.chain import ChainVerifier, Finding, Heads

log = logging.getLogger(__name__)

CHECKPOINTS_FILE = "checkpoints.jsonl"


def load_signing_key(
    data_dir: Path, secret: str | None = None, key_file: Path | None = None
) -> Ed25519PrivateKey:
    """The checkpoint key from a secret, a key file, or `<data_dir>/checkpoint.key`."""
    if secret:
        text = secret.strip()
        try:
            seed = bytes.fromhex(text) if len(text) == 64 else b""
        except ValueError:
            seed = b""
        return Ed25519PrivateKey.from_private_bytes(seed or hashlib.sha256(text.encode()).digest())
    path = key_file or data_dir / "checkpoint.key"
    if key_file is not None and not path.exists():
        raise ValidationError(f"checkpoint key file {path} does not exist")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        log.warning("created checkpoint signing key %s (keep a copy elsewhere)", path)
    text = path.read_text().strip()
    try:
        seed = bytes.fromhex(text)
    except ValueError as exc:
        raise ValidationError(f"checkpoint key file {path}: not 64 hex characters") from exc
    if len(seed) != 32:
        raise ValidationError(f"checkpoint key file {path}: not 64 hex characters")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_checkpoint(key: Ed25519PrivateKey, identity: str, heads: Heads) -> dict[str, Any]:
    body = {
        "log": identity,
        "heads": heads.to_json(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "public_key": public_hex(key),
    }
    return {**body, "signature": key.sign(_canonical(body)).hex()}


def signature_ok(checkpoint: dict[str, Any], public_key: str) -> bool:
    body = {k: v for k, v in checkpoint.items() if k != "signature"}
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(
            bytes.fromhex(str(checkpoint.get("signature", ""))), _canonical(body)
        )
    except (InvalidSignature, ValueError):
        return False
    return body.get("public_key") == public_key


@dataclass
class CheckpointStore:
    """The checkpoints of one log, one JSON document a line in `<dir>/checkpoints.jsonl`."""

    directory: Path
    key: Ed25519PrivateKey
    identity: str

    @property
    def path(self) -> Path:
        return self.directory / CHECKPOINTS_FILE

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"log": self.identity, "broken": line[:80]})
        return [c for c in out if c.get("log") == self.identity]

    def latest_trusted(self) -> dict[str, Any] | None:
        mine = public_hex(self.key)
        good = [c for c in self.all() if "heads" in c and signature_ok(c, mine)]
        return good[-1] if good else None

    def sign(self, body: dict[str, Any]) -> str:
        """An Ed25519 signature (hex) over the canonical JSON of `body`."""
        return self.key.sign(_canonical(body)).hex()

    def write(self, heads: Heads) -> dict[str, Any]:
        checkpoint = sign_checkpoint(self.key, self.identity, heads)
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(checkpoint, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return checkpoint


async def walk(
    log_: EventLog,
    on_record: Callable[[LogRecord], object],
    start: Offsets | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Offsets:
    """Feed every record from `start` to the log's current end, in offset order per
    partition, to `on_record`; returns the end it read to. Corruption raises (never an end)."""
    end = await log_.end_offsets()
    start = dict(start or {})
    total = sum(max(0, o - start.get(p, 0)) for p, o in end.items())
    done = 0
    reader = await log_.reader(start)
    position = dict(start)
    try:
        stalled = 0
        while any(position.get(p, 0) < o for p, o in end.items()):
            batch = await reader.next_batch(5000, timeout_s=1.0)
            if not batch:
                stalled += 1
                if stalled >= 30:  # bounded: a log that stops answering is an error
                    raise ValidationError(
                        f"the log stopped at {position} before its end {end} (30 s without data)"
                    )
                continue
            stalled = 0
            for record in batch:
                p = record.position.partition
                if record.position.offset >= end.get(p, 0):
                    continue
                on_record(record)
                position[p] = record.position.offset + 1
                done += 1
            if progress is not None:
                progress(done, total)
    finally:
        await reader.close()
    return end


async def advance_heads(log_: EventLog, store: CheckpointStore) -> Heads:
    """The heads at the log's current end, continuing from the latest trusted checkpoint."""
    last = store.latest_trusted()
    heads = Heads.from_json(last["heads"]) if last else Heads()
    await walk(log_, heads.update, {p: o for p, (o, _) in heads.heads.items()})
    return heads


@dataclass
class VerifyReport:
    events: int = 0
    chained: int = 0
    unchained: int = 0
    quarantined: int = 0
    checkpoints_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    public_key: str = ""
    checkpoint: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "events": self.events, "chained": self.chained,
            "unchained": self.unchained, "quarantined": self.quarantined,
            "checkpoints_checked": self.checkpoints_checked,
            "findings": [f.to_dict() for f in self.findings], "notes": self.notes,
            "heads": self.heads, "public_key": self.public_key, "checkpoint": self.checkpoint,
        }  # fmt: skip


async def verify(
    log_: EventLog,
    store: CheckpointStore,
    *,
    write_checkpoint: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Walk the whole log: check every chain link, then every checkpoint's heads."""
    verifier = ChainVerifier()
    mine = public_hex(store.key)
    checkpoints = store.all()
    wanted: dict[tuple[int, int], list[dict[str, Any]]] = {}
    report = VerifyReport(public_key=mine)
    for c in checkpoints:
        if "heads" not in c or not signature_ok(c, mine):
            report.findings.append(Finding("-", "checkpoint", f"a checkpoint of {c.get('created_at', '?')} "
                                           "has a bad signature (forged or altered, or signed with another key)"))  # fmt: skip
            continue
        for p, h in c["heads"].items():
            wanted.setdefault((int(p), int(h["offset"])), []).append(c)
    matched: set[tuple[int, int]] = set()

    def on_record(record: Any) -> None:
        verifier.feed(record)
        p = record.position.partition
        at = (p, record.position.offset + 1)
        for c in wanted.get(at, ()):
            matched.add(at)
            expected = c["heads"][str(p)]["hash"]
            if verifier.heads.heads[p][1].hex() != expected:
                verifier.findings.append(Finding(f"{p}:{at[1] - 1}", "checkpoint",
                    f"the log up to here differs from what the checkpoint of {c['created_at']} "
                    "signed: events before it were altered, inserted or removed"))  # fmt: skip

    end = await walk(log_, on_record, progress=progress)
    verifier.finish()
    for (p, offset), cs in wanted.items():
        if (p, offset) in matched or offset == 0:
            continue
        have = end.get(p, 0)
        for c in cs:
            kind = "truncated" if have < offset else "checkpoint"
            detail = (
                f"the checkpoint of {c['created_at']} recorded {offset} events in partition "
                f"{p}; the log now has {have}"
                if have < offset
                else f"the checkpoint of {c['created_at']} names offset {offset}, which no "
                "event of the log ends at"
            )
            verifier.findings.append(Finding(f"{p}:{min(have, offset)}", kind, detail))
    report.checkpoints_checked = len(checkpoints)
    report.events, report.chained = verifier.events, verifier.chained
    report.unchained, report.quarantined = verifier.unchained, verifier.quarantined
    report.findings = [*report.findings, *verifier.findings]
    report.notes = verifier.notes
    if verifier.unchained:
        report.notes.append(
            f"{verifier.unchained} event(s) carry no chain link: written before memstream "
            "chained its log (not evidence of tampering; they are covered only by checkpoints "
            "written since)"
        )
    report.heads = verifier.heads.to_json()
    if write_checkpoint:
        if report.ok:
            report.checkpoint = store.write(verifier.heads)
        else:
            report.notes.append("no checkpoint written: the log has findings")
    return report
