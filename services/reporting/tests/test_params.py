"""Unit tests of query parameter parsing, cursors, CSV cells and time buckets (no I/O)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from reporting.analytics import bucket_range
from reporting.api import csv_cell
from reporting.queries import BadParameter, IncidentFilter, decode_cursor, encode_cursor, parse_sort, parse_timestamp


def _cursor(raw: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(raw)).decode().rstrip("=")


INCIDENT = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("raw", "sort"),
    [
        ([1, 2, 3], "logged_at"),  # not a sort name: used to reach the database and fail with a 500
        (["-logged_at", 123, INCIDENT], "-logged_at"),  # a number where a timestamp belongs
        (["-logged_at", "yesterday", INCIDENT], "-logged_at"),
        (["priority", 1, INCIDENT], "priority"),
        (["priority", "P0", INCIDENT], "priority"),
        (["logged_at", "2026-11-01T09:00:00+00:00", "not-a-uuid"], "logged_at"),
        (["logged_at", "2026-11-01T09:00:00+00:00"], "logged_at"),
        ({"sort": "logged_at"}, "logged_at"),
        (None, "logged_at"),
    ],
)
def test_a_cursor_not_issued_here_is_a_bad_parameter(raw: Any, sort: str) -> None:
    with pytest.raises(BadParameter) as caught:
        decode_cursor(_cursor(raw), sort)
    assert caught.value.parameter == "cursor"


def test_cursors_round_trip_and_belong_to_their_sort() -> None:
    incident = uuid.uuid4()
    when = datetime(2026, 11, 1, 9, 0, 0, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor("-logged_at", when, incident), "-logged_at") == (when, incident)
    assert decode_cursor(encode_cursor("priority", "P9", incident), "priority") == ("P9", incident)
    assert decode_cursor(encode_cursor("-priority", "P1", incident), "-priority") == ("P1", incident)
    assert decode_cursor(encode_cursor("-occurred_at", when, incident), "-occurred_at") == (when, incident)
    with pytest.raises(BadParameter, match="issued for sort"):
        decode_cursor(encode_cursor("-logged_at", when, incident), "logged_at")


@pytest.mark.parametrize("value", ["--logged_at", "-", "", "title", "logged_at,priority"])
def test_sort_accepts_one_known_name_with_at_most_one_minus(value: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_sort(value)
    assert caught.value.parameter == "sort"
    assert parse_sort("-priority") == ("priority", True) and parse_sort("occurred_at") == ("occurred_at", False)


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00", "2026-11-01T09:00:00", "soon", "2026-13-01Z"]
)
def test_timestamps_out_of_range_or_without_zone_are_bad_parameters(value: str) -> None:
    with pytest.raises(BadParameter) as caught:
        parse_timestamp("as_of", value)
    assert caught.value.parameter == "as_of"
    assert parse_timestamp("as_of", "2026-11-01T10:00:00+01:00") == datetime(2026, 11, 1, 9, tzinfo=UTC)


def test_filter_values_with_a_nul_character_are_bad_parameters() -> None:
    with pytest.raises(BadParameter) as caught:
        IncidentFilter.parse({"service": "a\x00b"}, None, None)
    assert caught.value.parameter == "service"


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+payments", "'+payments"),
        ("-1+1", "'-1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("checkout", "checkout"),
        (-3, -3),  # numbers are numbers, not formulas
        (None, None),
        (("resolve", "acknowledge"), "resolve;acknowledge"),
        (datetime(2026, 11, 1, tzinfo=UTC), "2026-11-01T00:00:00+00:00"),
    ],
)
def test_csv_cells_cannot_run_as_spreadsheet_formulas(value: Any, cell: Any) -> None:
    assert csv_cell(value) == cell


@pytest.mark.parametrize(
    ("key", "bucket", "end"),
    [
        ("2026-11-01T09:00:00Z", "hour", datetime(2026, 11, 1, 10, tzinfo=UTC)),
        ("2026-11-01T00:00:00Z", "day", datetime(2026, 11, 2, tzinfo=UTC)),
        ("2026-10-26T00:00:00Z", "week", datetime(2026, 11, 2, tzinfo=UTC)),
        ("2026-11-01T00:00:00Z", "month", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T00:00:00Z", "month", datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_bucket_ranges(key: str, bucket: str, end: datetime) -> None:
    start, stop = bucket_range(key, bucket)
    assert start == datetime.fromisoformat(key) and stop == end
