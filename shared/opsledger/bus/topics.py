"""Topic provisioning: every stream is kept forever (the log is the source of truth), and every
topic states the largest message it takes instead of inheriting the broker's default; topics that
already exist are brought to that configuration at start."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from opsledger.events.registry import Stream
from opsledger.settings import ServiceSettings

log = logging.getLogger(__name__)

# The largest encoded event a stream takes; the outbox refuses a bigger one at write time.
MAX_EVENT_BYTES = 1_000_000
# A dead letter carries the original message, which may be the event a stream refused.
MAX_DEAD_LETTER_BYTES = 8 * 1024 * 1024
# Room for the record batch's own framing around the largest message.
TOPIC_HEADROOM_BYTES = 64 * 1024

FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
STREAM_CONFIG = {**FOREVER, "max.message.bytes": str(MAX_EVENT_BYTES + TOPIC_HEADROOM_BYTES)}
DEAD_LETTER_CONFIG = {**FOREVER, "max.message.bytes": str(MAX_DEAD_LETTER_BYTES + TOPIC_HEADROOM_BYTES)}


def all_topics(settings: ServiceSettings) -> list[str]:
    return [settings.topic(s) for s in Stream] + [settings.deadletter_topic]


def topic_config(settings: ServiceSettings, topic: str) -> dict[str, str]:
    return DEAD_LETTER_CONFIG if topic == settings.deadletter_topic else STREAM_CONFIG


async def ensure_topics(settings: ServiceSettings, topics: list[str] | None = None) -> None:
    """Create the topics that are missing and align the configuration of those that exist (a topic
    created by an older release keeps the broker's defaults otherwise). Idempotent, and safe with
    several replicas racing."""
    wanted = topics if topics is not None else all_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            await _create(admin, settings, missing)
        await _align(admin, settings, [t for t in wanted if t in existing])
    finally:
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, settings: ServiceSettings, missing: list[str]) -> None:
    new = [
        NewTopic(t, settings.topic_partitions, settings.topic_replication, topic_configs=topic_config(settings, t))
        for t in missing
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


async def _align(admin: AIOKafkaAdminClient, settings: ServiceSettings, topics: list[str]) -> None:
    if not topics:
        return
    wanted = {t: topic_config(settings, t) for t in topics}
    described = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t, dict.fromkeys(wanted[t])) for t in topics]
    )
    drifted: dict[str, dict[str, str]] = {}
    for response in described:
        for code, message, _type, name, entries in response.resources:
            if code != 0:
                raise RuntimeError(f"describing topic {name} failed with Kafka error code {code}: {message}")
            current = {entry[0]: entry[1] for entry in entries}
            if any(current.get(key) != value for key, value in wanted[name].items()):
                drifted[name] = wanted[name]
    if not drifted:
        return
    # AlterConfigs sets a topic's whole dynamic configuration: ours is all a stream needs.
    altered = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t, c) for t, c in drifted.items()])
    for response in altered:
        for code, message, _type, name in response.resources:
            if code != 0:
                raise RuntimeError(f"configuring topic {name} failed with Kafka error code {code}: {message}")
    log.info("aligned the configuration of topics %s", sorted(drifted))
