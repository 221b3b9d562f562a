"""The one way to build a producer (idempotent, acks=all), and the one way to publish a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from opsledger.bus.topics import MAX_DEAD_LETTER_BYTES, TOPIC_HEADROOM_BYTES
from opsledger.settings import ServiceSettings

# The record header naming the event's type, so a consumer can skip the types it does not want
# without parsing the envelope (the envelope's `event_type` stays the authority).
EVENT_TYPE_HEADER = "event_type"


def make_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.service_name}-producer",
        enable_idempotence=True,
        acks="all",
        # No linger: `send_all` queues a whole batch before the sender task runs, so the batch
        # goes in one request anyway, and a lone event is not held back on every hop.
        linger_ms=0,
        max_batch_size=256 * 1024,
        # Callers size messages for their topic before sending (see topics.py): a message the
        # broker refuses leaves the idempotent producer's sequence for that partition broken.
        max_request_size=MAX_DEAD_LETTER_BYTES + TOPIC_HEADROOM_BYTES,
        request_timeout_ms=30000,
    )


@dataclass(frozen=True)
class Message:
    topic: str
    value: bytes
    key: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


async def send_all(producer: AIOKafkaProducer, messages: Sequence[Message]) -> None:
    """Queue every message, then await the acks together (one round of waiting); raises if any
    was not acknowledged."""
    futures = [await producer.send(m.topic, m.value, key=m.key, headers=list(m.headers) or None) for m in messages]
    await asyncio.gather(*futures)
