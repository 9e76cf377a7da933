"""Per-subject encryption keys for crypto-shredding (see base.py)."""

from memstream.keystore.base import KeyStore, Subject, SubjectKey

__all__ = ["KeyStore", "Subject", "SubjectKey"]
