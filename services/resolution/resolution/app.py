"""The resolution service's FastAPI app."""

from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from opsledger.bus.consumer import ConsumerSpec
from opsledger.clock import Clock
from opsledger.events import Stream
from opsledger.service import Runtime, create_app
from opsledger.timers import TimerHandler
from resolution.handlers import stage
from resolution.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # shipped inside the package


def build(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()

    def consumers(runtime: Runtime[Settings]) -> Sequence[ConsumerSpec]:
        topics = [settings.topic(Stream.INCIDENTS)]
        return [stage.consumer("incidents", topics, runtime.outbox, runtime.clock)]

    def timers(runtime: Runtime[Settings]) -> dict[str, TimerHandler]:
        return stage.timer_handlers(runtime.outbox, runtime.clock)

    return create_app(
        settings,
        title="OpsLedger resolution",
        migrations_dir=MIGRATIONS,
        consumers=consumers,
        timers=timers,
        clock=clock,
    )
