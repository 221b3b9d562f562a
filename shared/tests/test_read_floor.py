"""Where the relay's scan starts (bus.outbox.ReadFloor): past what it sent, but held back by each
pass until every transaction older than the pass has ended (a later snapshot's xmin is past it)."""

from __future__ import annotations

from opsledger.bus.outbox import ReadFloor


def test_with_nothing_running_the_floor_follows_what_was_sent() -> None:
    floor = ReadFloor()
    floor.passed("100:100:", 100, [1, 2, 3])
    assert floor.value == 0, "held by the pass until a snapshot shows every older transaction ended"
    floor.passed("101:101:", 101, [])
    assert floor.value == 3
    floor.passed("102:102:", 102, [7])
    assert floor.value == 3, "held at what was sent before that pass"
    floor.passed("103:103:", 103, [])
    assert floor.value == floor.sent_through == 7


def test_a_pass_holds_the_floor_while_any_older_transaction_runs() -> None:
    floor = ReadFloor()
    floor.passed("90:90:", 90, [1, 2])
    floor.passed("95:100:95", 100, [5, 6])  # 95 may commit rows below 6 (and above 2)
    assert floor.value == 2, "held by the pass at 100, made when 2 was the last sent"
    floor.passed("95:104:95,103", 104, [9])  # 95 still runs
    assert floor.value == 2
    floor.passed("103:108:103", 108, [])  # 95 ended; 103 runs, older than the pass at 104
    assert floor.value == 6, "held by the pass at 104, made when 6 was the last sent"
    floor.passed("110:110:", 110, [11])
    assert floor.value == 9, "held by the pass at 108, made when 9 was the last sent"
    floor.passed("111:111:", 111, [])
    assert floor.value == floor.sent_through == 11


def test_a_transaction_the_snapshot_does_not_list_still_holds_the_floor() -> None:
    """pg_snapshot lists running transactions only below its xmax (the latest to end, plus one):
    one that took its id after that is running too, unlisted. Its row, below what the pass read,
    is still read once it commits."""
    floor = ReadFloor()
    floor.passed("90:90:", 90, [1, 2])
    # 96 took row 3 and runs; 95 took row 4 and ended: xmax 96, so 96 is not listed.
    floor.passed("96:96:", 97, [4])
    assert floor.value == 2
    floor.passed("96:98:", 98, [])  # 96 still runs (the xmin says so)
    assert floor.value == 2
    floor.passed("99:99:", 99, [3])  # 96 committed: row 3 was read above the floor of 2
    assert floor.value == 4


def test_reset_starts_from_the_beginning() -> None:
    floor = ReadFloor()
    floor.passed("100:105:104", 106, [8])
    floor.reset()
    assert floor.value == 0
    floor.passed("105:105:", 107, [])
    assert floor.value == 0
