"""The assignment service's FastAPI app."""

from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from assignment.api import router
from assignment.runtime import AssignmentRuntime
from assignment.settings import Settings
from opsledger.bus.consumer import ConsumerSpec
from opsledger.clock import Clock
from opsledger.service import create_app
from opsledger.timers import TimerHandler

MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # shipped inside the package


def build(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()

    def consumers(runtime: AssignmentRuntime) -> Sequence[ConsumerSpec]:
        return [runtime.assignment.consumer()]

    def timers(runtime: AssignmentRuntime) -> dict[str, TimerHandler]:
        return runtime.assignment.timer_handlers()

    async def on_ready(runtime: AssignmentRuntime) -> None:
        if runtime.settings.demo:
            async with runtime.unit_of_work() as uow:
                await runtime.assignment.seed_demo(uow)

    return create_app(
        settings,
        title="OpsLedger assignment",
        migrations_dir=MIGRATIONS,
        routers=[router],
        consumers=consumers,
        timers=timers,
        on_ready=on_ready,
        clock=clock,
        runtime_type=AssignmentRuntime,
    )
