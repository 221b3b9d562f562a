"""Where the relay's scan starts (bus.outbox.ReadFloor): past what it sent, but held back by each
pass until every transaction older than the pass has ended (a later snapshot's xmin is past it, or
a later pass found none running in the outbox's database) and a pass has read from the hold since."""

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


def test_a_transaction_of_another_database_does_not_hold_the_floor() -> None:
    """The server's xmin stays at 50 (another service's long transaction) but none runs here: the
    holds go once the pass after the look has read from them."""
    floor = ReadFloor()
    floor.passed("50:90:50", 90, [1, 2])
    floor.passed("50:95:50", 95, [3], running_here=[])
    assert floor.value == 0, "the look is after its snapshot: the next pass must read from the hold first"
    floor.passed("50:99:50", 99, [], running_here=[])
    assert floor.value == 2, "the pass at 90 released; the one at 95 (looked at by 99) waits for the next"
    floor.passed("50:103:50", 103, [], running_here=[])
    assert floor.value == floor.sent_through == 3


def test_a_transaction_running_here_holds_the_floor_until_it_ends() -> None:
    floor = ReadFloor()
    floor.passed("50:90:50,88", 90, [1, 2], running_here=[88])
    floor.passed("50:95:50,88", 95, [3], running_here=[88])  # 88 may commit a row below 2
    floor.passed("50:99:50,88", 99, [], running_here=[88])
    assert floor.value == 0, "held by the pass at 90 while 88 runs here"
    floor.passed("50:103:50", 103, [], running_here=[])  # 88 ended before this look
    assert floor.value == 0, "and the next pass reads what 88 committed from that floor first"
    floor.passed("50:107:50", 107, [], running_here=[])
    assert floor.value == floor.sent_through == 3


def test_a_pass_that_did_not_look_releases_nothing_by_it() -> None:
    floor = ReadFloor()
    floor.passed("50:90:50", 90, [1])
    floor.passed("50:95:50", 95, [2], running_here=[])
    floor.passed("50:99:50", 99, [], running_here=None)  # releases what 95 found, looks at nothing
    floor.passed("50:103:50", 103, [], running_here=None)
    assert floor.value == 1, "held by the pass at 95: no look since"


def test_running_ids_are_widened_across_the_32_bit_wraparound() -> None:
    floor = ReadFloor()
    epoch = 2**32
    floor.passed(f"{epoch - 10}:{epoch + 5}:{epoch - 10}", epoch + 5, [1])  # the pass at 5 of epoch 1
    floor.passed(f"{epoch - 10}:{epoch + 9}:{epoch - 10}", epoch + 9, [], running_here=[2**32 - 3])
    floor.passed(f"{epoch - 10}:{epoch + 12}:{epoch - 10}", epoch + 12, [], running_here=[2**32 - 3])
    assert floor.value == 0, "2**32 - 3 of epoch 0 is older than the pass at 5 of epoch 1"
    floor.passed(f"{epoch - 10}:{epoch + 14}:{epoch - 10}", epoch + 14, [], running_here=[7])
    floor.passed(f"{epoch - 10}:{epoch + 16}:{epoch - 10}", epoch + 16, [], running_here=[7])
    assert floor.value == 1, "7 of epoch 1 is younger than the pass at 5 of epoch 1"
