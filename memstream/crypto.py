"""Sealing event payloads under a subject's key, and keyed hashes of their texts.

AES-256-GCM with a random 96-bit nonce per message; the event id and key id are bound in as
associated data, so a sealed payload cannot be moved onto another event or key unnoticed.
Texts are hashed with HMAC-SHA256 under the same key (the projector's duplicate check needs
a hash): a plain sha256 of a short text is a dictionary lookup away from the text itself, and
once the key is destroyed the HMAC says nothing at all.
"""

from __future__ import annotations

import hmac
import os
from functools import lru_cache

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


def keyed_hash(key: SubjectKey, text: str) -> str:
    # hmac.digest is OpenSSL's one-shot HMAC: the same value as hmac.new(...).hexdigest()
    # without building an HMAC object per call (~1 us less, twice per add)
    return hmac.digest(key.secret, text.encode("utf-8"), "sha256").hex()


def forget(secret: bytes) -> None:
    """Drop a destroyed key's cipher from the cache (the bytes object itself is immutable;
    what we can do is stop holding it)."""
    _cipher.cache_clear()
    del secret
