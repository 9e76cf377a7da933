"""memstream: an event-sourced memory ledger for AI agents that speaks the Mem0 Platform API."""

from typing import Any

__all__ = ["AsyncClient", "Client"]


def __getattr__(name: str) -> Any:
    # The HTTP clients are imported on first use, so `import memstream` stays light.
    if name in ("Client", "AsyncClient"):
        from memstream import client

        return getattr(client, name)
    raise AttributeError(f"module 'memstream' has no attribute {name!r}")
