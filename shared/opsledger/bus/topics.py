"""Topic provisioning: every stream is kept forever (the log is the source of truth)."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from opsledger.events.registry import Stream
from opsledger.settings import ServiceSettings

log = logging.getLogger(__name__)

FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


def all_topics(settings: ServiceSettings) -> list[str]:
    return [settings.topic(s) for s in Stream] + [settings.deadletter_topic]


async def ensure_topics(settings: ServiceSettings, topics: list[str] | None = None) -> None:
    """Create the topics that are missing (idempotent, safe with several replicas racing)."""
    wanted = topics if topics is not None else all_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        new = [
            NewTopic(t, settings.topic_partitions, settings.topic_replication, topic_configs=FOREVER) for t in missing
        ]
        try:
            response = await admin.create_topics(new)
        except TopicAlreadyExistsError:
            return
        # create_topics reports per-topic errors in the response instead of raising.
        for name, code, *_ in getattr(response, "topic_errors", []):
            if code not in (0, TopicAlreadyExistsError.errno):
                raise RuntimeError(f"creating topic {name} failed with Kafka error code {code}")
        log.info("created topics %s", missing)
    finally:
        await admin.close()
