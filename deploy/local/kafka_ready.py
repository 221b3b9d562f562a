"""Exit 0 once a Kafka broker answers a real metadata request; used by deploy/local/kafka.sh.

    python3 deploy/local/kafka_ready.py --bootstrap 127.0.0.1:9092 --timeout 10

An open port is not readiness: a KRaft broker accepts connections before it has caught up with
the controller. With aiokafka importable (the project venv) this asks the way our services will,
through AIOKafkaAdminClient.list_topics(); without it (e.g. before the venv is built) it sends
a plain Metadata v0 request over a socket, so the check never needs Java or a package.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import struct
import sys
import time


async def _aiokafka_topics(bootstrap: str, timeout: float) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    ms = max(1000, int(timeout * 1000))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ms)
    try:
        await asyncio.wait_for(admin.start(), timeout)
        return len(await asyncio.wait_for(admin.list_topics(), timeout))
    finally:
        await admin.close()


def _socket_metadata_brokers(bootstrap: str, timeout: float) -> int:
    """Metadata v0 for all topics; returns how many brokers the answer lists."""
    host, port = bootstrap.rsplit(":", 1)
    client = b"opsledger-ready"
    # Request header v1 (api_key=3 Metadata, api_version=0, correlation_id, client_id),
    # then the v0 body: an empty topic array, which means every topic.
    body = struct.pack(">hhih", 3, 0, 42, len(client)) + client + struct.pack(">i", 0)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _read(sock, 4))[0]
        resp = _read(sock, size)
    correlation_id, n_brokers = struct.unpack(">ii", resp[:8])
    if correlation_id != 42:
        raise RuntimeError("unexpected correlation id")
    return int(n_brokers)


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--timeout", type=float, default=30.0, help="give up after this many seconds")
    args = ap.parse_args()
    # Refused connections are expected while the broker starts; don't print aiokafka's complaints.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        import aiokafka  # noqa: F401

        have_aiokafka = True
    except ImportError:
        have_aiokafka = False

    deadline = time.monotonic() + args.timeout
    last: Exception | str = "no attempt"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"kafka not ready at {args.bootstrap}: {last}", file=sys.stderr)
            return 1
        attempt = min(left, 5.0)
        try:
            if have_aiokafka:
                n = asyncio.run(_aiokafka_topics(args.bootstrap, attempt))
                print(f"ready: {args.bootstrap} lists {n} topics (aiokafka)")
                return 0
            n = _socket_metadata_brokers(args.bootstrap, attempt)
            if n > 0:
                print(f"ready: {args.bootstrap} lists {n} broker(s) (Metadata v0)")
                return 0
            last = "metadata lists no broker yet"
        except Exception as e:  # any failure here just means "not yet"
            last = f"{type(e).__name__}: {e}"
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


if __name__ == "__main__":
    sys.exit(main())
