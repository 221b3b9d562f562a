"""Unit tests of the wire formats: parsing, field mapping, severity normalization."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from intake import formats, severity
from intake.domain import SignalKind, stable_key
from intake.integration_keys import Integration
from opsledger.events.common import Severity

from .samples import alertmanager_body, am_alert, generic_alert, grafana_body, pagerduty_event, report

NOW = datetime(2026, 3, 1, 10, 1, tzinfo=UTC)


def test_alertmanager_alert_maps_to_a_trigger_keyed_by_fingerprint() -> None:
    raw = alertmanager_body(am_alert(), am_alert(fingerprint="ffff", status="resolved", severity="warning"))
    hook = formats.AlertmanagerWebhook.model_validate(raw)
    firing, resolved = formats.alertmanager_signals(hook, raw, NOW)
    assert hook.source == "alertmanager"
    assert firing.kind is SignalKind.TRIGGER and firing.dedup_key == "a1b2c3d4e5f60718"
    assert (firing.title, firing.description) == ("5xx rate above 5%", "checkout returns errors")
    assert (firing.severity, firing.source_severity) == (Severity.CRITICAL, "critical")
    assert firing.service == "checkout" and firing.component == "10.0.0.1:8080"
    assert firing.occurred_at == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert firing.links[0].href.startswith("http://prometheus")
    assert firing.raw["alert"] == raw["alerts"][0] and firing.raw["group"]["receiver"] == "opsledger"
    assert resolved.kind is SignalKind.RESOLVE and resolved.occurred_at == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)


def test_every_format_names_the_integration_it_came_in_by() -> None:
    integration = Integration(uuid.uuid4(), "prod-alertmanager", "any", disabled=False)
    named = (str(integration.integration_id), "prod-alertmanager")
    raw = alertmanager_body(am_alert(), am_alert(fingerprint="ffff"))
    signals = formats.alertmanager_signals(formats.AlertmanagerWebhook.model_validate(raw), raw, NOW, integration)
    raw = pagerduty_event("R" * 32)
    signals.append(formats.pagerduty_signal(formats.PagerDutyEvent.model_validate(raw), raw, NOW, integration))
    raw = pagerduty_event("R" * 32, "resolve", dedup_key="db-lag")
    signals.append(formats.pagerduty_signal(formats.PagerDutyEvent.model_validate(raw), raw, NOW, integration))
    raw = generic_alert()
    signals.append(formats.generic_signal(formats.GenericAlert.model_validate(raw), raw, NOW, integration))
    assert [(s.integration_id, s.integration_name) for s in signals] == [named] * 5
    raw = alertmanager_body(am_alert())
    [anonymous] = formats.alertmanager_signals(formats.AlertmanagerWebhook.model_validate(raw), raw, NOW)
    assert (anonymous.integration_id, anonymous.integration_name) == (None, None)


def test_alertmanager_without_fingerprint_uses_a_stable_label_hash() -> None:
    alert = am_alert()
    del alert["fingerprint"]
    raw = alertmanager_body(alert)
    [sig] = formats.alertmanager_signals(formats.AlertmanagerWebhook.model_validate(raw), raw, NOW)
    assert sig.dedup_key == stable_key("alertmanager", sig.labels)


def test_grafana_superset_is_recognised() -> None:
    raw = grafana_body()
    hook = formats.AlertmanagerWebhook.model_validate(raw)
    [sig] = formats.alertmanager_signals(hook, raw, NOW)
    assert sig.source == "grafana" and sig.severity is Severity.MEDIUM
    assert {link.text for link in sig.links} >= {"dashboard", "panel", "silence"}


def test_pagerduty_trigger_mapping_and_generated_dedup_key() -> None:
    raw = pagerduty_event("k" * 32)
    sig = formats.pagerduty_signal(formats.PagerDutyEvent.model_validate(raw), raw, NOW)
    assert sig.kind is SignalKind.TRIGGER and len(sig.dedup_key) == 32
    assert (sig.severity, sig.source_severity) == (Severity.HIGH, "error")
    assert (sig.service, sig.environment, sig.component) == ("billing", "prod", "postgres")
    assert sig.labels == {"source": "db-replica-2", "component": "postgres", "group": "billing", "class": "replication"}
    assert "routing_key" not in sig.raw, "the integration key must never reach the log"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"routing_key": "k", "event_action": "resolve"}, "dedup_key"),
        ({"routing_key": "k", "event_action": "trigger"}, "payload"),
        ({"routing_key": "k", "event_action": "snooze"}, "event_action"),
    ],
)
def test_pagerduty_rules_by_action(body: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        formats.PagerDutyEvent.model_validate(body)
    assert field in str(exc.value)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("critical", Severity.CRITICAL),
        ("P1", Severity.CRITICAL),
        ("error", Severity.HIGH),
        ("Warning", Severity.MEDIUM),
        ("minor", Severity.LOW),
        ("info", Severity.INFO),
        (None, Severity.MEDIUM),
    ],
)
def test_severity_words(word: str | None, expected: Severity) -> None:
    assert severity.from_word(word) is expected


def test_pagerduty_severity_table_is_strict_and_labels_are_lenient() -> None:
    assert [severity.from_pagerduty(w) for w in ("critical", "error", "warning", "info")] == [
        Severity.CRITICAL,
        Severity.HIGH,
        Severity.MEDIUM,
        Severity.INFO,
    ]
    with pytest.raises(severity.UnknownSeverity):
        severity.from_pagerduty("high")
    with pytest.raises(severity.UnknownSeverity):
        severity.from_word("apocalyptic")
    assert severity.from_label("apocalyptic") is severity.DEFAULT


def test_every_alias_lands_on_the_scale() -> None:
    assert set(severity.ALIASES.values()) == set(Severity)
    assert all(severity.ALIASES[s.value] is s for s in Severity)


def test_generic_alert_key_and_fields() -> None:
    raw = generic_alert()
    sig = formats.generic_signal(formats.GenericAlert.model_validate(raw), raw, NOW)
    assert sig.dedup_key == formats.generic_signal(formats.GenericAlert.model_validate(raw), raw, NOW).dedup_key
    other = generic_alert(labels={"queue": "payments"})
    assert formats.generic_signal(formats.GenericAlert.model_validate(other), other, NOW).dedup_key != sig.dedup_key
    given = generic_alert(dedup_key="orders-backlog")
    assert formats.generic_signal(formats.GenericAlert.model_validate(given), given, NOW).dedup_key == "orders-backlog"
    assert sig.severity is Severity.HIGH and sig.occurred_at == datetime(2026, 3, 1, 9, 59, tzinfo=UTC)


def test_naive_timestamps_are_utc_and_control_characters_are_refused() -> None:
    alert = formats.GenericAlert.model_validate(generic_alert(occurred_at="2026-03-01T09:59:00"))
    assert alert.occurred_at == datetime(2026, 3, 1, 9, 59, tzinfo=UTC)
    with pytest.raises(ValidationError, match="title"):
        formats.GenericAlert.model_validate(generic_alert(title="bad\x00title"))
    with pytest.raises(ValidationError, match="labels"):
        formats.GenericAlert.model_validate(generic_alert(labels={"a\nb": "x"}))


def test_report_takes_severity_from_impact_and_reporter_from_caller() -> None:
    raw = report(reporter=None, business_impact={"level": "low"})
    rep = formats.report_of(formats.ReportIn.model_validate(raw), raw, NOW, authenticated="user:u-ana")
    assert rep.severity is Severity.LOW and rep.reporter is not None and rep.reporter.name == "user:u-ana"
    assert rep.occurred_at == datetime(2026, 3, 1, 9, 50, tzinfo=UTC)
