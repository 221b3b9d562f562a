"""The service skeleton every OpsLedger service is built on: FastAPI app + lifespan that connects
(with bounded retries), migrates, provisions topics, runs the outbox relay and the consumers, and
serves /healthz, /readyz and /metrics. Shuts down cleanly: the batch in hand finishes first."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import orjson
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsledger import metrics, migrations, problems, retry, uow
from opsledger.bus.consumer import ConsumerSpec, EventConsumer
from opsledger.bus.outbox import Outbox, OutboxRelay
from opsledger.bus.producer import make_producer
from opsledger.bus.reconcile import reconcile_quietly
from opsledger.bus.topics import ensure_topics
from opsledger.clock import Clock
from opsledger.db import make_engine, make_sessionmaker
from opsledger.logs import configure_logging, log_context
from opsledger.settings import ServiceSettings
from opsledger.statistics import keep_statistics
from opsledger.timers import TimerHandler, TimerRunner

log = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


@dataclass
class Runtime(Generic[SettingsT]):
    """Everything a request handler or event handler of a service may need; typed by the
    service's settings (`Runtime[Settings]`). A service that keeps objects of its own for the
    process's lifetime subclasses it (typed attributes, or cached properties) and passes the
    subclass to `create_app(runtime_type=...)`."""

    settings: SettingsT
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    outbox: Outbox
    clock: Clock = field(default_factory=Clock)
    producer: AIOKafkaProducer | None = None
    timers: TimerRunner | None = None  # when the service registered timer handlers
    ready: bool = False
    not_ready_reason: str = "starting"

    def unit_of_work(self) -> contextlib.AbstractAsyncContextManager[uow.UnitOfWork]:
        """One transaction: state, staged events and timers commit together (see opsledger.uow)."""
        return uow.unit_of_work(self.sessionmaker, self.outbox, self.clock)


RuntimeT = TypeVar("RuntimeT", bound=Runtime[Any])


def runtime_of(request: Request) -> Runtime[Any]:
    """FastAPI dependency: the service's runtime."""
    runtime: Runtime[Any] = request.app.state.runtime
    return runtime


async def unit_of_work_of(request: Request) -> AsyncIterator[uow.UnitOfWork]:
    """FastAPI dependency: a unit of work committed when the endpoint returns, before the answer
    is sent (declare it with `scope="function"`, as `UnitOfWorkDep` does)."""
    async with runtime_of(request).unit_of_work() as unit:
        yield unit


RuntimeDep = Annotated[Runtime[Any], Depends(runtime_of)]
UnitOfWorkDep = Annotated[uow.UnitOfWork, Depends(unit_of_work_of, scope="function")]


class BodySizeLimit:
    """Reject bodies over `max_bytes` with 413 before reading them (uvicorn sets no limit)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        message = f"request body is larger than {self.max_bytes} bytes"
        body = orjson.dumps(problems.body(413, message, [problems.FieldError("body", message)]))
        headers = [(b"content-type", problems.MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class CorrelateAndCount:
    """Every log line of a request carries its correlation id (the caller's X-Correlation-ID or
    X-Request-ID when it sent a clean one), the answer echoes it, and the request is counted and
    timed per route. Plain ASGI: Starlette's `@app.middleware("http")` costs a task and a stream
    per request on the hot path."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = (headers.get(b"x-correlation-id") or headers.get(b"x-request-id") or b"").decode("latin-1")
        correlation = given if 0 < len(given) <= 200 and given.isprintable() else uuid.uuid4().hex
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-correlation-id", correlation.encode())],
                }
            await send(message)

        try:
            with log_context(correlation=correlation):
                await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(self.service, scope["method"], route, str(status)).inc()
            metrics.HTTP_LATENCY.labels(self.service, route).observe(time.perf_counter() - started)


