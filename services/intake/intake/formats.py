"""The wire formats intake accepts (validated once, at the edge) and their mapping onto
AlertSignal / Report. Pure: no I/O, unit-testable."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from intake import severity
from intake.domain import AlertSignal, Report, SignalKind, stable_key
from intake.integration_keys import Integration
from opsledger.events.common import ImpactLevel, Link, Person
from opsledger.events.intake import BusinessImpact

MAX_LABELS = 64
MAX_LINKS = 50
# The 1 MiB body limit is the real bound; this only keeps one transaction's row locks in reason.
MAX_ALERTS_PER_WEBHOOK = 5000
MAX_TITLE = 1024
MAX_DESCRIPTION = 64 * 1024
# A person's clock may run a little ahead of ours; more than this is a typo, not skew.
CLOCK_SKEW = timedelta(minutes=5)


class Invalid(ValueError):
    """A rule across fields or against the clock, checked after parsing; names the field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field '{field}': {message}")
        self.field = field
        self.message = message


# C0 controls other than tab/newline/CR, DEL and C1 controls: never meaningful in an alert, and
# NUL cannot be stored in a PostgreSQL text column.
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_LINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def single_line(value: str) -> str:
    if _CONTROL_LINE.search(value):
        raise ValueError("must not contain control characters (newlines included)")
    return value


def _multiline(value: str) -> str:
    if _CONTROL_MULTILINE.search(value):
        raise ValueError("must not contain control characters other than tab and newline")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


_RUN_OF_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def one_line(value: str | None, limit: int) -> str | None:
    """A foreign format's free text as a clean single line of at most `limit` characters (titles
    come from annotations and templates that may span lines; refusing them would drop the alert)."""
    if value is None:
        return None
    line = _RUN_OF_CONTROLS.sub(" ", value).strip()
    return line[:limit] or None


def safe_link(href: str | None, text: str | None) -> Link | None:
    """A link fit for the event, or None: a foreign format's URL that is too long or not a single
    line stays only in the raw body (one odd URL must not cost the whole webhook)."""
    if not href or len(href) > 2048 or _CONTROL_LINE.search(href):
        return None
    return Link(href=href, text=one_line(text, 500))


def _utc(value: datetime) -> datetime:
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"timestamp out of range: {exc}") from None


def _short(n: int) -> Any:
    return StringConstraints(max_length=n)


Line = Annotated[str, _short(1024), AfterValidator(single_line)]
Title = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TITLE), AfterValidator(single_line), AfterValidator(_not_blank)
]
Name = Annotated[str, _short(255), AfterValidator(single_line)]
Text = Annotated[str, _short(64 * 1024), AfterValidator(_multiline)]
Url = Annotated[str, _short(2048), AfterValidator(single_line)]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(single_line)]
LabelValue = Annotated[str, _short(1024), AfterValidator(_multiline)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]
Annotations = Annotated[dict[LabelKey, Text], Field(max_length=MAX_LABELS)]
# Naive timestamps are read as UTC (what monitoring tools mean by them in practice).
Timestamp = Annotated[datetime, AfterValidator(_utc)]
DedupKey = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(single_line)]

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class _Edge(BaseModel):
    """Formats we define: unknown fields are an error (catches typos early)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Foreign(BaseModel):
    """Formats other systems define: tolerate fields added by newer versions."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


LinkText = Annotated[str, _short(500), AfterValidator(single_line)]


class LinkIn(_Edge):
    href: Url
    text: LinkText | None = None

    def link(self) -> Link:
        return Link(href=self.href, text=self.text)


def _checked_word(value: str | None) -> str | None:
    if value is not None:
        severity.from_word(value)  # raises with the accepted words
    return value


# --- Prometheus Alertmanager webhook (version 4) and Grafana's superset of it -------------------


# Alertmanager drops a notification answered with a 4xx (it retries only 5xx), losing every alert
# in the group. So the fields intake only passes through (URLs, group key, Grafana's rendered
# title/message) take any string the 1 MiB body allows; what becomes part of the incident (labels,
# annotations, fingerprint, status, times) is checked as strictly as in our own formats.
Passthrough = str


