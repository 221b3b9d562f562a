"""Prometheus metrics every service exports at /metrics. A service served by several worker
processes (`ServiceSettings.workers`) keeps them in files that /metrics adds up (prometheus_client's
multiprocess mode): counters and histograms summed, gauges as the worker that set them last said."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# Set (by `opsledger.cli`) before the workers start: where they keep their metrics.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def exposition() -> bytes:
    """What /metrics answers: this process's metrics, or every worker's."""
    if not os.environ.get(MULTIPROCESS_DIR):
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def process_stopped() -> None:
    """A worker stops: its gauges no longer count (counters keep what it counted)."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


HTTP_REQUESTS = Counter(
    "opsledger_http_requests_total", "HTTP requests answered", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "opsledger_http_request_seconds",
    "HTTP request latency",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENTS_CONSUMED = Counter(
    "opsledger_events_consumed_total", "Events applied by a consumer", ["service", "consumer", "outcome"]
)
EVENTS_PRODUCED = Counter("opsledger_events_produced_total", "Events published by the outbox relay", ["service"])
CONSUMER_LAG = Gauge(
    "opsledger_consumer_lag",
    "Messages behind the end of the partition",
    ["service", "consumer", "topic", "partition"],
    multiprocess_mode="livemostrecent",  # the partition's owner reported it last
)
# The relay that holds the lease counts them.
OUTBOX_BACKLOG = Gauge(
    "opsledger_outbox_backlog", "Outbox rows not yet published", ["service"], multiprocess_mode="livemostrecent"
)
HANDLER_LATENCY = Histogram(
    "opsledger_handler_seconds",
    "Time to apply one consumed batch",
    ["service", "consumer"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DEADLETTERED = Counter(
    "opsledger_deadlettered_total", "Messages sent to the dead-letter topic", ["service", "consumer"]
)
# Counted in the table by every runner: the latest count.
TIMERS_PENDING = Gauge(
    "opsledger_timers_pending",
    "Durable timers scheduled and not yet fired",
    ["service"],
    multiprocess_mode="livemostrecent",
)
TIMERS_DUE = Gauge(
    "opsledger_timers_due",
    "Durable timers due and not yet fired: the runner's backlog",
    ["service"],
    multiprocess_mode="livemostrecent",
)
TIMERS_FIRED = Counter("opsledger_timers_fired_total", "Durable timers fired", ["service"])
TIMER_FAILURES = Counter("opsledger_timer_failures_total", "Timer handler failures (retried later)", ["service"])
TIMER_FIRE_LAG = Histogram(
    "opsledger_timer_fire_lag_seconds",
    "From a timer's due time to its firing",
    ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
