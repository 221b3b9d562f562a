"""Helpers for tests against the real Kafka and PostgreSQL that `make test` starts."""

from opsledger.testing.helpers import (
    ServiceProcess,
    TestInfra,
    eventually,
    read_topic,
    running_app,
)

__all__ = ["ServiceProcess", "TestInfra", "eventually", "read_topic", "running_app"]