class AlertmanagerAlert(_Foreign):
    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: Annotations = Field(default_factory=dict)
    startsAt: Timestamp | None = None
    endsAt: Timestamp | None = None
    generatorURL: Passthrough | None = None
    fingerprint: DedupKey | None = None
    # Grafana-managed alerting adds these (and `values`, `embeddedImage`, `orgId`, `ruleUID`, kept raw).
    silenceURL: Passthrough | None = None
    dashboardURL: Passthrough | None = None
    panelURL: Passthrough | None = None
    imageURL: Passthrough | None = None
    valueString: Passthrough | None = None


class AlertmanagerWebhook(_Foreign):
    version: Passthrough | None = None
    groupKey: Passthrough | None = None
    truncatedAlerts: int = Field(default=0, ge=0)
    status: Literal["firing", "resolved"] | None = None
    receiver: Passthrough | None = None
    groupLabels: Labels = Field(default_factory=dict)
    commonLabels: Labels = Field(default_factory=dict)
    commonAnnotations: Annotations = Field(default_factory=dict)
    externalURL: Passthrough | None = None
    alerts: list[AlertmanagerAlert] = Field(min_length=1, max_length=MAX_ALERTS_PER_WEBHOOK)
    # Grafana-managed alerting adds these.
    orgId: int | None = None
    title: Passthrough | None = None
    state: Passthrough | None = None
    message: Passthrough | None = None

    @property
    def source(self) -> str:
        return "grafana" if self.orgId is not None or self.version == "1" else "alertmanager"


def _attribution(integration: Integration | None) -> tuple[str | None, str | None]:
    """The id and name of the integration a signal came in by, as AlertSignal holds them."""
    if integration is None:
        return None, None
    return str(integration.integration_id), integration.name


def _first(*values: str | None) -> str | None:
    return next((v for v in values if v and v.strip()), None)


def _clip(value: str | None, limit: int = MAX_DESCRIPTION) -> str | None:
    return value[:limit] if value is not None else None


def alertmanager_signals(
    hook: AlertmanagerWebhook, raw: dict[str, Any], now: datetime, integration: Integration | None = None
) -> list[AlertSignal]:
    """One signal per alert of the webhook. `raw` is the body as received; `integration`, the one
    it came in by."""
    by = _attribution(integration)
    group = {k: v for k, v in raw.items() if k != "alerts"}
    signals = []
    for alert, raw_alert in zip(hook.alerts, raw.get("alerts", []), strict=True):
        labels = {**hook.commonLabels, **alert.labels}
        notes = {**hook.commonAnnotations, **alert.annotations}
        word = _first(labels.get("severity"), labels.get("priority"))
        resolved = alert.status == "resolved"
        ended = alert.endsAt if alert.endsAt is not None and alert.endsAt.year > 1 else None
        found = (
            safe_link(url, text)
            for url, text in (
                (alert.generatorURL, "source"),
                (notes.get("runbook_url"), "runbook"),
                (alert.dashboardURL, "dashboard"),
                (alert.panelURL, "panel"),
                (alert.silenceURL, "silence"),
                (alert.imageURL, "image"),
            )
        )
        links = [link for link in found if link is not None]
        signals.append(
            AlertSignal(
                integration_id=by[0],
                integration_name=by[1],
                kind=SignalKind.RESOLVE if resolved else SignalKind.TRIGGER,
                source=hook.source,
                dedup_key=alert.fingerprint or stable_key(hook.source, labels),
                title=one_line(_first(notes.get("summary"), labels.get("alertname"), hook.title), MAX_TITLE) or "alert",
                description=_clip(_first(notes.get("description"), notes.get("message"), alert.valueString)),
                severity=severity.from_label(word),
                source_severity=word,
                occurred_at=(ended or now) if resolved else (alert.startsAt or now),
                service=_first(labels.get("service"), labels.get("job")),
                environment=_first(labels.get("environment"), labels.get("env")),
                component=_first(labels.get("component"), labels.get("instance")),
                labels=labels,
                annotations=notes,
                links=tuple(links),
                raw={"alert": raw_alert, "group": group},
                episode_started_at=alert.startsAt,
            )
        )
    return signals


# --- PagerDuty Events API v2 ----------------------------------------------------------------------


