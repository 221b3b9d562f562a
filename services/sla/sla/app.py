"""The sla service's FastAPI app."""

from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from opsledger.bus.consumer import ConsumerSpec
from opsledger.clock import Clock
from opsledger.service import create_app
from opsledger.timers import TimerHandler
from sla.api import router
from sla.runtime import SlaRuntime
from sla.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # shipped inside the package


def build(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()

    def consumers(runtime: SlaRuntime) -> Sequence[ConsumerSpec]:
        return [runtime.sla.consumer()]

    def timers(runtime: SlaRuntime) -> dict[str, TimerHandler]:
        return runtime.sla.timer_handlers()

    async def on_ready(runtime: SlaRuntime) -> None:
        # The defaults become version 1 (and are announced) the first time the service starts.
        async with runtime.unit_of_work() as uow:
            await runtime.sla.seed_defaults(uow)

    return create_app(
        settings,
        title="OpsLedger sla",
        migrations_dir=MIGRATIONS,
        routers=[router],
        consumers=consumers,
        timers=timers,
        on_ready=on_ready,
        clock=clock,
        runtime_type=SlaRuntime,
    )
