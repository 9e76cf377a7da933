"""Webhooks delivered from the log: registrations are events on their own log, and the
dispatcher is one more consumer of the memory log with its own committed positions.

See docs/webhooks.md. Modules: `registry` (the registrations), `payload` (the JSON and its
signature), `deliveries` (delivery records), `dispatcher` (the consumer), `hub` (all of it
for the service).
"""

from memstream.webhooks.dispatcher import DeliveryPolicy, Dispatcher
from memstream.webhooks.hub import Webhooks
from memstream.webhooks.payload import SIGNATURE_HEADER, sign, verify
from memstream.webhooks.registry import Webhook, WebhookRegistry

__all__ = [
    "SIGNATURE_HEADER",
    "DeliveryPolicy",
    "Dispatcher",
    "Webhook",
    "WebhookRegistry",
    "Webhooks",
    "sign",
    "verify",
]
