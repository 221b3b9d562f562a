"""Helpers for tests against the real Kafka and PostgreSQL that `make test` starts."""

from opsledger.testing.helpers import (
    ServiceProcess,
    TestInfra,
    eventually,
    read_topic,
    running_app,
)
from opsledger.testing.tokens import TestTokens, session_tokens

__all__ = ["ServiceProcess", "TestInfra", "TestTokens", "eventually", "read_topic", "running_app", "session_tokens"]
