"""The dead-letter topic: a message a consumer cannot apply, or an event too large for its stream,
is parked there with the error and where it came from, never dropped, and the work carries on. The
original bytes are the message value; the error is in the headers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaProducer

from opsledger import metrics
from opsledger.bus.producer import Message, send_all
from opsledger.bus.topics import MAX_DEAD_LETTER_BYTES
from opsledger.settings import ServiceSettings

# What a dead letter keeps of a message too large even for the dead-letter topic.
STUB_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class DeadLetter:
    value: bytes
    key: bytes
    error: str
    origin: Mapping[str, str] = field(default_factory=dict)  # header name -> value, e.g. source.offset


def _sized(letter: DeadLetter) -> DeadLetter:
    """The letter, or a stand-in with its size and head if the dead-letter topic cannot take it."""
    if len(letter.value) <= MAX_DEAD_LETTER_BYTES:
        return letter
    head = letter.value[:STUB_HEAD_BYTES].decode(errors="replace")
    value = orjson.dumps({"truncated": True, "bytes": len(letter.value), "head": head})
    note = f"; at {len(letter.value)} bytes it is too large for the dead-letter topic too: only its head is kept"
    return DeadLetter(value, letter.key, letter.error + note, letter.origin)


def _message(topic: str, letter: DeadLetter) -> Message:
    headers = [("error", letter.error[:4000].encode()), *((k, v.encode()) for k, v in letter.origin.items())]
    return Message(topic, letter.value, letter.key or b"", tuple(headers))


async def send_dead_letters(
    producer: AIOKafkaProducer, settings: ServiceSettings, letters: Sequence[DeadLetter], sender: str
) -> None:
    """Put `letters` on the dead-letter topic and wait for the broker's acks; raises if any could
    not be put there (the caller keeps what it holds and retries)."""
    if not letters:
        return
    await send_all(producer, [_message(settings.deadletter_topic, _sized(letter)) for letter in letters])
    metrics.DEADLETTERED.labels(settings.service_name, sender).inc(len(letters))


def dead_letter_error(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The error recorded on a dead-lettered message (for tools and tests)."""
    return next((v.decode() for k, v in headers if k == "error"), None)
