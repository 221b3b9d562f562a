"""The triage service's FastAPI app."""

from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from opsledger.bus.consumer import ConsumerSpec
from opsledger.clock import Clock
from opsledger.events import Stream
from opsledger.service import Runtime, create_app
from triage.api import router
from triage.handlers import CONSUMED, Triage
from triage.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def build(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()

    def consumers(runtime: Runtime) -> Sequence[ConsumerSpec]:
        triage = Triage(settings, runtime.outbox, runtime.clock)
        runtime.extras["triage"] = triage
        return [
            ConsumerSpec(
                name="incidents",
                topics=[settings.topic(Stream.INCIDENTS)],
                handler=triage.on_event,
                event_types=CONSUMED,
            )
        ]

    async def on_ready(runtime: Runtime) -> None:
        # The defaults become version 1 (and are announced) the first time the service starts.
        triage: Triage = runtime.extras["triage"]
        async with runtime.sessionmaker() as session, session.begin():
            seeded = await triage.seed_defaults(session)
        if seeded:
            runtime.outbox.wake()

    return create_app(
        settings,
        title="OpsLedger triage",
        migrations_dir=MIGRATIONS,
        routers=[router],
        consumers=consumers,
        on_ready=on_ready,
        clock=clock,
    )
