"""Services of the platform run as real processes, the way `make up` runs them: one database
each, the session's Kafka with this test's topics, people's tokens verified with the test key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from opsledger.testing import ServiceProcess, TestInfra
from opsledger.testing.tokens import TestTokens


@contextlib.asynccontextmanager
async def running_services(
    names: tuple[str, ...],
    *,
    infra: TestInfra,
    make_database: Callable[..., Any],
    topic_prefix: str,
    log_dir: Path,
    tokens: TestTokens,
    integration_key: str,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[dict[str, ServiceProcess]]:
    """Start `names` (intake gets `integration_key` as its bootstrap key), wait until each is
    ready, and stop them all afterwards."""
    common = {
        "OPSLEDGER_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "OPSLEDGER_TOPIC_PREFIX": topic_prefix,
        "OPSLEDGER_TOPIC_PARTITIONS": "3",
        **tokens.env(),
        "OPSLEDGER_RELAY_POLL_SECONDS": "0.05",
        **(extra_env or {}),
    }
    processes = {}
    for name in names:
        env = {**common, "OPSLEDGER_DATABASE_URL": await make_database()}
        if name == "intake":
            env["OPSLEDGER_BOOTSTRAP_INTEGRATION_KEY"] = integration_key
        processes[name] = ServiceProcess(name, env, log_dir=log_dir)
    try:
        for process in processes.values():
            process.start()
        for process in processes.values():
            await process.wait_ready(timeout=90)
        yield processes
    finally:
        for process in processes.values():
            process.stop()
