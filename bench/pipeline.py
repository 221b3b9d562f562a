"""Pipeline benchmark on the platform `make up` runs: unique alerts posted to intake at a steady
rate (50, 200, 500 alerts/s, 30 s each by default), then, per incident, the time from
IncidentLogged to IncidentPrioritized (triage) and to IncidentAssigned (assignment), read from the
events' `occurred_at` on the log, and to the assignee's page in the mail catcher (resolution's
email, as `make up`'s demo subscription sends it); whether every stage kept up (consumer lag from
each service's /metrics when the load stops, and how long the stages took to catch up); the CPU
each service, PostgreSQL and Kafka used while posting, and how idle the machine was; and each
service's RSS.

    make up && .venv/bin/python bench/pipeline.py [--rates 50,200,500] [--seconds 30]
Reads the URLs, the demo integration key and Kafka's address from .local/opsledger.env. Every
phase is bounded in count and time; load goes only to this machine's own services."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import os
import re
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("triage", "assignment")
# Where the time goes, hop by hop: (from, to, what spends it).
HOPS = (
    ("IncidentLogged", "IncidentLogged on the log", "intake's relay"),
    ("IncidentLogged on the log", "IncidentPrioritized", "triage's consumer"),
    ("IncidentPrioritized", "IncidentPrioritized on the log", "triage's relay"),
    ("IncidentPrioritized on the log", "IncidentAssigned", "assignment's consumer"),
)


def platform_env() -> dict[str, str]:
    env_file = ROOT / ".local" / "opsledger.env"
    if not env_file.exists():
        print("bench/pipeline.py skipped: nothing is up (run `make up` first)")
        raise SystemExit(0)
    pairs = (line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and line[0] != "#")
    return {k: v for k, v in pairs}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


IDLE_REUSE_SECONDS = 3.0  # under uvicorn's keep-alive timeout (5 s): it never closes one under us


class KeepAlivePoster:
    """POSTs JSON over a few HTTP/1.1 keep-alive connections, and does nothing else. httpx spent
    about a millisecond of CPU per request: a fifth of a core at 200 alerts/s, taken from the
    two-core platform it measures. This reads the status line, the headers and a Content-Length
    body (all intake answers with), and drops a connection that fails."""

    def __init__(self, url: str, headers: dict[str, str], size: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        lines = [f"Host: {parts.netloc}", "Content-Type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
        self.head = "\r\n".join(lines).encode()
        # (reader, writer, when it was last used): uvicorn closes a connection idle for 5 s.
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.gate = asyncio.Semaphore(size)  # at most `size` connections, hence requests in flight

    async def post(self, path: str, body: bytes) -> int:
        """The answer's status code; raises OSError (TimeoutError included) or IncompleteReadError
        if the exchange failed."""
        async with self.gate:
            reader, writer = await self._connection()
            try:
                async with asyncio.timeout(30):
                    writer.write(
                        b"POST %s HTTP/1.1\r\n%s\r\nContent-Length: %d\r\n\r\n" % (path.encode(), self.head, len(body))
                    )
                    writer.write(body)
                    status = int((await reader.readline()).split()[1])
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    await reader.readexactly(length)
            except BaseException:
                writer.close()
                raise
            self.idle.append((reader, writer, time.monotonic()))
            return status

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, used = self.idle.pop()
            if time.monotonic() - used < IDLE_REUSE_SECONDS:
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


async def post_steadily(env: dict[str, str], run: str, rate: int, seconds: float) -> tuple[int, int]:
    """Open loop: one alert every 1/rate s, whatever the answers' latency; (accepted, refused).
    Refusals are printed by cause (status code or client error)."""
    accepted = refused = 0
    reasons: dict[str, int] = {}
    poster = KeepAlivePoster(
        env["OPSLEDGER_INTAKE_URL"], {"Authorization": f"Bearer {env['OPSLEDGER_DEMO_INTEGRATION_KEY']}"}, 64
    )

    async def one(n: int) -> None:
        nonlocal accepted, refused
        body = {"dedup_key": f"{run}-{n}", "title": f"pipeline bench {n}", "severity": "high", "service": run}
        try:
            status = await poster.post("/v1/alerts", orjson.dumps(body))
            ok, why = status == 202, str(status)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            ok, why = False, type(exc).__name__
        accepted, refused = accepted + ok, refused + (not ok)
        if not ok:
            reasons[why] = reasons.get(why, 0) + 1

    tasks = []
    start = time.perf_counter()
    try:
        for n in range(int(rate * seconds)):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    finally:
        poster.close()
    if reasons:
        print(f"       refused at {rate}/s: " + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())))
    return accepted, refused


async def pages_waiting(env: dict[str, str]) -> float:
    """Resolution's timers due and not fired: the pages (emails, webhooks) it owes now. The gauge
    is counted every 5 s at most."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{env['OPSLEDGER_RESOLUTION_URL']}/metrics")).text
    found = re.search(r"^opsledger_timers_due\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


async def lag_of(env: dict[str, str], service: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{env[f'OPSLEDGER_{service.upper()}_URL']}/metrics")).text
    return sum(float(m) for m in re.findall(r"^opsledger_consumer_lag\{[^}]*\} ([0-9.e+]+)$", text, re.M))


async def events_of(
    env: dict[str, str], run: str, expected: int, timeout: float, since: float
) -> dict[str, dict[str, datetime]]:
    """incident -> event type -> occurred_at (and "<type> on the log" -> the record's timestamp,
    set by the relay's producer as it sends), for the run's incidents, reading from the records
    sent after `since` (epoch seconds) until every one has been assigned (or the timeout)."""
    topic = f"{env['OPSLEDGER_TOPIC_PREFIX']}.incidents"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env["OPSLEDGER_KAFKA_BOOTSTRAP"], enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    mine: set[str] = set()
    seen: dict[str, dict[str, datetime]] = {}
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        starts = await consumer.offsets_for_times({tp: int(since * 1000) for tp in tps})
        for tp in tps:
            if starts.get(tp) is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, starts[tp].offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for record in records:
                    event = orjson.loads(record.value)
                    incident = event.get("incident_id")
                    if event["event_type"] == "IncidentLogged" and event["payload"].get("service") == run:
                        mine.add(incident)
                    if event["event_type"] in ("IncidentLogged", "IncidentPrioritized", "IncidentAssigned"):
                        at = datetime.fromisoformat(event["occurred_at"])
                        seen.setdefault(incident, {}).setdefault(event["event_type"], at)
                        sent = datetime.fromtimestamp(record.timestamp / 1000, UTC)
                        seen[incident].setdefault(f"{event['event_type']} on the log", sent)
            done = [i for i in mine if "IncidentAssigned" in seen.get(i, {})]
            if len(mine) >= expected and len(done) >= len(mine):
                break
    finally:
        await consumer.stop()
    return {i: seen[i] for i in mine}


async def pages_of(
    mail_dir: Path, incidents: dict[str, dict[str, datetime]], timeout: float, since: float
) -> dict[str, datetime]:
    """incident -> when the mail catcher received the page of its assignment (the time in the
    .eml file's name), for the run's assigned incidents, waiting for them until the timeout."""
    wanted = {i for i, e in incidents.items() if "IncidentAssigned" in e}
    first = datetime.fromtimestamp(since, UTC).strftime("%Y%m%dT%H%M%S")
    paged: dict[str, datetime] = {}
    read: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(paged) < len(wanted) and time.monotonic() < deadline:
        await asyncio.to_thread(read_pages, mail_dir, first, read, wanted, paged)
        await asyncio.sleep(0.5)
    return paged


def read_pages(mail_dir: Path, first: str, read: set[str], wanted: set[str], paged: dict[str, datetime]) -> None:
    """Add to `paged` the pages of `wanted` incidents among the files not `read` yet."""
    for path in sorted(mail_dir.glob("*.eml")):
        if path.name in read or path.name < first:
            continue
        read.add(path.name)
        message = email.message_from_bytes(path.read_bytes())
        body = message.get_payload(decode=True)
        if "IncidentAssigned" not in (message["X-OpsLedger-Event-Type"] or "") or not isinstance(body, bytes):
            continue
        at = datetime.strptime(path.name.split("-", 1)[0], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
        # A page names its incident on its first line; a digest lists several pages.
        for found in re.finditer(rb"^Incident ([0-9a-f-]{36})$", body, re.M):
            if (incident := found.group(1).decode()) in wanted:
                paged[incident] = min(at, paged.get(incident, at))


def service_groups() -> dict[str, str]:
    """Each service's process group (its pid: `make up` makes it a session leader) -> its name."""
    return {f.read_text().strip(): f.stem for f in (ROOT / ".local" / "run").glob("*.pid")}


def stat(pid: str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # the fields after comm


def rss_mb() -> dict[str, str]:
    """Each service's RSS; one figure per process for a service with worker processes (the
    supervisor first)."""
    found: dict[str, list[float]] = {}
    groups = service_groups()
    for proc in sorted(Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if (name := groups.get(stat(proc.name)[2])) is None:  # [2]: the process group
                continue
            if kb := re.search(r"VmRSS:\s+(\d+)", (proc / "status").read_text()):
                found.setdefault(name, []).append(int(kb.group(1)) / 1024)
    return {name: "+".join(f"{mb:.0f}" for mb in sizes) for name, sizes in sorted(found.items())}


def cpu_ticks() -> tuple[dict[str, int], int, int]:
    """CPU time used so far (clock ticks) by each service (its processes: its workers too), by
    PostgreSQL (the postmaster and its backends), by Kafka and by this bench; and the machine's
    idle and total ticks."""

    def used(fields: list[str]) -> int:
        return int(fields[11]) + int(fields[12])  # utime + stime

    ticks: dict[str, int] = {}
    owners = {
        "kafka": (ROOT / ".local" / "kafka" / "kafka.pid").read_text().strip(),
        "this bench": str(os.getpid()),
    }
    for name, pid in owners.items():
        with contextlib.suppress(OSError, ValueError):
            ticks[name] = used(stat(pid))
    groups = service_groups()
    with contextlib.suppress(OSError):
        postmaster = (ROOT / ".local" / "postgres" / "data" / "postmaster.pid").read_text().split()[0]
        ticks["postgres"] = 0
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat(proc.name)
                if proc.name == postmaster:
                    # With its children's that exited (cutime + cstime): a backend or autovacuum
                    # worker that ends between two readings moves its time there, not out of the sum.
                    ticks["postgres"] += used(fields) + int(fields[13]) + int(fields[14])
                elif fields[1] == postmaster:  # fields[1]: the parent's pid
                    ticks["postgres"] += used(fields)
                elif (name := groups.get(fields[2])) is not None:  # a service's process group
                    ticks[name] = ticks.get(name, 0) + used(fields)
    machine = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return ticks, machine[3] + machine[4], sum(machine)


def cpu_line(before: tuple[dict[str, int], int, int], after: tuple[dict[str, int], int, int]) -> str:
    """Each process's share of one core between the two readings, and the machine's idle share."""
    (was, idle0, total0), (now, idle1, total1) = before, after
    cores = os.cpu_count() or 1
    seconds = (total1 - total0) / cores / os.sysconf("SC_CLK_TCK")
    shares = {n: (now[n] - was[n]) / os.sysconf("SC_CLK_TCK") / seconds * 100 for n in now if n in was}
    parts = ", ".join(f"{n} {v:.0f}" for n, v in sorted(shares.items(), key=lambda kv: -kv[1]))
    return f"{parts}; machine idle {(idle1 - idle0) / max(total1 - total0, 1) * 100:.0f} % of {cores} cores"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="50,200,500")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    env = platform_env()
    print(f"{'rate':>6} {'accepted':>9} {'refused':>8}  {'logged->prioritized p50/p99 ms':>31}  "
          f"{'logged->assigned p50/p99 ms':>28}  {'lag at end':>14}  {'caught up':>9}")  # fmt: skip
    for rate in (int(r) for r in args.rates.split(",")):
        run = f"pipe{uuid.uuid4().hex[:8]}"
        since = time.time() - 1
        posting = time.monotonic()
        cpu_before = cpu_ticks()
        accepted, refused = await post_steadily(env, run, rate, args.seconds)
        cpu_during = cpu_line(cpu_before, cpu_ticks())
        stopped = time.monotonic()
        lags = {s: await lag_of(env, s) for s in STAGES}
        owed = await pages_waiting(env)
        events = await events_of(env, run, accepted, timeout=120, since=since)
        caught_up = time.monotonic() - stopped
        mail_dir = Path(env["OPSLEDGER_MAIL_DIR"]) if env.get("OPSLEDGER_MAIL_DIR") else None
        pages = await pages_of(mail_dir, events, timeout=60, since=since) if mail_dir else {}
        prioritized = [
            (e["IncidentPrioritized"] - e["IncidentLogged"]).total_seconds() * 1000
            for e in events.values()
            if "IncidentPrioritized" in e and "IncidentLogged" in e
        ]
        assigned = [
            (e["IncidentAssigned"] - e["IncidentLogged"]).total_seconds() * 1000
            for e in events.values()
            if "IncidentAssigned" in e and "IncidentLogged" in e
        ]
        lag = ", ".join(f"{s} {lags[s]:.0f}" for s in STAGES)
        print(
            f"{rate:>6} {accepted:>9} {refused:>8}  {statistics.median(prioritized or [0]):>14.0f} / "
            f"{pct(prioritized, 99):>14.0f}  {statistics.median(assigned or [0]):>12.0f} / {pct(assigned, 99):>13.0f}"
            f"  {lag:>14}  {caught_up:>8.1f}s"
        )
        hops = []
        for start, end, who in HOPS:
            spans = [(e[end] - e[start]).total_seconds() * 1000 for e in events.values() if start in e and end in e]
            hops.append(f"{who} {statistics.median(spans or [0]):.0f}/{pct(spans, 99):.0f}")
        print("       hops p50/p99 ms: " + ", ".join(hops))
        # An open loop keeps its rate only if the client keeps up: this says whether it did.
        print(f"       the load took {stopped - posting:.1f} s for {args.seconds:g} s of schedule")
        print(f"       pages due and not yet sent when the load stopped (counted every 5 s): {owed:.0f}")
        if mail_dir:
            paged = [(pages[i] - e["IncidentLogged"]).total_seconds() * 1000 for i, e in events.items() if i in pages]
            print(
                "       logged->paged (the assignee's email received) p50/p99 ms: "
                f"{statistics.median(paged or [0]):.0f}/{pct(paged, 99):.0f},"
                f" {len(paged)} of {len(assigned)} assigned incidents paged within 60 s"
            )
        print(f"       CPU while posting, % of one core: {cpu_during}")
        if len(assigned) < accepted:
            print(f"       only {len(assigned)} of {accepted} incidents were assigned within the time allowed")
    print("RSS after the run (MB): " + ", ".join(f"{s} {mb}" for s, mb in rss_mb().items()))


if __name__ == "__main__":
    asyncio.run(main())
