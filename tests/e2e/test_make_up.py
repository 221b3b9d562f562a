"""`make up` brings all six services to ready as separate processes and writes the env file;
`make down` stops what it started (here: the services, not the test session's Kafka/PostgreSQL)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from opsledger.devtokens import DEMO_USERS, demo_user
from opsledger.testing import TestInfra, eventually
from opsledger.testing.helpers import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["intake", "triage", "assignment", "sla", "resolution", "reporting"]


async def make(target: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, ["make", "-s", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


async def test_make_up_starts_every_service_ready_and_make_down_stops_them(infra: TestInfra, tmp_path: Path) -> None:
    prefix = infra.unique("up")
    kafka_port = infra.kafka_bootstrap.rsplit(":", 1)[1]
    pg = urlsplit(infra.postgres_dsn)
    ports = {s: free_port() for s in SERVICES}
    smtp_port = free_port()
    env = {
        **os.environ,
        "OPSLEDGER_STATE_DIR": str(tmp_path),
        # The test session's Kafka and PostgreSQL are already running: make up must reuse them.
        "KAFKA_PORT": kafka_port,
        "KAFKA_DIR": os.environ.get("KAFKA_DIR", str(ROOT / ".local/test/kafka")),
        "PG_PORT": str(pg.port),
        "PG_DIR": os.environ.get("PG_DIR", str(ROOT / ".local/test/postgres")),
        "OPSLEDGER_DB_PREFIX": f"{prefix}_",
        "OPSLEDGER_TOPIC_PREFIX": prefix,
        **{f"{s.upper()}_PORT": str(p) for s, p in ports.items()},
        "SMTP_PORT": str(smtp_port),
    }
    try:
        up = await make("up", env)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        values = read_env_file(tmp_path / "opsledger.env")
        for s, port in ports.items():
            assert values[f"OPSLEDGER_{s.upper()}_URL"] == f"http://127.0.0.1:{port}"
        assert values["OPSLEDGER_DEMO_INTEGRATION_KEY"]
        assert (values["OPSLEDGER_SMTP_PORT"], values["OPSLEDGER_MAIL_DIR"]) == (str(smtp_port), str(tmp_path / "mail"))
        _background_services_yield_the_cpu(tmp_path / "run")
        await _demo_tokens_work(tmp_path, values)
        await _first_alert_pages_the_on_call_person(tmp_path / "mail", values)
        async with httpx.AsyncClient(timeout=5) as client:
            for s, port in ports.items():
                ready = await client.get(f"http://127.0.0.1:{port}/readyz")
                assert ready.status_code == 200, f"{s}: {ready.text}"
                assert ready.json()["service"] == s
                metrics = await client.get(f"http://127.0.0.1:{port}/metrics")
                assert "opsledger_http_requests_total" in metrics.text

        again = await make("up", env)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert again.stdout.count("already running") >= len(SERVICES) + 2, "make up is not idempotent"
        assert read_env_file(tmp_path / "opsledger.env") == values, "a second make up changed the credentials"
    finally:
        down = await make("down", env, timeout=120)
        for s in SERVICES:
            await _drop(infra, f"{prefix}_{s}")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not list((tmp_path / "run").glob("*.pid")), "make down left services running"
    async with httpx.AsyncClient(timeout=2) as client:
        for port in ports.values():
            with pytest.raises(httpx.TransportError):
                await client.get(f"http://127.0.0.1:{port}/healthz")
    # Kafka and PostgreSQL were not started by this make up, so make down left them running.
    assert (await _pg_alive(infra)) is True


def _background_services_yield_the_cpu(run: Path) -> None:
    """Reporting and the SLA clocks run at nice 10, the alert's stages and paging at 0: each as a
    process and, where Linux shares the CPU between sessions first (autogroup), as its session."""
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    by_session = autogroup.exists() and autogroup.read_text().strip() == "1"
    inherited = os.nice(0)  # `nice -n` adds to what make up itself runs at
    for s in SERVICES:
        pid = (run / f"{s}.pid").read_text().strip()
        expected = 10 if s in ("sla", "reporting") else 0
        # The fields after the command name: the nice value is the 19th field of the whole line.
        nice = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16])
        assert nice == min(19, inherited + expected), f"{s} runs at nice {nice}"
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert command[1:3] == [b"-m", s.encode()], f"pid {pid} is not {s}: {command}"
        if by_session:
            group = Path(f"/proc/{pid}/autogroup").read_text()  # "/autogroup-123 nice 10"
            assert group.split()[-1] == str(expected), f"{s}'s session: {group}"  # a new session starts at 0


async def _demo_tokens_work(state: Path, values: dict[str, str]) -> None:
    """Every demo user's JWT names its person, lives 30 days, and the services accept it."""
    public_key = (state / "auth" / "public.pem").read_text()
    for user in DEMO_USERS:
        claims = jwt.decode(
            values[user.env_name],
            public_key,
            algorithms=["RS256", "ES256"],
            audience="opsledger",
            issuer="opsledger-local",
        )
        assert (claims["sub"], claims["name"], claims["email"], claims["roles"]) == (
            user.sub, user.name, user.email, list(user.roles),
        )  # fmt: skip
        assert claims["exp"] - time.time() >= 29.9 * 86400, f"{user.env_name} expires too soon"
    assert not (state / "auth" / "private.pem").stat().st_mode & 0o077, "the private key is readable by others"

    def bearer(who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {values[f'OPSLEDGER_{who}_TOKEN']}"}

    intake, reporting = values["OPSLEDGER_INTAKE_URL"], values["OPSLEDGER_REPORTING_URL"]
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{reporting}/v1/incidents", headers=bearer("ANALYST"))).status_code == 200
        assert (await client.get(f"{reporting}/v1/incidents")).status_code == 401
        refused = await client.post(f"{reporting}/v1/admin/rebuild", headers=bearer("ANALYST"))
        assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
        report = {"title": "Checkout page blank for some users", "service": "checkout"}
        logged = await client.post(f"{intake}/v1/incidents", json=report, headers=bearer("REPORTER"))
        assert logged.status_code == 201, logged.text
        incident = logged.json()["incident_id"]

        async def recorded() -> list[dict[str, Any]]:
            answer = await client.get(f"{reporting}/v1/incidents/{incident}/timeline", headers=bearer("RESPONDER"))
            events: list[dict[str, Any]] = answer.json()["events"] if answer.status_code == 200 else []
            return events

        [first, *_] = await eventually(recorded, timeout=60, what="the report reaches reporting")
    assert first["event_type"] == "IncidentLogged" and first["actor"] == "user:demo-reporter"


async def _first_alert_pages_the_on_call_person(mail: Path, values: dict[str, str]) -> None:
    """A newcomer's first alert: assigned to the demo team's on-call person, who is emailed (the
    mail catcher saves the page as an .eml) with the incident's id, priority, title, why them, and a link."""
    alert = {"dedup_key": "db-1-disk", "title": "db-1 disk 95% full", "severity": "critical", "service": "payments-db"}
    key = values["OPSLEDGER_DEMO_INTEGRATION_KEY"]
    async with httpx.AsyncClient(timeout=10) as client:
        posted = await client.post(
            f"{values['OPSLEDGER_INTAKE_URL']}/v1/alerts", json=alert, headers={"Authorization": f"Bearer {key}"}
        )
    assert posted.status_code == 202, posted.text
    incident = posted.json()["incident_id"]
    responder = demo_user("responder")

    def page() -> tuple[str, str] | None:
        """(To, text) of the page about the incident, once saved."""
        for path in sorted(mail.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, email.message.EmailMessage)
            body = message.get_body(("plain",))
            text = body.get_content() if body is not None else ""
            if incident in text and "IncidentAssigned" in str(message["Subject"]):
                return str(message["To"]), text
        return None

    async def paged() -> tuple[str, str] | None:
        return await asyncio.to_thread(page)

    to, text = await eventually(paged, timeout=90, what="the on-call person's page in the mail folder")
    assert responder.email in to, to
    assert "db-1 disk 95% full" in text and "Priority: P" in text and "Why you:" in text, text
    assert f"{values['OPSLEDGER_REPORTING_URL']}/v1/incidents/{incident}" in text


async def _drop(infra: TestInfra, name: str) -> None:
    await infra.drop_database(name)


async def _pg_alive(infra: TestInfra) -> bool:
    import asyncpg

    conn = await asyncpg.connect(f"{infra.postgres_dsn}/postgres")
    await conn.close()
    return True
