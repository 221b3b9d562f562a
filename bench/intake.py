"""Benchmark of the intake service: sustained alerts/s and p50/p99 time to 2xx.

Starts intake as a real process (`python -m intake`) against the test infrastructure
(OPSLEDGER_TEST_KAFKA, OPSLEDGER_TEST_POSTGRES) with a fresh database and private topics, then
posts single generic alerts at several concurrencies and Alertmanager bodies of 100 alerts.
Every request is bounded in count and time. Not a test; prints a table.

    OPSLEDGER_TEST_KAFKA=127.0.0.1:19092 OPSLEDGER_TEST_POSTGRES=postgresql://opsledger@127.0.0.1:15432 \
        .venv/bin/python bench/intake.py [--seconds 8] [--max-requests 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx

from opsledger.testing import ServiceProcess, TestInfra

KEY = "bench-integration-key-0123456789"
_seq = itertools.count()


@dataclass
class Figures:
    name: str
    concurrency: int
    requests: int
    alerts: int
    seconds: float
    latencies: list[float]

    def row(self) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        return (
            f"{self.name:<28} {self.concurrency:>5} {self.requests:>8} {self.alerts / self.seconds:>10.0f}"
            f" {p50:>9.1f} {p99:>9.1f}"
        )


def generic(i: int) -> dict[str, Any]:
    return {"title": f"bench alert {i}", "severity": "high", "service": "bench", "labels": {"n": str(i)}}


def alertmanager(i: int, size: int) -> dict[str, Any]:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "opsledger",
        "groupLabels": {},
        "commonLabels": {"job": "bench"},
        "commonAnnotations": {},
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "Bench", "n": f"{i}-{j}", "severity": "warning"},
                "annotations": {"summary": "bench"},
                "startsAt": "2026-03-01T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": f"fp-{i}-{j}",
            }
            for j in range(size)
        ],
    }


async def run(
    client: httpx.AsyncClient, name: str, path: str, make: Any, alerts_per: int, concurrency: int, args: Any
) -> Figures:
    latencies: list[float] = []
    deadline = time.monotonic() + args.seconds
    budget = args.max_requests // alerts_per if alerts_per > 1 else args.max_requests
    issued = itertools.count()

    async def worker() -> None:
        while time.monotonic() < deadline and next(issued) < budget:
            body = make(next(_seq))
            started = time.perf_counter()
            response = await client.post(path, json=body)
            latencies.append(time.perf_counter() - started)
            if response.status_code // 100 != 2:
                raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return Figures(name, concurrency, len(latencies), len(latencies) * alerts_per, elapsed, latencies)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0, help="time bound per scenario")
    parser.add_argument("--max-requests", type=int, default=4000, help="alert bound per scenario")
    parser.add_argument("--batch", type=int, default=100, help="alerts per Alertmanager body")
    args = parser.parse_args()
    infra = TestInfra.from_env()
    db = infra.unique("bench_intake_")
    env = {
        "OPSLEDGER_DATABASE_URL": await infra.create_database(db),
        "OPSLEDGER_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "OPSLEDGER_TOPIC_PREFIX": infra.unique("bench"),
        "OPSLEDGER_BOOTSTRAP_INTEGRATION_KEY": KEY,
        "OPSLEDGER_DB_POOL_SIZE": "20",
        "OPSLEDGER_LOG_LEVEL": "WARNING",
    }
    process = ServiceProcess("intake", env)
    process.start()
    try:
        await process.wait_ready()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=process.url, headers=headers, limits=limits, timeout=30) as client:
            await run(client, "warm-up", "/v1/alerts", generic, 1, 4, argparse.Namespace(seconds=1, max_requests=200))
            results = [
                await run(client, "single alert /v1/alerts", "/v1/alerts", generic, 1, c, args) for c in (1, 8, 32)
            ]
            batch = args.batch
            results += [
                await run(
                    client,
                    f"alertmanager x{batch}",
                    "/v1/integrations/alertmanager",
                    lambda i: alertmanager(i, batch),
                    batch,
                    c,
                    args,
                )
                for c in (1, 4)
            ]
    finally:
        process.stop()
        await infra.drop_database(db)
    print(f"{'scenario':<28} {'conc':>5} {'requests':>8} {'alerts/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
    for figures in results:
        print(figures.row())


if __name__ == "__main__":
    asyncio.run(main())