class PagerDutyPayload(_Foreign):
    summary: Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(single_line)]
    source: Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(single_line)]
    severity: str
    timestamp: Timestamp | None = None
    component: Name | None = None
    group: Name | None = None
    class_: Name | None = Field(default=None, alias="class")
    custom_details: dict[str, Any] | list[Any] | str | int | float | bool | None = None

    @field_validator("severity")
    @classmethod
    def _severity(cls, value: str) -> str:
        severity.from_pagerduty(value)
        return value


class PagerDutyLink(_Foreign):
    href: Url
    text: LinkText | None = None


class PagerDutyImage(_Foreign):
    src: Url
    href: Url | None = None
    alt: Line | None = None


class PagerDutyEvent(_Foreign):
    routing_key: Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(single_line)]
    event_action: Literal["trigger", "acknowledge", "resolve"]
    # validate_default: the rules by action below also run when the field is absent.
    dedup_key: DedupKey | None = Field(default=None, validate_default=True)
    payload: PagerDutyPayload | None = Field(default=None, validate_default=True)
    links: list[PagerDutyLink] = Field(default_factory=list, max_length=MAX_LINKS)
    images: list[PagerDutyImage] = Field(default_factory=list, max_length=MAX_LINKS)
    client: Line | None = None
    client_url: Url | None = None

    # Field validators (not a model validator) so the error names the field, as PagerDuty's does.
    @field_validator("dedup_key")
    @classmethod
    def _dedup_key_by_action(cls, value: str | None, info: ValidationInfo) -> str | None:
        action = info.data.get("event_action")
        if action in ("acknowledge", "resolve") and not value:
            raise ValueError(f"is required for event_action {action}")
        return value

    @field_validator("payload")
    @classmethod
    def _payload_by_action(cls, value: PagerDutyPayload | None, info: ValidationInfo) -> PagerDutyPayload | None:
        if info.data.get("event_action") == "trigger" and value is None:
            raise ValueError("is required for event_action trigger")
        return value


def pagerduty_signal(
    event: PagerDutyEvent, raw: dict[str, Any], now: datetime, integration: Integration | None = None
) -> AlertSignal:
    """The event as a signal; a trigger without dedup_key gets a fresh one (as PagerDuty does)."""
    by = _attribution(integration)
    raw = {k: v for k, v in raw.items() if k != "routing_key"}  # the key is a secret
    dedup_key = event.dedup_key or uuid.uuid4().hex
    kind = SignalKind(event.event_action)
    p = event.payload
    if p is None:  # acknowledge / resolve
        return AlertSignal(
            integration_id=by[0],
            integration_name=by[1],
            kind=kind,
            source="pagerduty",
            dedup_key=dedup_key,
            title=dedup_key,
            severity=severity.DEFAULT,
            occurred_at=now,
            raw=raw,
        )
    details = p.custom_details if isinstance(p.custom_details, dict) else {}

    def detail(name: str) -> str | None:
        value = details.get(name)
        # Free-form details: use a value only when it is a clean single line.
        if isinstance(value, str) and value and not _CONTROL_LINE.search(value):
            return value[:255]
        return None

    labels = {
        k: v
        for k, v in {"source": p.source, "component": p.component, "group": p.group, "class": p.class_}.items()
        if v
    }
    links = [Link(href=link.href, text=link.text) for link in event.links]
    if event.client_url:
        links.append(Link(href=event.client_url, text=one_line(event.client, 500) or "client"))
    return AlertSignal(
        integration_id=by[0],
        integration_name=by[1],
        kind=kind,
        source="pagerduty",
        dedup_key=dedup_key,
        title=p.summary,
        severity=severity.from_pagerduty(p.severity),
        source_severity=p.severity,
        occurred_at=p.timestamp or now,
        service=detail("service") or p.group,
        environment=detail("environment") or detail("env"),
        component=p.component,
        labels=labels,
        links=tuple(links),
        raw=raw,
    )


# --- OpsLedger's generic JSON alert ------------------------------------------------------------------


