"""Every endpoint of every service says who may call it (a person's roles, or an integration key),
and the README's roles table says the same."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from opsledger.auth import ROLES, roles_of

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["intake", "triage", "assignment", "sla", "resolution", "reporting"]
OPERATIONS = {"/healthz", "/readyz", "/metrics"}
# Alert endpoints authenticate monitoring systems by integration key, not people.
INTEGRATION_KEY = "integration key"
KEYED = {
    ("intake", "POST /v1/alerts"),
    ("intake", "POST /v1/integrations/alertmanager"),
    ("intake", "POST /v2/enqueue"),
}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def _calls(dependant: Any) -> list[Any]:
    found = []
    for dependency in dependant.dependencies:
        found.append(dependency.call)
        found.extend(_calls(dependency))
    return found


def api_routes(routes: list[Any], inherited: tuple[Any, ...] = ()) -> list[tuple[APIRoute, tuple[Any, ...]]]:
    """Every APIRoute, with the dependencies of the routers it was included from (FastAPI may
    keep an included router whole rather than copying its routes)."""
    found: list[tuple[APIRoute, tuple[Any, ...]]] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append((route, inherited))
        elif (router := getattr(route, "original_router", None)) is not None:
            extra = tuple(d.dependency for d in router.dependencies)
            found.extend(api_routes(router.routes, inherited + extra))
    return found


def route_roles() -> dict[tuple[str, str], str]:
    """(service, "METHOD /path") -> who may call it, as the README writes it."""
    table: dict[tuple[str, str], str] = {}
    for service in SERVICES:
        app = importlib.import_module(f"{service}.app").build(importlib.import_module(f"{service}.settings").Settings())
        for route, inherited in api_routes(app.routes):
            if route.path in OPERATIONS:
                continue
            for method in sorted(route.methods - {"HEAD"}):
                endpoint = f"{method} {route.path}"
                roles = roles_of([*inherited, *_calls(route.dependant)])
                if (service, endpoint) in KEYED:
                    assert roles is None
                    table[(service, endpoint)] = INTEGRATION_KEY
                elif (service, endpoint) == ("intake", "POST /v1/incidents"):
                    from intake.api import REPORT_ROLES

                    table[(service, endpoint)] = ", ".join(REPORT_ROLES) + f"; or an {INTEGRATION_KEY}"
                else:
                    assert roles is not None, f"{service} {endpoint} declares no roles"
                    assert set(roles) <= set(ROLES)
                    table[(service, endpoint)] = ", ".join(roles)
    return table


def readme_table() -> dict[tuple[str, str], str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- roles table -->", 2)
    assert len(section) == 3, "README.md has no '<!-- roles table -->' section"
    rows = {}
    for line in section[1].splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in SERVICES:
            rows[(cells[0], re.sub(r"\s+", " ", cells[1]))] = cells[2]
    return rows


def test_every_write_endpoint_declares_its_roles() -> None:
    table = route_roles()
    writes = {k for k in table if k[1].split()[0] in WRITES}
    assert writes, "no write endpoints found"
    for key in writes:
        assert table[key], key


def test_readme_roles_table_is_current() -> None:
    assert readme_table() == route_roles()


@pytest.mark.parametrize("role", ROLES)
def test_every_role_is_used_somewhere(role: str) -> None:
    assert any(role in who for who in route_roles().values())
