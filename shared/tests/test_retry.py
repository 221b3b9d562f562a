"""The shared retry helper awaits what it is given, retries until success, and gives up when told."""

from __future__ import annotations

import asyncio
import functools

import pytest

from opsledger import retry


async def flaky(calls: list[int], failures: int) -> int:
    calls.append(1)
    if len(calls) <= failures:
        raise ConnectionError(f"failure {len(calls)}")
    return len(calls)


@pytest.mark.parametrize("wrap", ["lambda", "partial"])
async def test_forever_retries_a_lambda_or_partial_until_it_succeeds(wrap: str) -> None:
    calls: list[int] = []
    action = (lambda: flaky(calls, 3)) if wrap == "lambda" else functools.partial(flaky, calls, 3)
    seen: list[BaseException] = []
    assert await retry.forever(action, what="t", initial=0.001, maximum=0.002, on_failure=seen.append) == 4
    assert [str(e) for e in seen] == ["failure 1", "failure 2", "failure 3"]


async def test_attempts_gives_up_with_the_last_error() -> None:
    calls: list[int] = []
    with pytest.raises(ConnectionError, match="failure 3"):
        await retry.attempts(lambda: flaky(calls, 5), what="t", count=3, initial=0.001, maximum=0.002)
    assert len(calls) == 3


async def test_cancellation_is_never_retried() -> None:
    calls: list[int] = []

    async def cancelled() -> None:
        calls.append(1)
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await retry.forever(cancelled, what="t", initial=0.001, maximum=0.002)
    assert calls == [1]


async def test_a_stop_ends_the_wait_and_raises_the_last_failure() -> None:
    calls: list[int] = []
    stop = asyncio.Event()
    retrying = asyncio.create_task(
        retry.forever(lambda: flaky(calls, 1000), what="t", initial=60, maximum=60, until=stop)
    )
    while not calls:  # noqa: ASYNC110 (waits for the first failure, then for the backoff to begin)
        await asyncio.sleep(0.01)
    stop.set()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(retrying, 5)  # not the 60 s backoff
    assert len(calls) == 2, "one last try once the wait is cut short, then no more"
