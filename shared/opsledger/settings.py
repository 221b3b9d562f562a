"""Settings every service reads from its environment (OPSLEDGER_*), with working local defaults."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from opsledger.events.registry import Stream


class ServiceSettings(BaseSettings):
    """Common settings. A service subclasses this to set its name, port and database."""

    model_config = SettingsConfigDict(env_prefix="OPSLEDGER_", extra="ignore")

    service_name: str = "opsledger"
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "postgresql+asyncpg://opsledger@127.0.0.1:5432/opsledger"
    db_pool_size: int = 10
    # A round trip per checkout; worth it unless the database never restarts under the service.
    db_pool_pre_ping: bool = True
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "opsledger"
    topic_partitions: int = Field(default=6, ge=1)
    topic_replication: int = Field(default=1, ge=1)
    consumer_group: str | None = None  # default: "<topic_prefix>.<service_name>"
    admin_token: str = "dev-admin-token"
    analyst_token: str = "dev-analyst-token"
    log_level: str = "INFO"
    log_json: bool = True
    run_migrations: bool = True
    # A dependency that is unreachable at start is retried forever with capped backoff; the
    # service answers /readyz 503 with the reason meanwhile.
    startup_retry_max_seconds: float = 10.0
    relay_poll_seconds: float = 0.2
    relay_batch_size: int = 500
    consumer_batch_size: int = 500
    handler_max_attempts: int = Field(default=3, ge=1)

    def topic(self, stream: Stream | str) -> str:
        return f"{self.topic_prefix}.{stream}"

    @property
    def deadletter_topic(self) -> str:
        return f"{self.topic_prefix}.deadletter"

    @property
    def group_id(self) -> str:
        return self.consumer_group or f"{self.topic_prefix}.{self.service_name}"
