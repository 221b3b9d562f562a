"""The resolution service's FastAPI app."""

from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response

from opsledger import problems
from opsledger.bus.consumer import ConsumerSpec
from opsledger.clock import Clock
from opsledger.service import create_app
from opsledger.timers import TimerHandler
from resolution import demo
from resolution.api import router
from resolution.domain import Refused
from resolution.runtime import ResolutionRuntime
from resolution.settings import Settings
from resolution.subscriptions import router as subscriptions_router

MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # shipped inside the package


async def refused(request: Request, exc: Exception) -> Response:
    """409 as problem details, with two extension members (RFC 9457 §3.2): the incident's current
    `state` and what the transition is `missing`."""
    assert isinstance(exc, Refused)
    errors = [problems.FieldError("path.incident_id", f"the incident is {exc.status}: {exc.refusal.reason}")]
    body = problems.body(409, str(exc), errors)
    body.update(state=str(exc.status), action=str(exc.action), missing=list(exc.refusal.missing))
    return problems.ProblemResponse(body, status_code=409)


def build(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()

    def consumers(runtime: ResolutionRuntime) -> Sequence[ConsumerSpec]:
        return [runtime.resolution.consumer()]

    def timers(runtime: ResolutionRuntime) -> dict[str, TimerHandler]:
        return runtime.resolution.timer_handlers()

    async def on_ready(runtime: ResolutionRuntime) -> None:
        if runtime.settings.demo:
            await demo.seed(runtime)

    async def on_stop(runtime: ResolutionRuntime) -> None:
        await runtime.resolution.webhooks.close()

    app = create_app(
        settings,
        title="OpsLedger resolution",
        migrations_dir=MIGRATIONS,
        routers=[router, subscriptions_router],
        consumers=consumers,
        timers=timers,
        on_ready=on_ready,
        on_stop=on_stop,
        clock=clock,
        runtime_type=ResolutionRuntime,
    )
    app.add_exception_handler(Refused, refused)
    return app
