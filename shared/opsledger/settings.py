"""Settings every service reads from its environment (OPSLEDGER_*), with working local defaults."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from opsledger.events.registry import Stream

# The JWT algorithms a service may accept: public-key signatures only.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


PlanCacheMode = Literal["auto", "force_custom_plan", "force_generic_plan"]


class ServiceSettings(BaseSettings):
    """Common settings. A service subclasses this to set its name, port and database."""

    model_config = SettingsConfigDict(env_prefix="OPSLEDGER_", extra="ignore")

    service_name: str = "opsledger"
    host: str = "127.0.0.1"
    port: int = 8000
    # HTTP worker processes (`python -m <service>`): each is a replica of the service, with its own
    # relay, consumers and timers, sharing the work as replicas do (the relay's lease, consumer
    # groups, timer locks), and /metrics adds them up. More than one uses more than one core.
    workers: int = Field(default=1, ge=1, le=64)
    database_url: str = "postgresql+asyncpg://opsledger@127.0.0.1:5432/opsledger"
    db_pool_size: int = 10
    # Every checkout drops a connection the server has closed (a restart, a killed backend) at no
    # cost (db.make_engine). This adds SQLAlchemy's ping, three round trips per checkout: only for
    # a network that can drop connections silently.
    db_pool_pre_ping: bool = False
    # PostgreSQL's plan_cache_mode on the service's connections (`auto`: its default).
    db_plan_cache_mode: PlanCacheMode = "auto"
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "opsledger"
    topic_partitions: int = Field(default=6, ge=1)
    topic_replication: int = Field(default=1, ge=1)
    consumer_group: str | None = None  # default: "<topic_prefix>.<service_name>"
    # People authenticate with bearer JWTs (opsledger.auth). Production: an OIDC issuer's JWKS URL;
    # `make up` and tests: the public half of a local key pair (PEM text, or a path to a PEM file).
    # With neither set, every person's request is refused: no default verifies anything.
    auth_issuer: str = "opsledger-local"
    auth_audience: str = "opsledger"
    auth_jwks_url: str | None = None
    auth_public_key: str | None = None
    # Asymmetric algorithms only (HS* and "none" are refused), comma-separated in the environment.
    auth_algorithms: Annotated[list[str], NoDecode] = ["RS256", "ES256"]
    # Where the token keeps its roles: Keycloak "realm_access.roles", Entra ID "roles", Okta "groups".
    auth_roles_claim: str = "roles"
    auth_leeway_seconds: float = Field(default=30.0, ge=0)
    # JWKS keys are re-read this often; an unknown `kid` re-reads them at most once per
    # auth_jwks_min_refresh_seconds, so forged kids cannot hammer the issuer.
    auth_jwks_cache_seconds: float = Field(default=300.0, gt=0)
    auth_jwks_min_refresh_seconds: float = Field(default=30.0, ge=0)
    auth_jwks_timeout_seconds: float = Field(default=5.0, gt=0)
    log_level: str = "INFO"
    log_json: bool = True
    run_migrations: bool = True
    # A dependency that is unreachable at start is retried forever with capped backoff; the
    # service answers /readyz 503 with the reason meanwhile.
    startup_retry_max_seconds: float = 10.0
    relay_poll_seconds: float = 0.2
    relay_batch_size: int = 500
    # How long the relay's lease outlives its holder: a replica that dies without giving it up
    # is replaced by another after this long (a clean stop gives it up at once).
    relay_lease_seconds: float = Field(default=10.0, gt=0)
    consumer_batch_size: int = 500
    # How long the broker may hold a fetch to gather more events (0: answer as soon as one is
    # there). For consumers off the alert's path (read models, clocks): fewer, larger batches,
    # each paying its transaction once, at the cost of this much lag.
    consumer_linger_ms: int = Field(default=0, ge=0, le=1000)
    # Kafka offsets are committed at most this often (and when partitions are revoked or the
    # consumer stops), not after every batch: the inbox absorbs what a restart delivers again.
    offset_commit_seconds: float = Field(default=1.0, ge=0)
    handler_max_attempts: int = Field(default=3, ge=1)
    # Each timer of a batch holds an advisory lock until the batch commits (how runners share the
    # work): PostgreSQL's lock table (max_locks_per_transaction x connections: 6,400 by default)
    # bounds it.
    timer_batch_size: int = Field(default=500, ge=1, le=2000)
    # The longest the timer runner sleeps without looking (a timer scheduled by this process
    # wakes it at once; this bounds the wait for one scheduled elsewhere).
    timer_max_idle_seconds: float = Field(default=5.0, gt=0)
    # How often a service looks for tables whose planner statistics lag far behind them
    # (opsledger.statistics); 0: never. A look is one read of the statistics views (under a ms).
    statistics_check_seconds: float = Field(default=1.0, ge=0)
    # Inbox rows (ids of events applied) are kept this long to recognise redeliveries, then purged.
    inbox_retention_days: int = Field(default=30, ge=1)

    @field_validator("auth_jwks_url", "auth_public_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # docker compose passes an unset variable as "".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("auth_algorithms", mode="before")
    @classmethod
    def _algorithms(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [a.strip() for a in value.split(",") if a.strip()]
        refused = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if refused or not value:
            # HS* would let anyone holding the public key sign tokens; "none" signs nothing.
            raise ValueError(f"expected some of {', '.join(ASYMMETRIC_ALGORITHMS)}; refused: {refused or 'empty list'}")
        return value

    def topic(self, stream: Stream | str) -> str:
        return f"{self.topic_prefix}.{stream}"

    @property
    def deadletter_topic(self) -> str:
        return f"{self.topic_prefix}.deadletter"

    @property
    def group_id(self) -> str:
        return self.consumer_group or f"{self.topic_prefix}.{self.service_name}"
