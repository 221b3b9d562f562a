"""The one way to retry: exponential backoff with jitter (tenacity), so replicas that failed
together (the database restarted under them) do not retry in step. Every retry is logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    stop_when_event_set,
    wait_random_exponential,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def _logger(what: str, on_failure: Callable[[BaseException], None] | None) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        if exc is not None and on_failure is not None:
            on_failure(exc)
        log.warning("%s failed (attempt %d), retrying in %.1fs: %r", what, state.attempt_number, wait, exc)

    return before_sleep


def _awaiting(action: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    # tenacity awaits only what a coroutine *function* returns: a lambda or partial that returns
    # a coroutine would be taken for a plain call, and its coroutine never awaited.
    async def call() -> T:
        return await action()

    return call


async def forever(
    action: Callable[[], Awaitable[T]],
    *,
    what: str,
    initial: float,
    maximum: float,
    on_failure: Callable[[BaseException], None] | None = None,
    until: asyncio.Event | None = None,
) -> T:
    """Run `action` until it succeeds, waiting between tries a random time up to `initial`,
    `2 * initial`, ... capped at `maximum`. Cancellation is never retried. With `until`, a wait
    ends when that event is set, and after one last try the failure is raised instead of retried
    (a service stopping does not sit out a backoff meant for a database that is down)."""

    async def sleep(seconds: float) -> None:
        if until is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), seconds)

    retrying = AsyncRetrying(
        wait=wait_random_exponential(multiplier=initial, max=maximum),
        retry=retry_if_exception_type(Exception),
        stop=stop_when_event_set(until) if until is not None else stop_never,  # type: ignore[arg-type]
        sleep=sleep,
        before_sleep=_logger(what, on_failure),
        reraise=True,
    )
    return await retrying(_awaiting(action))


async def attempts(action: Callable[[], Awaitable[T]], *, what: str, count: int, initial: float, maximum: float) -> T:
    """Run `action` up to `count` times with the same backoff; the last failure is raised."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(count),
        wait=wait_random_exponential(multiplier=initial, max=maximum),
        retry=retry_if_exception_type(Exception),
        before_sleep=_logger(what, None),
        reraise=True,
    )
    return await retrying(_awaiting(action))
