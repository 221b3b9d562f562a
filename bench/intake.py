"""Benchmark of the intake service under load from wrk (a lean C load generator, so the client
does not eat the core it measures), with two baselines measured in the same run on the same
machine: a FastAPI app that only parses the body and answers (the HTTP ceiling), and one that does
one upsert per request on the same PostgreSQL (bench/support/baseline_apps.py). Intake runs with
one worker process, as `make up` runs it, or --workers; the baselines run one process each.

Prints, for each: alerts/s, p50 and p99 at 1, 8, 32 and 128 connections, and intake's ratio to
each baseline; Alertmanager bodies of 100 alerts; and under overload (128 to 1,024 connections)
intake's accepted and shed (503) answers per second. Every run is bounded in time (--seconds).

With --alerta, Alerta 9.1.0 (the issue's reference: 2 gunicorn sync workers, auth off, a database of its
own on the same PostgreSQL) is measured in the same run with single-alert posts to its POST /alert at
the same connection counts, and intake's ratio to it is printed. Alerta is installed once, with every
version pinned (bench/support/alerta-requirements.txt), into a virtualenv of its own: .local/bench/alerta-venv.

    make bench    (or)    OPSLEDGER_TEST_KAFKA=127.0.0.1:19092 \\
        OPSLEDGER_TEST_POSTGRES=postgresql://opsledger@127.0.0.1:15432 .venv/bin/python bench/intake.py [--alerta]
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
ALERTA = "Alerta 9.1.0 (2 gunicorn workers)"
ALERTA_VENV = HERE.parent / ".local" / "bench" / "alerta-venv"
ALERTA_PINS = HERE / "support" / "alerta-requirements.txt"


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


def wrk(url: str, connections: int, seconds: float, batch: int = 0, body: str = "generic") -> Run:
    threads = 1 if connections < 2 else 2
    env = {**os.environ, "KEY": KEY, "BATCH": str(batch), "FORMAT": body}
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

    body = "generic"  # what alerts.lua posts to it (its FORMAT)
    ready_body: dict[str, object] = {"dedup_key": "ready"}
    ready_status = 202

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
                    answer = await client.post(self.url, json=self.ready_body)
                    if answer.status_code == self.ready_status:
                        return
                except httpx.TransportError:
                    pass
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
        raise RuntimeError(f"baseline on {self.port} never answered")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def ensure_alerta_venv() -> Path:
    """Alerta's virtualenv, built once with the pinned versions (its Flask stack must not mix with ours);
    rebuilt when the pins change, as the copy of the pins is written only after a whole install."""
    stamp = ALERTA_VENV / "installed-requirements.txt"
    if not stamp.exists() or stamp.read_text() != ALERTA_PINS.read_text():
        print(f"installing Alerta 9.1.0 into {ALERTA_VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(ALERTA_VENV)], check=True)
        pip = [str(ALERTA_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(ALERTA_PINS)], check=True)
        stamp.write_text(ALERTA_PINS.read_text())
    return ALERTA_VENV


class Alerta(Baseline):
    """Alerta's server as the issue measured it: 2 gunicorn sync workers on its own database, auth off
    (AUTH_REQUIRED=False, Alerta's default, set to be explicit)."""

    body = "alerta"
    ready_body = {"resource": "ready", "event": "Ready", "environment": "Production", "service": ["bench"]}
    ready_status = 201

    def __init__(self, dsn: str) -> None:
        self.port = free_port()
        command = [
            str(ensure_alerta_venv() / "bin" / "gunicorn"), "--workers", "2", "--worker-class", "sync",
            "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "5", "--log-level", "warning",
            "--preload",  # create_app() creates the schema: once, in the master, not racing in each worker
            "alerta:create_app()",
        ]  # fmt: skip
        env = {**os.environ, "DATABASE_URL": dsn, "AUTH_REQUIRED": "False", "LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen(command, env=env)
        self.url = f"http://127.0.0.1:{self.port}/alert"


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
    parser.add_argument("--alerta", action="store_true", help="also measure Alerta 9.1.0 (installs it once)")
    parser.add_argument("--workers", type=int, default=1, help="intake's worker processes (OPSLEDGER_WORKERS)")
    args = parser.parse_args()
    ensure_wrk()
    if args.alerta:
        ensure_alerta_venv()  # before anything starts: a failed install leaves nothing to clean up
    infra = TestInfra.from_env()
    db = infra.unique("bench_intake_")
    baseline_db = infra.unique("bench_baseline_")
    alerta_db = infra.unique("bench_alerta_")
    env = {
        "OPSLEDGER_DATABASE_URL": await infra.create_database(db),
        "OPSLEDGER_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "OPSLEDGER_TOPIC_PREFIX": infra.unique("bench"),
        "OPSLEDGER_BOOTSTRAP_INTEGRATION_KEY": KEY,
        "OPSLEDGER_LOG_LEVEL": "WARNING",
        "OPSLEDGER_WORKERS": str(args.workers),
    }
    await infra.create_database(baseline_db)
    intake = ServiceProcess("intake", env)
    baselines = {
        "ceiling (parse + answer)": Baseline("ceiling", f"{infra.postgres_dsn}/{baseline_db}"),
        "one upsert per request": Baseline("one_upsert", f"{infra.postgres_dsn}/{baseline_db}"),
    }
    others = dict(baselines)  # everything measured next to intake: the baselines, and Alerta if asked
    lines: list[str] = []
    try:
        if args.alerta:
            await infra.create_database(alerta_db)
            others[ALERTA] = Alerta(f"{infra.postgres_dsn}/{alerta_db}")  # psycopg2 takes the plain libpq URL
        intake.start()
        await intake.wait_ready()
        for other in others.values():
            await other.ready()
        url = f"{intake.url}/v1/alerts"
        await asyncio.to_thread(wrk, url, 4, 1.0)  # warm-up: keys cached, pools filled
        rates: dict[tuple[str, int], float] = {}
        for connections in CONNECTIONS:
            for name, target, body in [("intake /v1/alerts", url, "generic")] + [
                (n, o.url, o.body) for n, o in others.items()
            ]:
                run = await asyncio.to_thread(wrk, target, connections, args.seconds, 0, body)
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
        for other in others.values():
            other.stop()
        await infra.drop_database(db)
        await infra.drop_database(baseline_db)
        if args.alerta:
            await infra.drop_database(alerta_db)
    print(f"intake with {args.workers} worker process(es)")
    print(f"{'scenario':<34} {'conn':>5} {'alerts/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'503/s':>8} {'other':>6}")
    print("\n".join(lines))
    print("intake / baseline, alerts/s:")
    for connections in CONNECTIONS:
        mine = rates[("intake /v1/alerts", connections)]
        ratios = ", ".join(f"{name}: {mine / rates[(name, connections)]:.2f}" for name in baselines)
        print(f"  {connections:>4} connections: {ratios}")
    if args.alerta:
        print("intake / Alerta, alerts/s (issue target: >= 25 at 32 connections):")
        for connections in CONNECTIONS:
            ratio = rates[("intake /v1/alerts", connections)] / rates[(ALERTA, connections)]
            print(f"  {connections:>4} connections: {ratio:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
