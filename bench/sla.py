"""SLA benchmark: 100,000 live clocks (50,000 incidents, a response and a resolution clock each,
three timers per clock) on real PostgreSQL and Kafka, the sla service run as its own process
(`python -m sla`). 10,000 response targets then fall due in the same second. Prints the lag from
each target's due time to its SlaBreached on the log (the record's timestamp, set when the relay
sent it), p50/p99/max, and the service process's CPU while nothing is due and while they fire.

    .venv/bin/python bench/sla.py --clocks 100000 --due 10000
Needs OPSLEDGER_TEST_KAFKA and OPSLEDGER_TEST_POSTGRES (what `make test` starts)."""

from __future__ import annotations

import os
import sys

# This file is named like the service's package: run as a script, its directory must not shadow it.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

import sqlalchemy as sa  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from opsledger import migrations, timers  # noqa: E402
from opsledger.bus.outbox import Outbox  # noqa: E402
from opsledger.clock import Clock  # noqa: E402
from opsledger.db import make_engine, make_sessionmaker  # noqa: E402
from opsledger.events import Envelope, Stream, registry  # noqa: E402
from opsledger.testing import ServiceProcess, TestInfra  # noqa: E402
from opsledger.uow import unit_of_work  # noqa: E402
from sla import domain, policy, store  # noqa: E402
from sla.app import MIGRATIONS  # noqa: E402
from sla.settings import Settings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TICK = os.sysconf("SC_CLK_TCK")
FAR_PRIORITY, DUE_PRIORITY = "P2", "P1"


def bench_rules() -> list[dict[str, Any]]:
    """The defaults, with P1 warning nowhere (so only breaches fall due in the measured second)."""
    rules = policy.default_body()["rules"]
    rules[0] = {**rules[0], "warning_percents": []}
    return rules


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def envelope(payload: Any, incident_id: uuid.UUID, at: datetime) -> Envelope:
    from opsledger.events import new_event

    return new_event(payload, producer="bench", actor="system:bench", incident_id=incident_id, occurred_at=at)


def incident_events(incident_id: uuid.UUID, at: datetime, priority: str) -> list[Envelope]:
    from opsledger.events.intake import IncidentLogged
    from opsledger.events.triage import IncidentPrioritized, PriorityInputs

    logged = IncidentLogged(
        source="generic",
        occurred_at=at,
        received_at=at,
        title="bench",
        severity="high",  # type: ignore[arg-type]
        dedup_key=str(incident_id),
    )
    prioritized = IncidentPrioritized(
        priority=priority, major=priority == "P1", inputs=PriorityInputs(impact=1, urgency=1), matrix_version=1
    )
    return [envelope(logged, incident_id, at), envelope(prioritized, incident_id, at)]


async def seed_far(settings: Settings, count: int, compiled: policy.Policy) -> None:
    """Live clocks nothing falls due on during the run: states and timers written as the stage
    would (decided by the same pure reactions), their SlaClockStarted events left out."""
    engine = make_engine(settings)
    try:
        now = datetime.now(UTC)
        for chunk in range(0, count, 5000):
            async with unit_of_work(make_sessionmaker(engine), Outbox(settings), Clock()) as uow:
                states: dict[uuid.UUID, domain.Incident] = {}
                schedule: list[timers.Timer] = []
                for _ in range(min(5000, count - chunk)):
                    incident_id = uuid.uuid4()
                    state = None
                    for e in incident_events(incident_id, now, FAR_PRIORITY):
                        d = domain.decider.decide(state, e, registry.decode(e), compiled)
                        state = d.state
                        schedule.extend(d.schedule)
                    assert state is not None
                    states[incident_id] = state
                await store.save(uow, states, {})  # all new
                await timers.schedule_many(uow.session, schedule)
    finally:
        await engine.dispose()


async def count_with_clocks(settings: Settings) -> int:
    engine = make_engine(settings)
    try:
        async with engine.connect() as conn:
            n = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(store.known_incidents)
                .where(store.known_incidents.c.priority == DUE_PRIORITY)
            )
        return int(n or 0)
    finally:
        await engine.dispose()


