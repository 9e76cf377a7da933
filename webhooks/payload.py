"""What a webhook receives: one JSON document per event, signed with HMAC-SHA256.

The body keeps the three keys the Mem0 platform sends (`event_details.id`, `.data.memory`,
`.event`) and adds what a ledger knows: the Mem0 event type, the event id (the receiver's
deduplication key: delivery is at least once), when it happened, the scope ids and the
log position. The signature header is computed over the exact body bytes sent:

    X-Memstream-Signature: sha256=<hex HMAC-SHA256(secret, body)>

See docs/webhooks.md for the format and a verification snippet.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from memstream.events import (
    Event,
    MemoryAdded,
    MemoryDeleted,
    MemoryExpired,
    MemoryUpdated,
    SubjectErased,
)
from memstream.log.base import Position
from memstream.models import iso_ms

SIGNATURE_HEADER = "X-Memstream-Signature"
EVENT_ID_HEADER = "X-Memstream-Event-Id"
EVENT_TYPE_HEADER = "X-Memstream-Event-Type"
WEBHOOK_ID_HEADER = "X-Memstream-Webhook-Id"
ATTEMPT_HEADER = "X-Memstream-Delivery-Attempt"

# memstream event -> (Mem0 event type, the platform's `event_details.event`)
MEM0_TYPES: dict[str, tuple[str, str]] = {
    MemoryAdded.event_type: ("memory_add", "ADD"),
    MemoryUpdated.event_type: ("memory_update", "UPDATE"),
    MemoryDeleted.event_type: ("memory_delete", "DELETE"),
    MemoryExpired.event_type: ("memory_expire", "EXPIRE"),
    SubjectErased.event_type: ("subject_erase", "ERASE"),
}


def mem0_type(event: Event) -> str | None:
    """The Mem0 event type a webhook subscribes to for this event, or None (not delivered)."""
    kind = MEM0_TYPES.get(event.event_type)
    return kind[0] if kind else None


def payload(event: Event, position: Position, webhook_id: str) -> dict[str, Any]:
    """The JSON document for `event`. An erased subject's text is never sent (null)."""
    mem0, short = MEM0_TYPES[event.event_type]
    data: dict[str, Any] = {"memory": None}
    if isinstance(event, MemoryAdded | MemoryUpdated) and not event.erased:
        data["memory"] = event.text
        if event.metadata is not None:
            data["metadata"] = json.loads(event.metadata or "{}")
        if event.categories is not None:
            data["categories"] = list(event.categories)
    elif isinstance(event, MemoryDeleted | MemoryExpired):
        data["reason"] = event.reason
    elif isinstance(event, SubjectErased):
        data["subject"] = {event.subject_field: getattr(event.scope, event.subject_field)}
        data["reason"] = event.reason
    scope = event.scope
    return {
        "event_details": {"id": event.memory_id, "data": data, "event": short},
        "event_type": mem0,
        "event_id": event.event_id,
        "occurred_at": iso_ms(event.occurred_at),
        "memory_id": event.memory_id,
        "org_id": scope.org_id,
        "project_id": scope.project_id,
        "user_id": scope.user_id,
        "agent_id": scope.agent_id,
        "app_id": scope.app_id,
        "run_id": scope.run_id,
        "erased": event.erased,
        "position": {"partition": position.partition, "offset": position.offset},
        "webhook_id": webhook_id,
    }


def body_of(document: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON, non-ASCII escaped."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute over the raw body and compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)
