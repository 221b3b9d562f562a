"""Intake served by two worker processes (OPSLEDGER_WORKERS=2): every alert
accepted by either worker reaches the log once and promptly (the relay polls only every minute
here: a worker without the relay's lease wakes the one that holds it), /metrics adds up both
workers, and a SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsledger.testing import ServiceProcess, TestInfra, eventually

from .harness import process_env, topic_events
from .samples import generic_alert

pytestmark = pytest.mark.integration
KEY = "workers-test-key-0123456789abcde"
ALERTS = 120


def children_of(pid: int) -> list[int]:
    """The worker processes, and multiprocessing's resource tracker."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def is_worker(pid: int) -> bool:
    return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()


def accepted_in(metrics: str) -> int:
    found = re.findall(r'opsledger_http_requests_total\{[^}]*route="/v1/alerts"[^}]*status="202"[^}]*\} (\S+)', metrics)
    return int(sum(float(v) for v in found))


async def test_two_workers_take_alerts_publish_them_once_and_add_up_their_metrics(
    infra: TestInfra, make_database: Any, topic_prefix: str
) -> None:
    env = process_env(infra, await make_database(), topic_prefix, KEY, workers="2", relay_poll_seconds="60")
    process = ServiceProcess("intake", env)
    process.start()
    children: list[int] = []
    try:
        await process.wait_ready()
        assert process.proc is not None
        children = children_of(process.proc.pid)
        assert len([pid for pid in children if is_worker(pid)]) == 2
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(
            base_url=process.url, headers={"Authorization": f"Bearer {KEY}"}, limits=limits
        ) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/alerts", json=generic_alert(dedup_key=f"w-{i}")) for i in range(ALERTS))
            )
            assert [a.status_code for a in answers] == [202] * ALERTS
            accepted = [a.json()["incident_id"] for a in answers]
            # Each scrape may reach either worker: each must count both.
            for _ in range(6):
                assert accepted_in((await client.get("/metrics")).text) == ALERTS
        events = await topic_events(infra.kafka_bootstrap, f"{topic_prefix}.incidents", at_least=ALERTS)
        process.stop()
        assert process.proc.returncode == 0, process.log_tail()
        # The workers are gone with it; multiprocessing's resource tracker follows on its own.
        await eventually(lambda: _none_alive(children), timeout=10, what="no process outlives the service")
    finally:
        process.kill(signal.SIGKILL)
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    logged = Counter(str(e.incident_id) for e in events if e.event_type == "IncidentLogged")
    assert sorted(logged) == sorted(accepted), "every accepted alert on the log, within the relay's poll"
    assert set(logged.values()) == {1}


async def _none_alive(pids: list[int]) -> bool:
    return not [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
