"""Benchmark of the intake service under load from wrk (a lean C load generator, so the client
does not eat the core it measures), with two baselines measured in the same run on the same
machine: a FastAPI app that only parses the body and answers (the HTTP ceiling), and one that does
one upsert per request on the same PostgreSQL (bench/support/baseline_apps.py).

Prints, for each: alerts/s, p50 and p99 at 1, 8, 32 and 128 connections, and intake's ratio to
each baseline; Alertmanager bodies of 100 alerts; and under overload (128 to 1,024 connections)
intake's accepted and shed (503) answers per second. Every run is bounded in time (--seconds).

    make bench    (or)    OPSLEDGER_TEST_KAFKA=127.0.0.1:19092 \\
        OPSLEDGER_TEST_POSTGRES=postgresql://opsledger@127.0.0.1:15432 .venv/bin/python bench/intake.py
wrk is installed from Debian's packages when missing."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from opsledger.testing import ServiceProcess, TestInfra
from opsledger.testing.helpers import free_port

HERE = Path(__file__).resolve().parent
KEY = "benchintake0123456789abcdef01234"
CONNECTIONS = (1, 8, 32, 128)
OVERLOAD = (128, 512, 1024)


@dataclass
class Run:
    ok: int
    shed: int
    other: int
    seconds: float
    p50_ms: float
    p99_ms: float

    def per_second(self, alerts_per_request: int = 1) -> float:
        return self.ok * alerts_per_request / self.seconds


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk from Debian's packages", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def wrk(url: str, connections: int, seconds: float, batch: int = 0) -> Run:
    threads = 1 if connections < 2 else 2
    env = {**os.environ, "KEY": KEY, "BATCH": str(batch)}
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
        "-s", str(HERE / "support" / "alerts.lua"), url,
    ]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    found = re.search(r"RESULT ok=(\d+) shed=(\d+) other=(\d+) seconds=([\d.]+) p50_ms=([\d.]+) p99_ms=([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no result: {out[-500:]}")
    ok, shed, other = (int(found.group(i)) for i in (1, 2, 3))
    return Run(ok, shed, other, *(float(found.group(i)) for i in (4, 5, 6)))


class Baseline:
    """A baseline app served by uvicorn as a process of its own."""

    def __init__(self, app: str, dsn: str) -> None:
        self.port = free_port()
        command = [
            sys.executable, "-m", "uvicorn", f"baseline_apps:{app}", "--app-dir", str(HERE / "support"),
            "--port", str(self.port), "--loop", "uvloop", "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, env={**os.environ, "BASELINE_DSN": dsn})
        self.url = f"http://127.0.0.1:{self.port}/v1/alerts"

    async def ready(self) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    answer = await client.post(self.url, json={"dedup_key": "ready"})
                    if answer.status_code == 202:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"baseline on {self.port} never answered")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def row(name: str, connections: int, run: Run, alerts_per_request: int = 1) -> str:
    rate = run.per_second(alerts_per_request)
    return (
        f"{name:<34} {connections:>5} {rate:>10,.0f} {run.p50_ms:>8.1f} {run.p99_ms:>8.1f}"
        f" {run.shed / run.seconds:>8,.0f} {run.other:>6}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each wrk run")
    parser.add_argument("--batch", type=int, default=100, help="alerts per Alertmanager body")
    args = parser.parse_args()
    ensure_wrk()
    infra = TestInfra.from_env()
    db = infra.unique("bench_intake_")
    baseline_db = infra.unique("bench_baseline_")
    env = {
        "OPSLEDGER_DATABASE_URL": await infra.create_database(db),
        "OPSLEDGER_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "OPSLEDGER_TOPIC_PREFIX": infra.unique("bench"),
        "OPSLEDGER_BOOTSTRAP_INTEGRATION_KEY": KEY,
        "OPSLEDGER_LOG_LEVEL": "WARNING",
    }
    await infra.create_database(baseline_db)
    intake = ServiceProcess("intake", env)
    baselines = {
        "ceiling (parse + answer)": Baseline("ceiling", f"{infra.postgres_dsn}/{baseline_db}"),
        "one upsert per request": Baseline("one_upsert", f"{infra.postgres_dsn}/{baseline_db}"),
    }
    lines: list[str] = []
    try:
        intake.start()
        await intake.wait_ready()
        for baseline in baselines.values():
            await baseline.ready()
        url = f"{intake.url}/v1/alerts"
        await asyncio.to_thread(wrk, url, 4, 1.0)  # warm-up: keys cached, pools filled
        rates: dict[tuple[str, int], float] = {}
        for connections in CONNECTIONS:
            for name, target in [("intake /v1/alerts", url), *((n, b.url) for n, b in baselines.items())]:
                run = await asyncio.to_thread(wrk, target, connections, args.seconds)
                rates[(name, connections)] = run.per_second()
                lines.append(row(name, connections, run))
        for connections in (1, 4):
            run = await asyncio.to_thread(wrk, intake.url, connections, args.seconds, args.batch)
            lines.append(row(f"intake alertmanager x{args.batch}", connections, run, args.batch))
        for connections in OVERLOAD:
            run = await asyncio.to_thread(wrk, url, connections, args.seconds)
            lines.append(row("intake overload", connections, run))
    finally:
        intake.stop()
        for baseline in baselines.values():
            baseline.stop()
        await infra.drop_database(db)
        await infra.drop_database(baseline_db)
    print(f"{'scenario':<34} {'conn':>5} {'alerts/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'503/s':>8} {'other':>6}")
    print("\n".join(lines))
    print("intake / baseline, alerts/s:")
    for connections in CONNECTIONS:
        mine = rates[("intake /v1/alerts", connections)]
        ratios = ", ".join(f"{name}: {mine / rates[(name, connections)]:.2f}" for name in baselines)
        print(f"  {connections:>4} connections: {ratios}")


if __name__ == "__main__":
    asyncio.run(main())
