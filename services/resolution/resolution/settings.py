"""Settings of the resolution service (environment: OPSLEDGER_*)."""

from datetime import timedelta

from pydantic import Field

from opsledger.settings import ServiceSettings
from resolution.domain import Policy


class Settings(ServiceSettings):
    service_name: str = "resolution"
    port: int = 8005
    database_url: str = "postgresql+asyncpg://opsledger@127.0.0.1:5432/opsledger_resolution"
    # Pages and stakeholder updates go up to 100 ms later, in bigger batches, leaving the CPU to
    # the alert's path while it is busy (see ServiceSettings).
    consumer_linger_ms: int = 100
    # Sources whose alerts resolve their incident once every correlated alert resolved at the
    # source (OPSLEDGER_AUTO_RESOLVE_SOURCES='["alertmanager"]').
    auto_resolve_sources: list[str] = Field(default_factory=lambda: ["alertmanager", "pagerduty"])
    # Per integration (its id, as intake issued it): true or false, winning over its source's default.
    auto_resolve_integrations: dict[str, bool] = Field(default_factory=dict)
    # A resolved incident closes by itself this long after resolution (durable timer).
    auto_close_after_seconds: float = Field(default=7 * 86400, gt=0)
    # A resolved incident may be reopened (by a person, or its alert firing again) this long after resolution.
    reopen_window_seconds: float = Field(default=7 * 86400, gt=0)
    # Priorities whose incidents need an approved post-incident review before closure.
    review_required_priorities: list[str] = Field(default_factory=lambda: ["P1", "P2"])
    # Webhook targets: hosts allowed ("hooks.slack.com", ".example.com" for its subdomains); empty: any.
    webhook_allowed_hosts: list[str] = Field(default_factory=list)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    # Attempts per delivery in all; the waits between them double from the base up to the maximum (jittered).
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_retry_base_seconds: float = Field(default=10.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    # A 429 (the receiver is rate limiting: up, and asking us to slow down) uses no attempt up: such
    # a delivery is tried again, as late as asked, until this long after it was staged.
    webhook_rate_limited_seconds: float = Field(default=86400.0, gt=0)
    # A person (email) or a Slack webhook owed more notifications than this in one sending round
    # gets digests listing them (an alert storm assigns someone dozens of incidents a second: one
    # email each buried them, and paging fell seconds behind the storm; Slack takes about one
    # message a second per webhook). Other webhooks get one request per event.
    digest_after: int = Field(default=3, ge=1)
    # Email subscriptions: the SMTP server (none: email subscriptions are refused).
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "OpsLedger <opsledger@localhost>"
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    # A batch of emails goes over this many connections at once (one incident's on one, in order):
    # one connection sent about 100 a second while a storm kept the machine busy.
    smtp_connections: int = Field(default=4, ge=1, le=32)
    # Those connections stay open between batches while idle for less than this (servers drop an
    # idle client after a few minutes).
    smtp_idle_seconds: float = Field(default=60.0, gt=0)
    # A link to the incident in notifications, e.g. "https://ops.example.com/incidents/{incident_id}".
    incident_link_template: str | None = None
    # Seed, once, an email subscription paging the demo team's assignee (`make up` sets
    # OPSLEDGER_DEMO=1 and points SMTP_HOST/SMTP_PORT at its mail catcher).
    demo: bool = False

    def policy(self) -> Policy:
        return Policy(
            auto_resolve_sources=frozenset(self.auto_resolve_sources),
            auto_resolve_integrations=dict(self.auto_resolve_integrations),
            auto_close_after=timedelta(seconds=self.auto_close_after_seconds),
            reopen_window=timedelta(seconds=self.reopen_window_seconds),
            review_required=frozenset(self.review_required_priorities),
        )
