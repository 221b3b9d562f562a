"""Settings of the reporting service (environment: OPSLEDGER_*)."""

from opsledger.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "reporting"
    port: int = 8006
    database_url: str = "postgresql+asyncpg://opsledger@127.0.0.1:5432/opsledger_reporting"
    # A read model: the broker gathers up to 100 ms of events into one fetch, so a live batch
    # pays its dozen statements for several events, not one (see ServiceSettings).
    consumer_linger_ms: int = 100
    # Replay speed is a headline figure: bigger batches mean fewer transactions per event.
    consumer_batch_size: int = 2000
    rebuild_switch_poll_seconds: float = 0.5
