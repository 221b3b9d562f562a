"""Replay benchmark of the reporting read side.

Generates N realistic events (full incident lifecycles, correlated alert storms, re-prioritizations,
escalations, reopenings, configuration changes) straight onto a fresh topic prefix with a raw
aiokafka producer, then measures on the same topics:
  (a) the raw aiokafka consume rate (no decoding, no database): the ceiling;
  (b) a rebuild of every reporting projection into a fresh database through the real consumer
      runner (decode, inbox, one transaction per batch, positions) - events/s and wall time.

    .venv/bin/python bench/replay.py --events 100000
    OPSLEDGER_BENCH_KAFKA=127.0.0.1:19092 OPSLEDGER_BENCH_POSTGRES=postgresql://opsledger@127.0.0.1:15432 \
        .venv/bin/python bench/replay.py            # 1,000,000 events
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from opsledger import migrations
from opsledger.bus.consumer import EventConsumer
from opsledger.bus.topics import ensure_topics
from opsledger.db import make_engine, make_sessionmaker
from opsledger.events import EventPayload, Stream, derived_event_id, registry
from opsledger.events.assignment import (
    AcknowledgementChannel,
    EscalationCause,
    IncidentAcknowledged,
    IncidentAssigned,
    IncidentEscalated,
)
from opsledger.events.common import PersonRef, SlaTargetKind
from opsledger.events.resolution import (
    ClosureCode,
    IncidentClosed,
    IncidentReopened,
    IncidentResolved,
    ReopenKind,
    ReopenTrigger,
    ResolutionCode,
)
from opsledger.events.sla import SlaBreached, SlaWarning
from opsledger.service import tune_gc
from reporting.app import MIGRATIONS
from reporting.settings import Settings
from reporting.versions import projection_spec

SERVICES = ["checkout", "payments", "search", "billing-db", "auth", "inventory", "cdn", "mail", "api-gw", "ledger"]
CATEGORIES = [("Application", "Errors"), ("Database", "Capacity"), ("Network", "Latency"), ("Storage", "Disk"),
              ("Infrastructure/Server", "CPU"), ("Security", "Auth")]  # fmt: skip
SOURCES = ["alertmanager", "alertmanager", "alertmanager", "grafana", "pagerduty", "generic", "manual"]
SEVERITIES = ["critical", "high", "medium", "low", "info"]
TEAMS = ["payments", "platform", "search", "data", "edge"]


# What an AlertCorrelated (v2) repeats of the alert, as intake writes it.
ALERT_TOLD = ("source", "integration_id", "dedup_key", "source_severity", "title", "labels", "raw", "occurred_at",
              "description", "service", "environment", "component", "annotations")  # fmt: skip


def typed(payload: EventPayload) -> dict[str, Any]:
    """A payload as its schema validates and serialises it."""
    return payload.model_dump(mode="json")


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Generator:
    """Deterministic (seeded) stream of envelopes as JSON dicts, one incident lifecycle at a time."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.clock = datetime(2026, 1, 1, tzinfo=UTC)

    def envelope(self, incident: uuid.UUID | None, subject: str, kind: str, at: datetime, producer: str,
                 payload: dict[str, Any], cause: dict[str, Any] | None = None, corr: str | None = None,
                 ) -> dict[str, Any]:  # fmt: skip
        event_id = derived_event_id(cause["event_id"], kind) if cause else uuid.UUID(int=self.rng.getrandbits(128))
        return {
            "event_id": str(event_id),
            "event_type": kind,
            "schema_version": registry.model(kind).schema_version,  # as the services write them today
            "incident_id": str(incident) if incident else None,
            "subject": subject,
            "occurred_at": _iso(at),
            "producer": producer,
            "correlation_id": corr if corr is not None else (cause or {}).get("correlation_id"),
            "causation_id": cause["event_id"] if cause else None,
            "actor": f"system:{producer}" if producer != "intake" else "integration:bench",
            "payload": payload,
        }

    def lifecycle(self) -> list[dict[str, Any]]:
        rng = self.rng
        self.clock += timedelta(seconds=rng.expovariate(1 / 30))
        t = self.clock
        incident = uuid.UUID(int=rng.getrandbits(128))
        sid = str(incident)
        service = rng.choice(SERVICES)
        source = rng.choice(SOURCES)
        severity = rng.choice(SEVERITIES)
        dedup = f"{source}-{service}-{rng.getrandbits(32):08x}"
        category, subcategory = rng.choice(CATEGORIES)
        labels = {"alertname": f"{service}Down", "service": service, "env": "prod", "severity": severity}

        def later(seconds: float) -> datetime:
            nonlocal t
            t = t + timedelta(seconds=seconds)
            return t

        logged = self.envelope(incident, sid, "IncidentLogged", t, "intake", {
            "source": source, "integration_id": "int-bench", "occurred_at": _iso(t - timedelta(seconds=30)),
            "received_at": _iso(t), "title": f"{service} error rate high", "description": "bench",
            "service": service, "environment": "prod", "component": None, "labels": labels, "annotations": {},
            "severity": severity, "source_severity": severity, "dedup_key": dedup,
            "raw": {"labels": labels, "startsAt": _iso(t)}, "reported_at": None,
        }, corr=dedup)  # fmt: skip
        events = [logged]
        priority = f"P{rng.randint(1, 5)}"
        events.append(self.envelope(incident, sid, "IncidentCategorized", later(0.2), "triage", {
            "category": category, "subcategory": subcategory, "affected_service": service, "rule_id": "r1",
            "rule_set_version": 1, "overridden": False, "inputs": {"service": service},
        }, cause=logged))  # fmt: skip
        inputs = {"impact": 2, "urgency": 2, "impact_reasons": [], "urgency_reasons": [], "severity": severity,
                  "occurrence_count": 1}  # fmt: skip
        prioritized = self.envelope(incident, sid, "IncidentPrioritized", later(0.1), "triage", {
            "priority": priority, "major": priority == "P1", "inputs": inputs, "matrix_version": 1,
        }, cause=logged)  # fmt: skip
        events.append(prioritized)
        # Alert storms: most incidents see a few repeats, some a lot.
        repeats = min(int(rng.paretovariate(1.2)) - 1, 40)
        for n in range(repeats):
            events.append(self.envelope(incident, sid, "AlertCorrelated", later(rng.uniform(10, 120)), "intake", {
                **{k: logged["payload"][k] for k in ALERT_TOLD}, "occurrence_count": n + 2,
                "first_seen": logged["occurred_at"], "last_seen": _iso(t),
                "severity": "critical" if n > 3 else severity,
            }, corr=dedup))  # fmt: skip
            if n == 3 and priority not in ("P1",):
                previous, priority = priority, f"P{max(1, int(priority[1]) - 1)}"
                events.append(self.envelope(incident, sid, "IncidentReprioritized", later(0.1), "triage", {
                    "priority": priority, "previous_priority": previous, "major": priority == "P1",
                    "inputs": {**inputs, "occurrence_count": n + 2}, "matrix_version": 1,
                    "reason": "correlated alert raised severity to critical",
                }, cause=events[-1]))  # fmt: skip
        # The later stages' events, built through their typed schemas (what reporting decodes).
        team = rng.choice(TEAMS)
        oncall = PersonRef(sub=f"{team}-oncall-{rng.randint(1, 4)}")
        events.append(self.envelope(incident, sid, "IncidentAssigned", later(rng.uniform(5, 60)), "assignment",
                                    typed(IncidentAssigned(team_id=team, team_name=team, assignee=oncall, tier=0,
                                                           reason=f"on call in {team} primary"))))  # fmt: skip
        events.append(self.envelope(incident, sid, "IncidentAcknowledged", later(rng.expovariate(1 / 300)),
                                    "assignment", typed(IncidentAcknowledged(via=AcknowledgementChannel.API,
                                                                             by=oncall))))  # fmt: skip
        if rng.random() < 0.2:
            due = later(0) + timedelta(seconds=3600)
            clock = {"target": SlaTargetKind.RESOLUTION, "target_seconds": 7200, "due_at": due, "policy_version": 1}
            warned_at = later(rng.uniform(60, 600))
            events.append(self.envelope(incident, sid, "SlaWarning", warned_at, "sla",
                                        typed(SlaWarning(**clock, threshold_percent=75, threshold_at=warned_at,
                                                         fired_at=warned_at))))  # fmt: skip
            if rng.random() < 0.4:
                breached_at = later(rng.uniform(60, 600))
                events.append(self.envelope(incident, sid, "SlaBreached", breached_at, "sla",
                                            typed(SlaBreached(**clock, fired_at=breached_at))))  # fmt: skip
        if rng.random() < 0.1:
            events.append(self.envelope(incident, sid, "IncidentEscalated", later(rng.uniform(60, 900)), "assignment",
                                        typed(IncidentEscalated(from_tier=0, to_tier=1, cause=EscalationCause.MANUAL,
                                                                reason="bench"))))  # fmt: skip
        resolved = {"source": source, "dedup_key": dedup, "resolved_at": _iso(later(rng.expovariate(1 / 1800)))}
        events.append(self.envelope(incident, sid, "AlertResolved", t, "intake", resolved, corr=dedup))
        events.append(self.envelope(incident, sid, "IncidentResolved", later(30), "resolution",
                                    typed(IncidentResolved(code=ResolutionCode.FIXED, auto=True))))  # fmt: skip
        if rng.random() < 0.05:
            reopened = IncidentReopened(reason="alert fired again", by=ReopenTrigger(kind=ReopenKind.ALERT_REFIRED))
            events.append(self.envelope(incident, sid, "IncidentReopened", later(rng.uniform(300, 3600)),
                                        "resolution", typed(reopened)))  # fmt: skip
            again = IncidentResolved(code=ResolutionCode.WORKAROUND)
            events.append(self.envelope(incident, sid, "IncidentResolved", later(rng.uniform(300, 3600)),
                                        "resolution", typed(again)))  # fmt: skip
        events.append(self.envelope(incident, sid, "IncidentClosed", later(86400), "resolution",
                                    typed(IncidentClosed(code=ClosureCode.RESOLVED, auto=True))))  # fmt: skip
        return events

    def config_change(self, version: int) -> dict[str, Any]:
        return self.envelope(None, "priority-matrix", "PriorityMatrixChanged", self.clock, "triage", {
            "version": version, "matrix": {"1/1": "P1", "1/2": "P2", "2/1": "P2"}, "comment": "bench",
        })  # fmt: skip

    def stream(self, total: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """(stream, envelope) pairs, exactly `total` of them; incidents interleave like live traffic."""
        produced, version = 0, 1
        active: list[list[dict[str, Any]]] = []
        while produced < total:
            while len(active) < 50:
                active.append(self.lifecycle())
            life = active[self.rng.randrange(len(active))]
            event = life.pop(0)
            if not life:
                active.remove(life)
            yield "incidents", event
            produced += 1
            if produced < total and self.rng.random() < 0.001:
                version += 1
                yield "config", self.config_change(version)
                produced += 1


async def produce(settings: Settings, total: int) -> tuple[int, float]:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks=1
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for stream, event in Generator().stream(total):
            topic = settings.topic(Stream.INCIDENTS if stream == "incidents" else Stream.CONFIG)
            pending.append(await producer.send(topic, orjson.dumps(event), key=event["subject"].encode()))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return total, time.perf_counter() - started


async def raw_consume(settings: Settings, topics: list[str]) -> tuple[dict[tuple[str, int], int], int, float]:
    """The topics' end offsets, and how fast a bare aiokafka consumer reads everything up to them."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024, isolation_level="read_committed",
    )  # fmt: skip
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or []]
        consumer.assign(tps)
        ends = {(tp.topic, tp.partition): off for tp, off in (await consumer.end_offsets(tps)).items()}
        expected = sum(ends.values())
        await consumer.seek_to_beginning(*tps)
        count, started = 0, time.perf_counter()
        while count < expected:
            batches = await consumer.getmany(timeout_ms=500, max_records=settings.consumer_batch_size)
            count += sum(len(b) for b in batches.values())
        return ends, count, time.perf_counter() - started
    finally:
        await consumer.stop()


async def rebuild(settings: Settings, ends: dict[tuple[str, int], int], timeout: float) -> tuple[int, float]:
    """Every projection rebuilt from offset 0 into an empty database by the service's consumer."""
    engine = make_engine(settings)
    sessionmaker = make_sessionmaker(engine)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)  # dead letters only
    await producer.start()
    spec = projection_spec(settings, sessionmaker, 1)
    tune_gc()  # as every service does once it is ready
    projector = spec.batch_handler
    assert projector is not None
    stats = {"batches": 0, "handler_s": 0.0, "first_batch_at": 0.0}

    async def timed(session: Any, deliveries: list[Any]) -> None:
        began = time.perf_counter()
        if not stats["first_batch_at"]:
            stats["first_batch_at"] = began
        await projector(session, deliveries)
        stats["batches"] += 1
        stats["handler_s"] += time.perf_counter() - began

    spec.batch_handler = timed
    worker = EventConsumer(spec, settings, sessionmaker, producer)
    stop = asyncio.Event()
    target = {k: v - 1 for k, v in ends.items() if v > 0}
    # Progress is polled on a plain connection, to cost the loop the consumer runs on little.
    poll = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    started = time.perf_counter()
    await worker.start()
    task = asyncio.create_task(worker.run(stop))
    try:
        deadline = started + timeout
        while True:
            rows = await poll.fetch('SELECT topic, partition, "offset" FROM positions WHERE version = 1')
            done = {(r["topic"], r["partition"]): r["offset"] for r in rows}
            if all(done.get(k, -1) >= v for k, v in target.items()):
                break
            if task.done():
                task.result()
                raise RuntimeError("the consumer stopped early")
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"rebuild not done within {timeout}s: at {sum(done.values())} of {sum(ends.values())}"
                )
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        print(
            f"  consumer start + group join {stats['first_batch_at'] - started:.2f}s, {stats['batches']} batches,"
            f" projector {stats['handler_s']:.2f}s, runner (decode, inbox, commit, fetch) the rest",
            flush=True,
        )
    finally:
        await poll.close()
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await worker.stop()
        await producer.stop()
        await engine.dispose()
    return sum(ends.values()), elapsed


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=Settings().consumer_batch_size)
    parser.add_argument("--timeout", type=float, default=3600, help="give up on the rebuild after this many seconds")
    parser.add_argument("--kafka", default=os.environ.get("OPSLEDGER_BENCH_KAFKA", "127.0.0.1:19092"))
    parser.add_argument(
        "--postgres", default=os.environ.get("OPSLEDGER_BENCH_POSTGRES", "postgresql://opsledger@127.0.0.1:15432")
    )
    parser.add_argument("--keep", action="store_true", help="keep the topics and the database afterwards")
    args = parser.parse_args()

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    dbname = f"{prefix}_reporting"
    settings = Settings(
        kafka_bootstrap=args.kafka, topic_prefix=prefix, topic_partitions=args.partitions,
        database_url=args.postgres.replace("postgresql://", "postgresql+asyncpg://") + f"/{dbname}",
        consumer_batch_size=args.batch_size, log_json=False,
    )  # fmt: skip
    topics = [settings.topic(Stream.INCIDENTS), settings.topic(Stream.CONFIG)]
    admin_db = await asyncpg.connect(f"{args.postgres}/postgres")
    await admin_db.execute(f'CREATE DATABASE "{dbname}"')
    try:
        await ensure_topics(settings)
        print(f"generating {args.events:,} events onto {prefix}.* ({args.partitions} partitions) ...", flush=True)
        produced, produce_s = await produce(settings, args.events)
        await migrations.upgrade_async(MIGRATIONS, settings.database_url)
        print("raw aiokafka consume ...", flush=True)
        ends, consumed, raw_s = await raw_consume(settings, topics)
        print("rebuilding all projections into a fresh database ...", flush=True)
        rebuilt, rebuild_s = await rebuild(settings, ends, args.timeout)
        async with contextlib.AsyncExitStack():
            conn = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
            incidents = await conn.fetchval("SELECT count(*) FROM incidents")
            history = await conn.fetchval("SELECT count(*) FROM incident_versions")
            entries = await conn.fetchval("SELECT count(*) FROM timeline")
            size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
            await conn.close()
    finally:
        if not args.keep:
            await admin_db.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            admin = AIOKafkaAdminClient(bootstrap_servers=args.kafka)
            await admin.start()
            with contextlib.suppress(Exception):
                await admin.delete_topics([*topics, settings.deadletter_topic])
            await admin.close()
        await admin_db.close()

    rows = [
        ("produce (raw aiokafka, acks=1)", produced, produce_s),
        ("consume (raw aiokafka, no decoding)", consumed, raw_s),
        ("rebuild all projections (reporting)", rebuilt, rebuild_s),
    ]
    print()
    print(f"{'step':40} {'events':>12} {'wall s':>9} {'events/s':>11}")
    for name, count, seconds in rows:
        print(f"{name:40} {count:>12,} {seconds:>9.2f} {count / seconds:>11,.0f}")
    print(f"\nrebuild runs at {raw_s / rebuild_s:.1%} of the raw consume rate; batch size {args.batch_size}, "
          f"{args.partitions} partitions")  # fmt: skip
    print(f"read model: {incidents:,} incidents, {history:,} history rows, {entries:,} audit entries, {size} on disk")
    return 0


if __name__ == "__main__":
    # On uvloop, as the service runs (opsledger.cli starts uvicorn with loop="uvloop").
    sys.exit(uvloop.run(main()))