async def main(clocks: int, due: int, lead: float, idle_seconds: float) -> None:
    infra = TestInfra.from_env()
    name = infra.unique("bench_sla_")
    url = await infra.create_database(name)
    prefix = infra.unique("bench")
    settings = Settings(database_url=url, kafka_bootstrap=infra.kafka_bootstrap, topic_prefix=prefix)
    incidents = clocks // 2
    proc: ServiceProcess | None = None
    try:
        await migrations.upgrade_async(MIGRATIONS, url)
        compiled = policy.build_policy(1, bench_rules())
        engine = make_engine(settings)
        async with make_sessionmaker(engine)() as session, session.begin():
            body = {"rules": [r.model_dump(mode="json") for r in policy.parse_rules(bench_rules())]}
            await store.save_policy(session, 1, body, "system:bench", "bench", datetime.now(UTC))
        await engine.dispose()
        started = time.perf_counter()
        await seed_far(settings, incidents - due, compiled)
        took = time.perf_counter() - started
        print(f"seeded {incidents - due:,} incidents ({(incidents - due) * 2:,} clocks) in {took:.1f} s")

        env = {
            "OPSLEDGER_DATABASE_URL": url,
            "OPSLEDGER_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
            "OPSLEDGER_TOPIC_PREFIX": prefix,
            "OPSLEDGER_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "shared"), os.path.join(ROOT, "services", "sla")]),
        }
        proc = ServiceProcess("sla", env)
        proc.start()
        await proc.wait_ready(timeout=120)
        assert proc.proc is not None
        pid = proc.proc.pid

        # The due group: published as the other stages would, so the service's own consumer
        # schedules their timers (and wakes its runner). Each response target falls due within
        # one second, `lead` seconds from now.
        second = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=lead + 1)
        producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=True, linger_ms=20)
        await producer.start()
        topic = settings.topic(Stream.INCIDENTS)
        consumer = AIOKafkaConsumer(bootstrap_servers=infra.kafka_bootstrap, enable_auto_commit=False, group_id=None)
        await consumer.start()
        while not consumer.partitions_for_topic(topic):
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        dues: dict[str, datetime] = {}
        try:
            sends = []
            for i in range(due):
                incident_id = uuid.uuid4()
                due_at = second + timedelta(microseconds=(i * 1_000_000) // due)
                dues[str(incident_id)] = due_at
                for e in incident_events(incident_id, due_at - timedelta(minutes=15), DUE_PRIORITY):
                    sends.append(await producer.send(topic, e.to_bytes(), key=e.key))
            await asyncio.gather(*sends)
        finally:
            await producer.stop()
        while await count_with_clocks(settings) < due:  # noqa: ASYNC110 (another process's database)
            await asyncio.sleep(0.2)
        ready_at = datetime.now(UTC)
        if ready_at >= second:
            print(f"warning: the due group was in place only {(ready_at - second).total_seconds():.1f} s after due")

        # Idle: every clock live, nothing due until the measured second.
        idle_window = max(min(idle_seconds, (second - datetime.now(UTC)).total_seconds() - 1), 1)
        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(idle_window)
        idle_cpu = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - wall0)
        print(f"live clocks: {incidents * 2:,} ({incidents:,} incidents, {incidents * 6 - due * 4:,} pending timers)")
        print(f"service CPU while idle: {idle_cpu * 100:.2f} % of one core over {idle_window:.1f} s")

        # Firing: read the SlaBreached events off the log, from just before the due second.
        await asyncio.sleep(max((second - datetime.now(UTC)).total_seconds() - 0.2, 0))
        cpu1, wall1 = cpu_seconds(pid), time.perf_counter()
        lags: list[float] = []
        deadline = time.perf_counter() + lead + 120
        while len(lags) < due and time.perf_counter() < deadline:
            batch = await consumer.getmany(*tps, timeout_ms=200)
            for records in batch.values():
                for r in records:
                    e = Envelope.from_bytes(r.value)
                    if e.event_type == "SlaBreached" and str(e.incident_id) in dues:
                        on_log = datetime.fromtimestamp(r.timestamp / 1000, UTC)
                        lags.append((on_log - dues[str(e.incident_id)]).total_seconds())
        firing_cpu, firing_wall = cpu_seconds(pid) - cpu1, time.perf_counter() - wall1
        await consumer.stop()
        print(f"{due:,} response targets due within one second: {len(lags):,} SlaBreached on the log")
        if lags:
            print(
                f"  due -> on the log: p50 {statistics.median(lags) * 1000:.0f} ms, p99 {pct(lags, 99) * 1000:.0f} ms,"
                f" max {max(lags) * 1000:.0f} ms"
            )
        print(
            f"  service CPU {firing_cpu:.2f} s over {firing_wall:.1f} s (from just before due until the last was read)"
        )
    finally:
        if proc is not None:
            proc.stop()
        await infra.drop_database(name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clocks", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument(
        "--lead", type=float, default=30.0, help="seconds from publishing the due group to its due second"
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds to measure idle CPU")
    args = parser.parse_args()
    asyncio.run(main(args.clocks, args.due, args.lead, args.idle))
