"""The aiokafka plumbing shared by the Kafka event log and the Kafka subject-key store.

Both talk to the same cluster with the same rules: every network step bounded by a timeout,
every failure a `LogUnavailableError` that names the bootstrap servers, the topic and the
cause, and closing never masking the error that made us close. Kept apart from both so that
neither imports the other for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from memstream.errors import LogUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Network errors that are not KafkaError subclasses.
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, asyncio.TimeoutError)


def kafka_error(
    what: str, bootstrap_servers: str, topic: str, action: str, exc: BaseException | str
) -> LogUnavailableError:
    """`what` cannot `action`: the error names the bootstrap servers, the topic and the cause."""
    if isinstance(exc, asyncio.TimeoutError):
        cause = "timed out"
    elif isinstance(exc, BaseException):
        cause = str(exc) or type(exc).__name__
        if type(exc).__name__ not in cause:
            cause = f"{type(exc).__name__}: {cause}"
    else:
        cause = exc
    return LogUnavailableError(
        f"{what}: cannot {action} (bootstrap {bootstrap_servers}, topic {topic!r}): {cause}"
    )


async def bounded(
    aw: Awaitable[T], timeout_s: float, error: Callable[[BaseException], LogUnavailableError]
) -> T:
    """Await `aw` within `timeout_s`; any Kafka/network failure -> `error(exc)`."""
    try:
        return await asyncio.wait_for(aw, timeout_s)
    except LogUnavailableError:
        raise
    except _NETWORK_ERRORS as exc:
        raise error(exc) from exc


def admin_client(
    bootstrap_servers: str, client_id: str, request_timeout_s: float
) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        request_timeout_ms=int(request_timeout_s * 1000),
    )


async def ensure_topic(
    bootstrap_servers: str,
    new: NewTopic,
    *,
    client_id: str,
    connect_timeout_s: float,
    request_timeout_s: float,
    error: Callable[[str, BaseException | str], LogUnavailableError],
) -> bool:
    """Create topic `new` unless it exists (a racing creator is fine); True if created here.

    Not bounded by a timeout itself: wrap it in `bounded`. `error(action, cause)` builds the
    LogUnavailableError for a broker that refuses to create it.
    """
    admin = admin_client(bootstrap_servers, client_id, request_timeout_s)
    try:
        await asyncio.wait_for(admin.start(), connect_timeout_s)
        if new.name in await admin.list_topics():
            return False
        try:
            resp = await admin.create_topics([new])
        except TopicAlreadyExistsError:
            return False
        for topic_error in resp.topic_errors:
            code = topic_error[1]
            if code == 0:
                continue
            if code == TopicAlreadyExistsError.errno:  # a racing creator won
                return False
            message = topic_error[2] if len(topic_error) > 2 else ""
            raise error(f"create topic (error code {code})", message or f"code {code}")
        return True
    finally:
        await quietly(admin.close())


async def quietly(aw: Awaitable[object], timeout_s: float = 10.0) -> None:
    try:
        await asyncio.wait_for(aw, timeout_s)
    except Exception as exc:  # closing must not mask the error that made us close
        log.debug("ignored while closing: %r", exc)


async def stop_producer(producer: AIOKafkaProducer, timeout_s: float) -> None:
    """Stop a producer without hanging when the broker is gone.

    aiokafka's `stop()` first waits for every pending batch to be delivered, and with no
    broker its sender retries forever. Those batches belong to appends that have already
    failed (raised LogUnavailableError), so after `timeout_s` the sender task is cancelled,
    which lets `stop()` go on to close the connections.
    """
    stopping = asyncio.ensure_future(producer.stop())
    done, _ = await asyncio.wait({stopping}, timeout=timeout_s)
    if not done:
        sender = getattr(getattr(producer, "_sender", None), "sender_task", None)
        if sender is not None and not sender.done():
            log.warning(
                "Kafka producer could not flush within %.0fs; dropping its queue", timeout_s
            )
            sender.cancel()
    await quietly(stopping, timeout_s)


def consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
