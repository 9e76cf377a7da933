"""Sealing event payloads under a subject's key, and keyed hashes of their texts.

AES-256-GCM with a random 96-bit nonce per message; the event id and key id are bound in as
associated data, so a sealed payload cannot be moved onto another event or key unnoticed.
Texts are hashed with HMAC-SHA256 under the same key (the projector's duplicate check needs
a hash): a plain sha256 of a short text is a dictionary lookup away from the text itself, and
once the key is destroyed the HMAC says nothing at all.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from memstream.errors import SchemaError
from memstream.keystore.base import SubjectKey

NONCE_BYTES = 12


@lru_cache(maxsize=4096)
def _cipher(secret: bytes) -> AESGCM:
    return AESGCM(secret)


def _aad(event_id: str, key_id: str) -> bytes:
    return f"memstream/v1|{event_id}|{key_id}".encode()


def seal(key: SubjectKey, event_id: str, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _cipher(key.secret).encrypt(nonce, plaintext, _aad(event_id, key.key_id))


def unseal(key: SubjectKey, event_id: str, blob: bytes) -> bytes:
    """The plaintext; a SchemaError when the blob was tampered with or is not this key's."""
    try:
        return _cipher(key.secret).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(event_id, key.key_id)
        )
    except (InvalidTag, ValueError) as exc:
        raise SchemaError(
            f"event {event_id}: the sealed payload does not open with key {key.key_id} "
            "(corrupt or tampered with)"
        ) from exc


_BLOCK = 64  # SHA-256's block size


@lru_cache(maxsize=4096)
def _hmac_states(secret: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256's inner and outer hash states for `secret` (RFC 2104: the key padded to
    a block, XORed with 0x36 / 0x5C, hashed), computed once per key."""
    if len(secret) > _BLOCK:
        secret = hashlib.sha256(secret).digest()
    padded = secret.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(padded.translate(_IPAD))
    outer = hashlib.sha256(padded.translate(_OPAD))
    return inner, outer


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


def keyed_hash(key: SubjectKey, text: str) -> str:
    """HMAC-SHA256 of the text under the key, hex: `hmac.new(secret, text, sha256)`'s
    value, from the key's cached inner/outer states (two hash copies instead of setting up
    an HMAC per call: ~1 us instead of ~2.3, twice per add)."""
    inner, outer = _hmac_states(key.secret)
    h = inner.copy()
    h.update(text.encode("utf-8"))
    o = outer.copy()
    o.update(h.digest())
    return o.hexdigest()


def forget_secrets() -> None:
    """Drop every cached cipher and HMAC state, and with them the key secrets the caches are
    keyed by. Called once a subject's keys are destroyed (crypto-shredding), so this process
    keeps no copy of a destroyed secret in a cache. Erasures are rare; the caches refill on
    the next seal or hash."""
    _cipher.cache_clear()
    _hmac_states.cache_clear()


def cached_secrets() -> int:
    """How many key secrets the caches hold (for tests and diagnostics)."""
    return _cipher.cache_info().currsize + _hmac_states.cache_info().currsize
