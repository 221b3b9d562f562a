"""The triage service's FastAPI app."""

from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from opsledger.bus.consumer import ConsumerSpec
from opsledger.clock import Clock
from opsledger.service import create_app
from triage.api import router
from triage.runtime import TriageRuntime
from triage.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # shipped inside the package


def build(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()

    def consumers(runtime: TriageRuntime) -> Sequence[ConsumerSpec]:
        return [runtime.triage.consumer()]

    async def on_ready(runtime: TriageRuntime) -> None:
        # The defaults become version 1 (and are announced) the first time the service starts.
        async with runtime.unit_of_work() as uow:
            await runtime.triage.seed_defaults(uow)

    return create_app(
        settings,
        title="OpsLedger triage",
        migrations_dir=MIGRATIONS,
        routers=[router],
        consumers=consumers,
        on_ready=on_ready,
        clock=clock,
        runtime_type=TriageRuntime,
    )
