"""Severity normalization: every source format's severity onto OpsLedger's one scale.

The tables here are the single source of truth; services/intake/README.md documents them. The
source's own word is kept on the event (`source_severity`, and the raw payload) so a changed
mapping can be re-applied on replay."""

from __future__ import annotations

from opsledger.events.common import Severity

# PagerDuty Events API v2 `payload.severity` is a closed set; anything else is a 400.
PAGERDUTY: dict[str, Severity] = {
    "critical": Severity.CRITICAL,
    "error": Severity.HIGH,
    "warning": Severity.MEDIUM,
    "info": Severity.INFO,
}

# Words seen in the wild for a `severity` (or `priority`) label / field, lower-cased.
ALIASES: dict[str, Severity] = {
    # critical
    "critical": Severity.CRITICAL,
    "crit": Severity.CRITICAL,
    "fatal": Severity.CRITICAL,
    "emergency": Severity.CRITICAL,
    "emerg": Severity.CRITICAL,
    "alert": Severity.CRITICAL,
    "disaster": Severity.CRITICAL,
    "page": Severity.CRITICAL,
    "p1": Severity.CRITICAL,
    "sev1": Severity.CRITICAL,
    # high
    "high": Severity.HIGH,
    "error": Severity.HIGH,
    "err": Severity.HIGH,
    "major": Severity.HIGH,
    "p2": Severity.HIGH,
    "sev2": Severity.HIGH,
    # medium
    "medium": Severity.MEDIUM,
    "warning": Severity.MEDIUM,
    "warn": Severity.MEDIUM,
    "average": Severity.MEDIUM,
    "moderate": Severity.MEDIUM,
    "p3": Severity.MEDIUM,
    "sev3": Severity.MEDIUM,
    # low
    "low": Severity.LOW,
    "minor": Severity.LOW,
    "p4": Severity.LOW,
    "sev4": Severity.LOW,
    # info
    "info": Severity.INFO,
    "informational": Severity.INFO,
    "notice": Severity.INFO,
    "debug": Severity.INFO,
    "none": Severity.INFO,
    "ok": Severity.INFO,
    "p5": Severity.INFO,
    "sev5": Severity.INFO,
}

# When the source says nothing about severity.
DEFAULT = Severity.MEDIUM


class UnknownSeverity(ValueError):
    pass


def from_pagerduty(value: str) -> Severity:
    try:
        return PAGERDUTY[value]
    except KeyError:
        raise UnknownSeverity(f"expected one of {', '.join(PAGERDUTY)}; got {value!r}") from None


def from_word(value: str | None) -> Severity:
    """A severity word from a generic alert or a report (strict: unknown words are an error)."""
    if value is None or not value.strip():
        return DEFAULT
    try:
        return ALIASES[value.strip().lower()]
    except KeyError:
        raise UnknownSeverity(
            f"expected one of {', '.join(s.value for s in Severity)} (or an alias); got {value!r}"
        ) from None


def from_label(value: str | None) -> Severity:
    """A `severity` label of an Alertmanager/Grafana alert. Lenient: a monitoring system cannot
    change its labels for us, and rejecting a webhook batch would lose every alert in it."""
    try:
        return from_word(value)
    except UnknownSeverity:
        return DEFAULT
