"""The REST server: the Mem0 Platform API over the memory ledger (`memstream serve`)."""

from memstream.server.app import create_app, serve

__all__ = ["create_app", "serve"]
