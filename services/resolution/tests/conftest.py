"""Fixtures of the resolution service's tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer

from opsledger.bus.topics import all_topics, ensure_topics
from opsledger.settings import ServiceSettings
from opsledger.testing import eventually


async def _topics_ready(settings: ServiceSettings) -> None:
    # A consumer that joins its group while a topic it subscribes to has no partition metadata yet
    # (created a moment ago) is assigned nothing until its next metadata refresh, minutes later;
    # topics created and visible before the service starts keep the tests from waiting on that.
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:

        async def visible() -> bool:
            for topic in all_topics(settings):
                if len(await producer.partitions_for(topic)) != settings.topic_partitions:
                    return False
            return True

        await eventually(visible, timeout=30, what="topics visible with all their partitions")
    finally:
        await producer.stop()


@pytest.fixture
def topics_ready() -> Callable[[ServiceSettings], Awaitable[None]]:
    """`await topics_ready(settings)`: the service's topics exist, with partition metadata, before it starts."""
    return _topics_ready
