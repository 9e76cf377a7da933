"""Adapters that put the ledger where agent frameworks keep memory (optional extras)."""
