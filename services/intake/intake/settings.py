"""Settings of the intake service (environment: OPSLEDGER_*)."""

from pydantic import Field

from opsledger.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "intake"
    port: int = 8001
    database_url: str = "postgresql+asyncpg://opsledger@127.0.0.1:5432/opsledger_intake"
    # Upserted at start as the integration "demo" (make up seeds a demo key this way).
    bootstrap_integration_key: str | None = None
    # Flapping: more than `flap_max_transitions` firing<->resolved changes within
    # `flap_window_minutes` marks an alert flapping; it then stops opening new incidents.
    flap_max_transitions: int = Field(default=6, ge=1)
    flap_window_minutes: float = Field(default=30.0, gt=0)
    # An incident resolved downstream may be reopened this long after its resolution: a trigger of
    # its key within the window goes to it (the resolution stage reopens it) instead of a new one.
    # The same name and default as the resolution stage's setting, so one variable sets both.
    reopen_window_seconds: float = Field(default=7 * 86400, gt=0)
    # Intake consumes only the resolution stage's closing events and skips the rest of the stream
    # (six events an alert in the pipeline bench): fetched as they came, each cost a fetch.
    # Lingering takes them in batches; what the closing events change (the reopen window, a closed
    # key opening anew) then takes effect up to this much later. At 50 alerts/s (fresh `make up`,
    # two pairs): intake 13 % of a core against 17-19, Kafka 16-17 against 19-20; at 200 alerts/s
    # within noise.
    consumer_linger_ms: int = Field(default=100, ge=0, le=1000)
    # Integration keys are looked up once per this many seconds per process (a disabled key is
    # refused at once by the replica that disabled it, by the others within this time).
    integration_cache_seconds: float = Field(default=5.0, ge=0)
    # Load shedding: alert requests wait for group commit in a queue of `max_waiting`, each up to
    # `max_wait_seconds`; reports and key look-ups take one of `max_in_flight` database slots
    # (default: the pool and its overflow, less four for the relay, consumer and /readyz), waiting
    # as long. Anything beyond gets 503 + Retry-After.
    max_in_flight: int | None = Field(default=None, ge=1)
    max_waiting: int = Field(default=1024, ge=0)
    max_wait_seconds: float = Field(default=2.0, gt=0)
    # Group commit of alert requests: this many flushers each commit up to `batch_size` waiting
    # requests in one transaction, lingering up to `linger_ms` for more when they find few.
    group_commit_flushers: int = Field(default=2, ge=1)
    group_commit_batch_size: int = Field(default=256, ge=1)
    group_commit_linger_ms: float = Field(default=0.0, ge=0)
