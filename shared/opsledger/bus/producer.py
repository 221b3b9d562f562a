"""The one way to build a producer: idempotent, acks=all, small linger so sends batch up."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from opsledger.settings import ServiceSettings


def make_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.service_name}-producer",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=30000,
    )
