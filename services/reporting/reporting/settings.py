"""Settings of the reporting service (environment: OPSLEDGER_*)."""

from opsledger.settings import PlanCacheMode, ServiceSettings


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
    # Each statement planned for its own parameters and the tables as they are. Under `auto`,
    # PostgreSQL keeps a generic plan once it looks as cheap as the custom ones, and on a fresh
    # database that happens while the tables are nearly empty: the batch's probes by incident then
    # scanned a whole index of the version, and its ctid lookups the whole table, until an analyze
    # replaced the plan. On a fresh `make up` at 200 alerts/s that cost 160 ms to 1 s a batch.
    db_plan_cache_mode: PlanCacheMode = "force_custom_plan"
