"""Arrow schemas of the LanceDB projections. Everything here is derived from the log.

Times are int64 milliseconds since the epoch (UTC): exact, cheap to compare in a Lance
predicate and trivially converted in DuckDB views. `expiration_date` is an ISO date string
'YYYY-MM-DD' (as on the Mem0 platform), which sorts and compares correctly as text.
"""

from __future__ import annotations

import pyarrow as pa

ENTITY_COLUMNS = ("user_id", "agent_id", "app_id", "run_id")


def memories_schema(dim: int) -> pa.Schema:
    """One row per live memory."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("org_id", pa.string(), nullable=False),
            pa.field("project_id", pa.string(), nullable=False),
            pa.field("user_id", pa.string()),
            pa.field("agent_id", pa.string()),
            pa.field("app_id", pa.string()),
            pa.field("run_id", pa.string()),
            pa.field("text", pa.string(), nullable=False),
            pa.field("hash", pa.string(), nullable=False),
            pa.field("metadata", pa.string(), nullable=False),  # JSON object text
            pa.field("categories", pa.list_(pa.string()), nullable=False),
            pa.field("created_at", pa.int64(), nullable=False),  # ms UTC
            pa.field("updated_at", pa.int64(), nullable=False),  # ms UTC
            pa.field("expiration_date", pa.string()),  # 'YYYY-MM-DD' or null
            pa.field("immutable", pa.bool_(), nullable=False),
            pa.field("expired_at", pa.int64()),  # ms UTC of MemoryExpired, or null
            pa.field("partition", pa.int32(), nullable=False),  # log partition of the scope
            pa.field("created_offset", pa.int64(), nullable=False),  # position of MemoryAdded
            pa.field("last_offset", pa.int64(), nullable=False),  # last applied event
            pa.field("key_id", pa.string()),  # subject key the text was sealed under, if any
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


EVENTS_SCHEMA = pa.schema(
    [
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("occurred_at", pa.int64(), nullable=False),  # ms UTC
        pa.field("org_id", pa.string(), nullable=False),
        pa.field("project_id", pa.string(), nullable=False),
        pa.field("memory_id", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("agent_id", pa.string()),
        pa.field("app_id", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("actor_key_id", pa.string()),
        pa.field("actor_source", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("text", pa.string()),  # new text (add/update)
        pa.field("old_text", pa.string()),  # text before an update/delete (from the projection)
        pa.field("metadata", pa.string()),  # new metadata JSON
        pa.field("old_metadata", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("reason", pa.string()),  # MemoryDeleted reason
        pa.field("outcome", pa.string(), nullable=False),  # ADD | UPDATE | DELETE | NONE | NOOP
        pa.field("resolved_memory_id", pa.string()),  # for NONE: the memory that already holds it
        pa.field("payload", pa.string(), nullable=False),  # the whole event as JSON, for audits
        pa.field("key_id", pa.string()),  # subject key the event was sealed under, if any
    ]
)

POLICIES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # org_id + '/' + project_id + '/' + policy_id
        pa.field("org_id", pa.string(), nullable=False),
        pa.field("project_id", pa.string(), nullable=False),
        pa.field("policy_id", pa.string(), nullable=False),
        pa.field("field", pa.string(), nullable=False),
        pa.field("pattern", pa.string(), nullable=False),
        pa.field("ttl_seconds", pa.int64(), nullable=False),
        pa.field("created_at", pa.int64(), nullable=False),
    ]
)

PROJECTION_VERSION = 3  # 3: key_id columns (crypto-shredding)
"""Bump when a table's schema or an event's meaning changes: older generations are then
rebuilt from the log on start (they are derived data, so nothing is lost)."""

EMBEDDINGS_COLUMNS = ("key", "model", "vector")  # key = model + ':' + sha256(text)
