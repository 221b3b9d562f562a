"""Request bodies as the real senders produce them (shared by unit and integration tests)."""

from __future__ import annotations

from typing import Any


def alertmanager_body(*alerts: dict[str, Any], status: str = "firing", receiver: str = "opsledger") -> dict[str, Any]:
    """An Alertmanager v4 webhook body (as sent by Alertmanager 0.27)."""
    return {
        "version": "4",
        "groupKey": '{}:{alertname="HighErrorRate"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": "HighErrorRate"},
        "commonLabels": {"alertname": "HighErrorRate", "job": "checkout"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def am_alert(
    fingerprint: str = "a1b2c3d4e5f60718",
    status: str = "firing",
    severity: str = "critical",
    instance: str = "10.0.0.1:8080",
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "HighErrorRate", "job": "checkout", "severity": severity, "instance": instance},
        "annotations": {"summary": "5xx rate above 5%", "description": "checkout returns errors"},
        "startsAt": "2026-03-01T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-03-01T10:30:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=rate",
        "fingerprint": fingerprint,
    }


def grafana_body() -> dict[str, Any]:
    """Grafana-managed alerting's webhook: Alertmanager's body plus Grafana's fields."""
    alert = {
        **am_alert(fingerprint="0f1e2d3c4b5a6978", severity="warning"),
        "silenceURL": "http://grafana:3000/alerting/silence/new",
        "dashboardURL": "http://grafana:3000/d/abc",
        "panelURL": "http://grafana:3000/d/abc?viewPanel=2",
        "values": {"B": 7.5},
        "valueString": "[ var='B' labels={} value=7.5 ]",
    }
    return {
        **alertmanager_body(alert),
        "version": "1",
        "orgId": 1,
        "title": "[FIRING:1] HighErrorRate",
        "state": "alerting",
        "message": "**Firing**",
    }


def pagerduty_event(routing_key: str, action: str = "trigger", dedup_key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"routing_key": routing_key, "event_action": action}
    if dedup_key is not None:
        body["dedup_key"] = dedup_key
    if action == "trigger":
        body["payload"] = {
            "summary": "DB replica lag > 30s",
            "source": "db-replica-2",
            "severity": "error",
            "timestamp": "2026-03-01T10:00:00+00:00",
            "component": "postgres",
            "group": "billing",
            "class": "replication",
            "custom_details": {"lag_seconds": 42, "environment": "prod"},
        }
        body["links"] = [{"href": "https://runbooks/db-lag", "text": "runbook"}]
        body["client"] = "Monitoring"
        body["client_url"] = "https://monitoring.example"
    return body


def generic_alert(**overrides: Any) -> dict[str, Any]:
    return {
        "title": "Queue backlog growing",
        "description": "orders queue above 10k",
        "severity": "high",
        "service": "orders",
        "environment": "prod",
        "labels": {"queue": "orders"},
        "occurred_at": "2026-03-01T09:59:00Z",
        **overrides,
    }


def report(**overrides: Any) -> dict[str, Any]:
    return {
        "title": "Customers cannot pay",
        "description": "Card payments fail at checkout",
        "reporter": {"name": "Ada Lovelace", "email": "ada@example.com"},
        "service": "checkout",
        "business_impact": {"text": "no revenue from card payments", "level": "high"},
        "urgency_hint": 1,
        "started_at": "2026-03-01T09:50:00Z",
        "reported_at": "2026-03-01T10:05:00Z",
        **overrides,
    }