class GenericAlert(_Edge):
    title: Title
    status: Literal["firing", "resolved"] = "firing"
    dedup_key: DedupKey | None = None
    description: Text | None = None
    severity: str | None = None
    service: Name | None = None
    environment: Name | None = None
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)
    links: list[LinkIn] = Field(default_factory=list, max_length=MAX_LINKS)
    occurred_at: Timestamp | None = None

    @field_validator("severity")
    @classmethod
    def _severity(cls, value: str | None) -> str | None:
        return _checked_word(value)


def generic_signal(
    alert: GenericAlert, raw: dict[str, Any], now: datetime, integration: Integration | None = None
) -> AlertSignal:
    by = _attribution(integration)
    key = alert.dedup_key or stable_key(
        "generic",
        alert.labels,
        service=alert.service,
        environment=alert.environment,
        # Without labels, the title is what tells two alerts apart.
        title=None if alert.labels else alert.title,
    )
    return AlertSignal(
        integration_id=by[0],
        integration_name=by[1],
        kind=SignalKind.RESOLVE if alert.status == "resolved" else SignalKind.TRIGGER,
        source="generic",
        dedup_key=key,
        title=alert.title,
        description=alert.description,
        severity=severity.from_word(alert.severity),
        source_severity=alert.severity,
        occurred_at=alert.occurred_at or now,
        service=alert.service,
        environment=alert.environment,
        labels=alert.labels,
        annotations=alert.annotations,
        links=tuple(link.link() for link in alert.links),
        raw=raw,
    )


# --- A person's report ---------------------------------------------------------------------------------


class ReporterIn(_Edge):
    name: Annotated[str, StringConstraints(max_length=200), AfterValidator(single_line)] | None = None
    email: Annotated[str, StringConstraints(max_length=320), AfterValidator(single_line)] | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError("not an email address")
        return value


class ImpactIn(_Edge):
    text: Annotated[str, StringConstraints(max_length=5000), AfterValidator(_multiline)] | None = None
    level: ImpactLevel | None = None


class ReportIn(_Edge):
    title: Title
    description: Text | None = None
    reporter: ReporterIn | None = None
    service: Name | None = None
    environment: Name | None = None
    business_impact: ImpactIn | None = None
    urgency_hint: int | None = Field(default=None, ge=1, le=3)
    severity: str | None = None
    started_at: Timestamp | None = None
    reported_at: Timestamp | None = None
    labels: Labels = Field(default_factory=dict)
    links: list[LinkIn] = Field(default_factory=list, max_length=MAX_LINKS)

    @field_validator("severity")
    @classmethod
    def _severity(cls, value: str | None) -> str | None:
        return _checked_word(value)


# A report without a severity takes it from the stated business impact.
IMPACT_SEVERITY = {ImpactLevel.HIGH: "high", ImpactLevel.MEDIUM: "medium", ImpactLevel.LOW: "low"}


def report_of(body: ReportIn, raw: dict[str, Any], now: datetime, authenticated: str) -> Report:
    """The report; without a named reporter, the authenticated caller is the reporter. Raises
    `Invalid` for times that cannot be true (in the future, or started after it was reported)."""
    for name, at in (("started_at", body.started_at), ("reported_at", body.reported_at)):
        if at is not None and at > now + CLOCK_SKEW:
            raise Invalid(name, f"is in the future ({at.isoformat()}; now is {now.isoformat()})")
    if body.started_at and body.reported_at and body.started_at > body.reported_at:
        raise Invalid("started_at", "is after reported_at: an incident is reported after it started")
    reporter = Person(name=body.reporter.name, email=body.reporter.email) if body.reporter else None
    if reporter is None or (reporter.name is None and reporter.email is None):
        reporter = Person(name=authenticated[:200])
    impact = (
        BusinessImpact(text=body.business_impact.text, level=body.business_impact.level)
        if body.business_impact
        else None
    )
    word = body.severity or (IMPACT_SEVERITY[impact.level] if impact and impact.level else None)
    return Report(
        title=body.title,
        description=body.description,
        reporter=reporter,
        service=body.service,
        environment=body.environment,
        business_impact=impact,
        urgency_hint=body.urgency_hint,
        severity=severity.from_word(word),
        source_severity=body.severity,
        occurred_at=body.started_at or body.reported_at or now,
        reported_at=body.reported_at,
        labels=body.labels,
        links=tuple(link.link() for link in body.links),
        raw=raw,
    )
