"""A local mail catcher for `make up`: an SMTP server (aiosmtpd) that accepts every message and saves
it, as received, under a folder as an `.eml` file (open it with any mail client), so a newcomer
sees the page the platform sends without a real mail server.

    python -m opsledger.devmail --port 2525 --dir .local/mail

Local development only: no authentication, no TLS, every recipient accepted, nothing relayed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path

import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("opsledger.devmail")


class SaveToFolder:
    """An aiosmtpd handler: each message becomes `<UTC time>-<random>.eml` in `folder`, written
    under a temporary name and renamed, so a reader never sees half a message."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def save(self, envelope: Envelope) -> Path:
        content = envelope.original_content or envelope.content or b""
        data = content if isinstance(content, bytes) else content.encode()
        recipients = ", ".join(envelope.rcpt_tos)
        header = f"X-Devmail-Envelope-From: {envelope.mail_from}\r\nX-Devmail-Envelope-To: {recipients}\r\n"
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}.eml"
        tmp = self.folder / f".{name}.tmp"
        tmp.write_bytes(header.encode() + data)
        os.replace(tmp, self.folder / name)
        return self.folder / name

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # In the event loop: a page is a few kB on a local disk, and handing each to a worker
        # thread cost more CPU than the write (a tenth of the catcher's, in a storm of pages).
        path = self.save(envelope)
        log.info("saved a message to %s for %s", path, ", ".join(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


async def serve(host: str, port: int, folder: Path, stop: asyncio.Event) -> None:
    """Accept mail on host:port until `stop` is set."""
    handler = SaveToFolder(folder)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="opsledger-devmail"), host, port)
    log.info("mail catcher on %s:%d, saving to %s", host, port, folder)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m opsledger.devmail", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--dir", type=Path, default=Path(".local/mail"), help="where .eml files are saved")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, args.dir, stop)

    # uvloop: most of the catcher's time is socket reads and writes, one per SMTP line.
    uvloop.run(run())


if __name__ == "__main__":
    main()
