"""Kafka bus: topics, producer, transactional outbox + relay, inbox, consumer runner, DLQ."""
