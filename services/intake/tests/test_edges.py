"""Unit tests of the edge rules: body depth, event size budget, lenient foreign fields, field names
in errors, report times, load shedding."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from intake import errors, formats
from intake.admission import Admission
from intake.domain import MAX_PAYLOAD_BYTES, fit_for_log
from intake.errors import Rejected
from opsledger.testing import eventually

from .samples import alertmanager_body, am_alert, report

NOW = datetime(2026, 3, 1, 10, 1, tzinfo=UTC)


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def test_depth_limit_counts_containers() -> None:
    assert not errors.depth_exceeds(nested(errors.MAX_DEPTH))
    assert errors.depth_exceeds(nested(errors.MAX_DEPTH + 1))
    assert not errors.depth_exceeds({"a": [1, 2, {"b": "c"}]}, limit=3)
    assert errors.depth_exceeds({"a": [1, 2, {"b": []}]}, limit=3)


def test_fit_for_log_drops_only_the_raw_copy_and_only_when_needed() -> None:
    small = {"title": "t", "raw": {"title": "t"}}
    assert fit_for_log(small) is small
    big = {"title": "t", "annotations": {"a": "x" * 500_000}, "raw": {"annotations": {"a": "x" * 500_000}}}
    fitted = fit_for_log(big)
    assert fitted is not None and fitted["annotations"] == big["annotations"]
    assert fitted["raw"]["omitted"] and fitted["raw"]["bytes"] > 500_000
    assert fit_for_log({"title": "t", "annotations": {"a": "x" * MAX_PAYLOAD_BYTES}, "raw": {}}) is None
    assert fit_for_log({"dedup_key": "x" * MAX_PAYLOAD_BYTES}) is None  # no raw to drop


def test_alertmanager_pass_through_fields_are_lenient_and_mapped_safely() -> None:
    long_url = "http://prometheus/graph?g0.expr=" + "x" * 3000
    alert = {
        **am_alert(),
        "generatorURL": long_url,
        "silenceURL": "http://grafana/silence\nnew",
        "annotations": {"summary": "  disk\nalmost full\t ", "runbook_url": "http://runbooks/disk"},
    }
    raw = {**alertmanager_body(alert), "title": "t" * 5000, "message": "m" * 100_000, "groupKey": "g" * 70_000}
    hook = formats.AlertmanagerWebhook.model_validate(raw)
    [sig] = formats.alertmanager_signals(hook, raw, NOW)
    assert sig.title == "disk almost full"
    assert [(link.href, link.text) for link in sig.links] == [("http://runbooks/disk", "runbook")]
    assert sig.raw["alert"]["generatorURL"] == long_url
    # What becomes the incident stays strict.
    with pytest.raises(ValidationError, match=r"alerts\.0\.labels"):
        formats.AlertmanagerWebhook.model_validate(alertmanager_body({**am_alert(), "labels": {"a": "b\x00"}}))


def test_one_line_and_safe_link() -> None:
    assert formats.one_line("a\r\n\x1b[31mb ", 10) == "a [31mb"
    assert formats.one_line("x" * 50, 10) == "x" * 10
    assert formats.one_line(" \n ", 10) is None
    assert formats.safe_link("http://a", "t\nu") is not None
    assert formats.safe_link("http://a\nb", "t") is None
    assert formats.safe_link("http://a/" + "x" * 2048, "t") is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"routing_key": "k", "event_action": "resolve"}, ("dedup_key",)),
        ({"routing_key": "k", "event_action": "acknowledge", "dedup_key": ""}, ("dedup_key",)),
        ({"routing_key": "k", "event_action": "trigger"}, ("payload",)),
        ({"routing_key": "k", "event_action": "trigger", "payload": None}, ("payload",)),
    ],
)
def test_pagerduty_rules_by_action_name_their_field(body: dict[str, str], field: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as exc:
        formats.PagerDutyEvent.model_validate(body)
    assert [e["loc"] for e in exc.value.errors()] == [field]


def test_error_paths_name_a_bad_label_key() -> None:
    with pytest.raises(ValidationError) as exc:
        formats.GenericAlert.model_validate({"title": "t", "labels": {"bad\x07key": "v"}})
    assert [e.field for e in errors.field_errors(exc.value)] == ["labels.bad\x07key (the key)"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"started_at": "2026-03-01T10:30:00Z", "reported_at": "2026-03-01T10:00:00Z"}, "started_at"),
        ({"started_at": (NOW + timedelta(minutes=6)).isoformat(), "reported_at": None}, "started_at"),
        ({"started_at": None, "reported_at": (NOW + timedelta(hours=1)).isoformat()}, "reported_at"),
    ],
)
def test_report_times_that_cannot_be_true(overrides: dict[str, str | None], field: str) -> None:
    raw = report(**overrides)
    with pytest.raises(formats.Invalid) as exc:
        formats.report_of(formats.ReportIn.model_validate(raw), raw, NOW, authenticated="user:u-ana")
    assert exc.value.field == field


def test_report_times_allow_clock_skew_and_default_the_reporter() -> None:
    raw = report(started_at=(NOW + timedelta(minutes=4)).isoformat(), reported_at=None, reporter=None)
    rep = formats.report_of(formats.ReportIn.model_validate(raw), raw, NOW, authenticated="integration:" + "n" * 200)
    assert rep.occurred_at == NOW + timedelta(minutes=4)
    assert rep.reporter is not None and rep.reporter.name is not None and len(rep.reporter.name) == 200


async def test_admission_sheds_beyond_its_slots_and_its_queue() -> None:
    gate = Admission(limit=1, max_waiting=0, max_wait=0.05)
    async with gate.slot():
        with pytest.raises(Rejected) as full:
            async with gate.slot():
                pass
        assert full.value.status == 503 and full.value.headers == {"Retry-After": "1"}
        gate.max_waiting = 1
        with pytest.raises(Rejected, match="within"):
            async with gate.slot():
                pass
    assert gate.waiting == 0
    async with gate.slot():  # the slot came back
        pass


async def test_admission_lets_a_waiter_in_when_a_slot_frees() -> None:
    gate = Admission(limit=1, max_waiting=1, max_wait=5)
    release = asyncio.Event()
    entered = asyncio.Event()

    async def holder() -> None:
        async with gate.slot():
            entered.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await entered.wait()
    waiter = asyncio.create_task(_enter(gate))

    async def queued() -> bool:
        return gate.waiting == 1

    await eventually(queued, timeout=5, what="the second request waits for the slot")
    release.set()
    assert await waiter == "in"
    await task


async def _enter(gate: Admission) -> str:
    async with gate.slot():
        return "in"
