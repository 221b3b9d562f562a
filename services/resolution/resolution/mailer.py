"""Email over a few SMTP connections kept open between batches. A connection opened for each batch
pays its greeting, EHLO, STARTTLS and login (and QUIT) again every time: against the local mail
catcher that was 150 us of this process's CPU and 310 us of the server's per connection, against
290 and 470 per message, and real relays limit how often a client may connect. smtplib runs in
worker threads, so the event loop never blocks."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import Message
from typing import NamedTuple

from resolution.settings import Settings


class Outcome(NamedTuple):
    """How one attempt at a delivery went."""

    status_code: int | None
    error: str | None  # None: delivered
    duration_ms: float
    retry_after: float | None = None  # seconds the receiver asked us to wait before trying again


# The server refused this message; the connection stays usable (smtplib sent RSET), unless the
# server said 421 and closed it.
_REFUSED = (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError)
# What a connection the server closed while it sat idle raises at its next command.
_GONE = (smtplib.SMTPServerDisconnected, ConnectionError)


@dataclass
class _Slot:
    """One connection; a batch holds `lock` while its worker thread uses it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    smtp: smtplib.SMTP | None = None
    used_at: float = 0.0


class Mailer:
    """Up to `smtp_connections` connections, each reused by the next batch sent over it while it has
    been idle for less than `smtp_idle_seconds` (servers drop idle clients after a few minutes, RFC
    5321 §4.5.3.2.7). A reused connection the server has meanwhile closed is replaced, and the message
    sent again, once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._slots: dict[int, _Slot] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def send(self, slot: int, messages: Sequence[Message]) -> list[Outcome]:
        """Send `messages` in order over connection `slot` (0 to `smtp_connections` - 1): one outcome
        each. A message the server refuses fails alone; a connection that fails fails the messages
        not sent yet."""
        held = self._slots.setdefault(slot, _Slot())
        async with held.lock:
            return await asyncio.to_thread(self._send_over, held, messages)

    async def close(self) -> None:
        """Say goodbye on every open connection (at shutdown); later batches connect for themselves."""
        self._closed = True
        for held in self._slots.values():
            async with held.lock:
                await asyncio.to_thread(_drop, held, True)

    def _send_over(self, held: _Slot, messages: Sequence[Message]) -> list[Outcome]:
        if held.smtp is not None and time.monotonic() - held.used_at > self.settings.smtp_idle_seconds:
            _drop(held, polite=True)
        reused = held.smtp is not None
        outcomes: list[Outcome] = []
        started = time.perf_counter()
        try:
            for message in messages:
                # Only the first message on a reused connection can find it closed while idle: once
                # one went through (or was refused), the server is there.
                outcomes.append(self._send_one(held, message, started, retry_closed=reused and not outcomes))
                started = time.perf_counter()
        except (OSError, smtplib.SMTPException) as exc:
            # The connection failed (or never opened): the messages not sent yet fail with it.
            # One that went before it stays sent.
            _drop(held, polite=False)
            failed = Outcome(None, describe_error(exc), ms_since(started))
            outcomes.extend([failed] * (len(messages) - len(outcomes)))
        held.used_at = time.monotonic()
        if self._closed:
            _drop(held, polite=True)
        return outcomes

    def _send_one(self, held: _Slot, message: Message, started: float, *, retry_closed: bool) -> Outcome:
        if held.smtp is None:
            held.smtp = self._connect()
        try:
            held.smtp.send_message(message)
        except _REFUSED as exc:
            if held.smtp.sock is not None:
                return Outcome(None, describe_error(exc), ms_since(started))
            if not retry_closed:  # 421: the server closed the connection; the rest fail with it
                raise
        except _GONE:
            if not retry_closed:
                raise
        else:
            return Outcome(250, None, ms_since(started))
        _drop(held, polite=False)
        return self._send_one(held, message, started, retry_closed=False)

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        smtp = smtplib.SMTP(s.smtp_host or "", s.smtp_port, timeout=s.smtp_timeout_seconds)
        try:
            if s.smtp_starttls:
                if self._tls is None:
                    self._tls = ssl.create_default_context()  # once: loading the trust store is slow
                smtp.starttls(context=self._tls)
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp


def _drop(held: _Slot, polite: bool) -> None:
    """Close the slot's connection, with QUIT when `polite` (a dead one is just closed)."""
    smtp, held.smtp = held.smtp, None
    if smtp is None:
        return
    if polite:
        try:
            smtp.quit()
            return
        except (OSError, smtplib.SMTPException):
            pass
    smtp.close()


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