def create_app(
    settings: ServiceSettings,
    *,
    title: str,
    migrations_dir: Path,
    routers: Sequence[APIRouter] = (),
    consumers: Callable[[RuntimeT], Sequence[ConsumerSpec]] = lambda runtime: (),
    timers: Callable[[RuntimeT], Mapping[str, TimerHandler]] | None = None,
    on_ready: Callable[[RuntimeT], Awaitable[None]] | None = None,
    on_stop: Callable[[RuntimeT], Awaitable[None]] | None = None,
    max_body_bytes: int = 1024 * 1024,
    clock: Clock | None = None,
    runtime_type: type[RuntimeT] = Runtime,  # type: ignore[assignment]
) -> FastAPI:
    """Build a service. `consumers` and `timers` get the runtime so handlers can close over it;
    `timers` maps a timer kind to its handler (a runner is started when given). `on_stop` runs
    first at shutdown, while the database and the producer are still there."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.service_name, settings.log_level, settings.log_json)
        engine = make_engine(settings)
        runtime = runtime_type(settings, engine, make_sessionmaker(engine), Outbox(settings), clock=clock or Clock())
        app.state.runtime = runtime
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        workers: list[EventConsumer] = []
        boot = asyncio.create_task(
            _boot(runtime, migrations_dir, consumers, timers, on_ready, stop, tasks, workers), name="boot"
        )
        try:
            yield
        finally:
            if on_stop is not None:
                with contextlib.suppress(Exception):
                    await on_stop(runtime)
            stop.set()
            runtime.outbox.wake(always=True)  # the relay checks `stop` when it wakes
            boot.cancel()
            with contextlib.suppress(BaseException):
                await boot
            # Let the loops finish the batch in hand (they check `stop` between batches).
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=15)
                for t in pending:
                    t.cancel()
            for w in workers:
                with contextlib.suppress(Exception):
                    await w.stop()
            if runtime.producer is not None:
                with contextlib.suppress(Exception):
                    await runtime.producer.stop()
            await engine.dispose()
            metrics.process_stopped()
            log.info("%s stopped", settings.service_name)

    app = FastAPI(title=title, lifespan=lifespan)
    problems.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    app.add_middleware(CorrelateAndCount, service=settings.service_name)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok", "service": settings.service_name}

    @app.get("/readyz", tags=["operations"])
    async def readyz(request: Request) -> JSONResponse:
        """Database and Kafka reachable, migrations done, consumers running."""
        runtime = runtime_of(request)
        if not runtime.ready:
            return JSONResponse({"status": "not ready", "reason": runtime.not_ready_reason}, status_code=503)
        try:
            async with runtime.engine.connect() as conn:
                await asyncio.wait_for(conn.execute(sa.text("SELECT 1")), 2)
        except Exception as exc:
            return JSONResponse({"status": "not ready", "reason": f"database: {exc!r}"}, status_code=503)
        assert runtime.producer is not None
        try:
            await asyncio.wait_for(runtime.producer.client.fetch_all_metadata(), 3)
        except Exception as exc:
            return JSONResponse({"status": "not ready", "reason": f"kafka: {exc!r}"}, status_code=503)
        return JSONResponse({"status": "ready", "service": settings.service_name})

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app


async def _boot(
    runtime: RuntimeT,
    migrations_dir: Path,
    consumers: Callable[[RuntimeT], Sequence[ConsumerSpec]],
    timers: Callable[[RuntimeT], Mapping[str, TimerHandler]] | None,
    on_ready: Callable[[RuntimeT], Awaitable[None]] | None,
    stop: asyncio.Event,
    tasks: list[asyncio.Task[None]],
    workers: list[EventConsumer],
) -> None:
    """Bring dependencies up step by step; a step that fails is retried with capped backoff and
    its reason is shown on /readyz and in the log, instead of crashing in a loop."""
    settings = runtime.settings

    async def step(name: str, action: Callable[[], Awaitable[None]]) -> None:
        def show(exc: BaseException) -> None:
            runtime.not_ready_reason = f"{name}: {type(exc).__name__}: {exc}"

        await retry.forever(action, what=name, initial=0.5, maximum=settings.startup_retry_max_seconds, on_failure=show)

    async def check_database() -> None:
        async with runtime.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def migrate() -> None:
        if settings.run_migrations:
            await migrations.upgrade_async(migrations_dir, settings.database_url)

    async def start_producer() -> None:
        producer = make_producer(settings)
        try:
            await producer.start()
        except Exception:
            await producer.stop()
            raise
        runtime.producer = producer

    await step("database", check_database)
    await step("migrations", migrate)
    await step("kafka topics", lambda: ensure_topics(settings))
    await step("kafka producer", start_producer)
    assert runtime.producer is not None
    relay = OutboxRelay(settings, runtime.sessionmaker, runtime.producer, runtime.outbox)

    async def reconcile_then_relay() -> None:
        # Reconciliation may wait for a killed predecessor's relay lease to expire: the service
        # need not wait with it, only the relay does.
        await reconcile_quietly(settings)
        await relay.run(stop)

    tasks.append(asyncio.create_task(reconcile_then_relay(), name="outbox-relay"))
    if settings.statistics_check_seconds > 0:
        statistics = keep_statistics(runtime.engine, stop, settings.statistics_check_seconds)
        tasks.append(asyncio.create_task(statistics, name="table-statistics"))
    timer_handlers = timers(runtime) if timers is not None else {}
    if timer_handlers:
        runtime.timers = TimerRunner(
            settings.service_name,
            runtime.sessionmaker,
            timer_handlers,
            runtime.clock,
            batch_size=settings.timer_batch_size,
            max_idle_seconds=settings.timer_max_idle_seconds,
        )
        tasks.append(asyncio.create_task(runtime.timers.run(stop), name="timer-runner"))
    for spec in consumers(runtime):
        worker = EventConsumer(spec, settings, runtime.sessionmaker, runtime.producer, runtime.outbox)
        await step(f"consumer {spec.name}", worker.start)
        workers.append(worker)
        tasks.append(asyncio.create_task(supervise(worker, stop), name=f"consumer-{spec.name}"))
    if on_ready is not None:
        await step("on_ready", lambda: on_ready(runtime))
    tune_gc()
    runtime.ready = True
    runtime.not_ready_reason = ""
    log.info("%s ready", settings.service_name)


# Python's cyclic GC, by default, runs a young collection every 700 net allocations of containers
# and every tenth of those walks the middle generation too; a batch of events or a burst of
# requests allocates hundreds of thousands (models, rows, envelopes) that die by reference
# counting, not in cycles. And a full collection walks every object the process holds, most of
# them built once at start (FastAPI's routes, pydantic's schemas, SQLAlchemy's tables): tens of
# milliseconds during which no request is answered and no event is handled.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect cycles less often (see GC_THRESHOLDS), and never again scan what start-up built
    (gc.freeze: it lives as long as the process)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def supervise(worker: EventConsumer, stop: asyncio.Event) -> None:
    """Keep a consumer loop running; an unexpected crash is logged and the loop restarted."""
    with contextlib.suppress(Exception):  # raised only once stopping
        await retry.forever(
            lambda: worker.run(stop), what=f"consumer {worker.spec.name}", initial=1.0, maximum=10.0, until=stop
        )
