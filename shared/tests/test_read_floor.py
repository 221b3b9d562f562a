"""Where the relay's scan starts (bus.outbox.ReadFloor): past what it sent, but held back by every
transaction that was running when it read, until a snapshot no longer lists it."""

from __future__ import annotations

from opsledger.bus.outbox import ReadFloor


def test_with_nothing_running_the_floor_follows_what_was_sent() -> None:
    floor = ReadFloor()
    floor.passed("100:100:", [1, 2, 3])
    assert floor.value == 3
    floor.passed("101:101:", [])
    assert floor.value == 3, "an empty pass keeps it"
    floor.passed("101:101:", [7])
    assert floor.value == 7


def test_a_transaction_running_at_a_read_holds_the_floor_where_it_was_until_it_ends() -> None:
    floor = ReadFloor()
    floor.passed("100:100:", [1, 2])
    floor.passed("100:105:100,103", [5, 6])  # 100 and 103 may commit rows below 6, above 2
    assert floor.value == 2
    floor.passed("103:108:103,106", [9])  # 100 ended; 103 still runs; 106 is new, first seen at 6
    assert floor.value == 2
    floor.passed("106:110:106", [])
    assert floor.value == 6, "held now only by 106, seen when 6 was the last sent"
    floor.passed("110:110:", [11])
    assert floor.value == floor.sent_through == 11


def test_reset_starts_from_the_beginning() -> None:
    floor = ReadFloor()
    floor.passed("100:105:104", [8])
    floor.reset()
    assert floor.value == 0
    floor.passed("105:105:", [])
    assert floor.value == 0
