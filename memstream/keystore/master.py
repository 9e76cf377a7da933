"""The master key (key-encryption key) that wraps subject keys stored in Kafka.

Subject keys are what crypto-shredding destroys, so whoever can read them can read every
sealed text. On Kafka they live in a topic that every client of the cluster may be able to
read; there they are stored only wrapped (envelope encryption): AES-256-GCM under a master
key that never enters Kafka, with the record key bound in as associated data (a wrapped key
cannot be moved onto another record unnoticed). The subject's ids are inside the wrapped
payload too, so the topic shows neither key material nor whose key it is.

Where the master key comes from (first that is set):
1. `MEMSTREAM_MASTER_KEY`: base64 (or 64 hex digits) of 32 random bytes;
2. `MEMSTREAM_MASTER_KEY_FILE`: a file holding the same (must exist);
3. `<data_dir>/master.key`, generated on first use with mode 0600.
Every server sharing a topic needs the same master key (set 1 or 2 for more than one).
Rotation: put the new key in 1 or 2, the old one(s) in `MEMSTREAM_MASTER_KEY_PREVIOUS`
(comma-separated), run `memstream keys rotate-master` (rewraps every live key under the new
one; compaction then drops the old records), then remove the old key. See docs/erasure.md.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from memstream.errors import KeyStoreError

log = logging.getLogger(__name__)

MASTER_KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT = "memstream-wrapped-key/1"
KEY_FILE = "master.key"


def kek_id(key: bytes) -> str:
    """A public name for a master key (so a wrong key is named, not just 'cannot decrypt')."""
    return hashlib.sha256(b"memstream-kek\x00" + key).hexdigest()[:16]


def parse_master_key(text: str, source: str) -> bytes:
    text = text.strip()
    candidates: list[bytes] = []
    if len(text) == 2 * MASTER_KEY_BYTES:
        with contextlib.suppress(ValueError):
            candidates.append(bytes.fromhex(text))
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(decode(text + "=" * (-len(text) % 4)))
    for key in candidates:
        if len(key) == MASTER_KEY_BYTES:
            return key
    raise KeyStoreError(
        f"{source}: not a master key (expected base64 or hex of {MASTER_KEY_BYTES} random "
        "bytes, e.g. from `python -c 'import os,base64; print(base64.b64encode(os.urandom(32))"
        ".decode())'`)"
    )


def new_master_key_text() -> str:
    return base64.b64encode(os.urandom(MASTER_KEY_BYTES)).decode("ascii")


@dataclass(frozen=True)
class MasterKeys:
    """The current master key (wraps) and previous ones (unwrap only, during a rotation)."""

    current: bytes
    previous: tuple[bytes, ...] = ()
    source: str = "a master key"

    def __repr__(self) -> str:  # never print a key by accident
        return f"MasterKeys(current={self.current_id}, previous={len(self.previous)})"

    @property
    def current_id(self) -> str:
        return kek_id(self.current)

    def _by_id(self, wanted: str) -> bytes | None:
        for key in (self.current, *self.previous):
            if kek_id(key) == wanted:
                return key
        return None

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.current).encrypt(nonce, plaintext, aad)
        return json.dumps(
            {
                "format": FORMAT,
                "kek": self.current_id,
                "nonce": base64.b64encode(nonce).decode("ascii"),
                "wrapped": base64.b64encode(sealed).decode("ascii"),
            },
            separators=(",", ":"),
        ).encode("ascii")

    @staticmethod
    def wrapped_with(value: bytes) -> str | None:
        """The master key id a stored value was wrapped with; None for a legacy plain key."""
        try:
            obj = json.loads(value)
        except ValueError:
            return None
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            return str(obj.get("kek"))
        return None

    def unwrap(self, value: bytes, aad: bytes, where: str) -> bytes:
        """The plaintext of a wrapped value; KeyStoreError (loud) if no configured master key
        opens it: a wrong key must stop the service, not make every sealed text look erased."""
        try:
            obj = json.loads(value)
            wanted = str(obj["kek"])
            nonce = base64.b64decode(obj["nonce"], validate=True)
            sealed = base64.b64decode(obj["wrapped"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(f"{where}: malformed wrapped key ({exc})") from exc
        key = self._by_id(wanted)
        if key is None:
            raise KeyStoreError(
                f"{where}: wrapped under master key {wanted}, but the configured master key is "
                f"{self.current_id} ({self.source}) and no MEMSTREAM_MASTER_KEY_PREVIOUS "
                "matches: configure the master key these keys were written with"
            )
        try:
            return AESGCM(key).decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise KeyStoreError(
                f"{where}: the wrapped key does not open under master key {wanted} "
                "(tampered with, or moved from another record)"
            ) from None


def load_master_keys(
    *,
    key: str | None,
    key_file: Path | None,
    data_dir: Path,
    previous: str | None = None,
) -> MasterKeys:
    """The master keys from settings (see the module docstring for the order)."""
    old = tuple(
        parse_master_key(part, f"MEMSTREAM_MASTER_KEY_PREVIOUS[{i}]")
        for i, part in enumerate((previous or "").split(","))
        if part.strip()
    )
    if key:
        return MasterKeys(
            parse_master_key(key, "MEMSTREAM_MASTER_KEY"), old, "MEMSTREAM_MASTER_KEY"
        )
    if key_file is not None:
        try:
            text = Path(key_file).read_text()
        except OSError as exc:
            raise KeyStoreError(f"MEMSTREAM_MASTER_KEY_FILE {key_file}: {exc}") from exc
        return MasterKeys(parse_master_key(text, str(key_file)), old, str(key_file))
    path = Path(data_dir) / KEY_FILE
    return MasterKeys(parse_master_key(_generated(path), str(path)), old, str(path))


def _generated(path: Path) -> str:
    """The key in `path`, created (mode 0600, never overwritten) when missing. Written to a
    temporary file first and linked into place, so a racing process never reads it half
    written and two racing creators agree on one key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        text = new_master_key_text()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (text + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            log.warning(
                "generated the master key %s (id %s): back it up; without it the subject "
                "keys in Kafka cannot be read",
                path,
                kek_id(parse_master_key(text, str(path))),
            )
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o): chmod 600 it", path, mode)
    return path.read_text()
