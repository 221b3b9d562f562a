"""Polling, topic reading, and running services in-process or as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from fastapi import FastAPI

from opsledger.events.envelope import Envelope

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `check` until it returns a truthy value without raising; fail at the deadline with the
    last error or value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = await check()
            if value:
                return value
            last = value
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s{' (' + what + ')' if what else ''}: last was {last!r}")
        await asyncio.sleep(interval)


@dataclass
class TestInfra:
    """The broker and database server of this test session, with per-test names."""

    __test__ = False  # not a test class, despite the name

    kafka_bootstrap: str
    postgres_dsn: str  # plain libpq form: postgresql://user@host:port

    @classmethod
    def from_env(cls) -> TestInfra:
        return cls(
            kafka_bootstrap=os.environ.get("OPSLEDGER_TEST_KAFKA", "127.0.0.1:19092"),
            postgres_dsn=os.environ.get("OPSLEDGER_TEST_POSTGRES", "postgresql://opsledger@127.0.0.1:15432"),
        )

    @staticmethod
    def unique(prefix: str = "t") -> str:
        return f"{prefix}{uuid.uuid4().hex[:12]}"

    async def create_database(self, name: str) -> str:
        """Create an empty database; returns its SQLAlchemy asyncpg URL."""
        conn = await asyncpg.connect(f"{self.postgres_dsn}/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.database_url(name)

    def database_url(self, name: str) -> str:
        return self.postgres_dsn.replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(f"{self.postgres_dsn}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def read_topic(
    bootstrap: str, topic: str, *, until: Callable[[list[ConsumerRecord]], bool] | None = None, timeout: float = 20.0
) -> list[ConsumerRecord]:
    """Every record on `topic` from offset 0 up to its current end (or until `until` holds)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        records: list[ConsumerRecord] = []
        while time.monotonic() < deadline:
            end = await consumer.end_offsets(tps)
            batch = await consumer.getmany(*tps, timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
            caught_up = all([await _position(consumer, tp) >= end[tp] for tp in tps])
            if until is None and caught_up:
                break
            if until is not None and until(records):
                break
        return records
    finally:
        await consumer.stop()


async def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    return int(await consumer.position(tp))


def envelopes(records: list[ConsumerRecord]) -> list[Envelope]:
    return [Envelope.from_bytes(r.value) for r in records]


@contextlib.asynccontextmanager
async def running_app(app: FastAPI, ready_timeout: float = 60.0) -> AsyncIterator[httpx.AsyncClient]:
    """Run a service in this process (lifespan included) until /readyz answers 200; yields an
    HTTP client talking to it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:

            async def ready() -> bool:
                response = await client.get("/readyz")
                return response.status_code == 200

            await eventually(ready, timeout=ready_timeout, interval=0.1, what="service ready")
            yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """A service run as a real process (`python -m <module>`), the way `make up` runs it."""

    def __init__(
        self, module: str, env: Mapping[str, str], port: int | None = None, log_dir: Path | None = None
    ) -> None:
        self.module = module
        self.port = port or free_port()
        self.env = {**os.environ, **env, "OPSLEDGER_PORT": str(self.port), "OPSLEDGER_HOST": "127.0.0.1"}
        self.log_path = (log_dir or Path("/tmp")) / f"{module}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (lives as long as the process)
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=log)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        async with httpx.AsyncClient(base_url=self.url) as client:

            async def ready() -> bool:
                assert self.proc is not None and self.proc.poll() is None, f"{self.module} exited: {self.log_tail()}"
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, timeout=timeout, interval=0.2, what=f"{self.module} ready")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
