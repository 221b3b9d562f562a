"""The production path: tokens verified against an issuer's JWKS served by a local HTTP server.
Key rotation is picked up without a restart, forged kids cannot hammer the issuer, and an
unreachable issuer leaves the cached keys working (an unknown kid is then 401, never 500)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from opsledger import problems
from opsledger.auth import JwksKeys, Principal, Verifier, require_roles, use_verifier, verifying_key
from opsledger.devtokens import SigningKey
from opsledger.settings import ServiceSettings

ISSUER, AUDIENCE = "https://issuer.test/realms/ops", "opsledger"


class Issuer:
    """A JWKS endpoint on 127.0.0.1 (ephemeral port) that counts its requests."""

    def __init__(self) -> None:
        self.keys: list[SigningKey] = []
        self.requests = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests += 1
                body = json.dumps({"keys": [k for key in issuer.keys for k in key.jwks()["keys"]]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/protocol/openid-connect/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def token(self, key: SigningKey, sub: str = "alice", roles: tuple[str, ...] = ("manager",)) -> str:
        return key.mint(sub, roles, issuer=ISSUER, audience=AUDIENCE, roles_claim="realm_access.roles")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.stop()


def app_with(keys: JwksKeys) -> FastAPI:
    app = FastAPI()
    problems.install(app)
    use_verifier(app, Verifier(keys, ISSUER, AUDIENCE, roles_claim="realm_access.roles"))

    @app.post("/assign")
    async def assign(who: Principal = Depends(require_roles("manager"))) -> dict[str, str]:
        return {"actor": who.actor}

    return app


async def post(app: FastAPI, token: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/assign", headers={"Authorization": f"Bearer {token}"})


async def test_rotation_rate_limit_and_an_unreachable_issuer(issuer: Issuer) -> None:
    old, new = SigningKey.generate("RS256"), SigningKey.generate("ES256")
    issuer.keys = [old]
    clock = FakeClock()
    keys = JwksKeys(issuer.url, cache_seconds=300, min_refresh_seconds=30, clock=clock)
    app = app_with(keys)

    first = await post(app, issuer.token(old))
    assert first.status_code == 200 and first.json() == {"actor": "user:alice"}
    assert (await post(app, issuer.token(old, sub="bob"))).status_code == 200
    assert issuer.requests == 1, "the JWKS is cached between requests"

    # The issuer rotates: a token with the new kid is accepted without a restart, one re-fetch.
    issuer.keys = [old, new]
    clock.now += 31
    rotated = await post(app, issuer.token(new, sub="carol"))
    assert rotated.status_code == 200, rotated.text
    assert issuer.requests == 2

    # Forged kids: each is refused, and within the refresh interval none reaches the issuer again.
    forged = SigningKey.generate("ES256")
    for _ in range(20):
        token = forged.mint("x", ["manager"], issuer=ISSUER, audience=AUDIENCE, kid=str(uuid.uuid4()))
        answer = await post(app, token)
        assert answer.status_code == 401 and "unknown signing key" in answer.json()["detail"]
    assert issuer.requests == 2, "unknown kids re-fetch the JWKS at most once per min_refresh_seconds"
    clock.now += 31
    assert (await post(app, forged.mint("x", ["manager"], issuer=ISSUER, audience=AUDIENCE))).status_code == 401
    assert issuer.requests == 3, "after the interval an unknown kid may re-fetch once"

    # The issuer goes away: cached keys keep working past the cache lifetime; unknown kids are 401.
    issuer.stop()
    clock.now += 10_000
    still = await post(app, issuer.token(new, sub="dave"))
    assert still.status_code == 200, still.text
    unknown = await post(app, SigningKey.generate("RS256").mint("x", ["manager"], issuer=ISSUER, audience=AUDIENCE))
    assert unknown.status_code == 401 and 'error="invalid_token"' in unknown.headers["www-authenticate"]
    assert (await post(app, issuer.token(old, sub="erin"))).status_code == 200
    await keys.close()


async def test_an_issuer_unreachable_from_the_start_is_401_not_500() -> None:
    keys = JwksKeys("http://127.0.0.1:9/jwks", timeout_seconds=1)
    answer = await post(
        app_with(keys), SigningKey.generate("RS256").mint("x", ["manager"], issuer=ISSUER, audience=AUDIENCE)
    )
    assert answer.status_code == 401 and "unknown signing key" in answer.json()["detail"]


async def test_jwks_settings_build_a_jwks_verifier_and_symmetric_keys_are_ignored(issuer: Issuer) -> None:
    key = SigningKey.generate("RS256")
    issuer.keys = [key]
    settings = ServiceSettings(
        auth_jwks_url=issuer.url,
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        auth_roles_claim="realm_access.roles",
    )
    verifier = Verifier.from_settings(settings)
    assert isinstance(verifier.keys, JwksKeys)
    assert (await verifier.verify(issuer.token(key))).sub == "alice"
    # An "oct" (shared secret) key in a JWKS verifies nothing, nor does an encryption key.
    assert verifying_key({"kty": "oct", "k": "c2VjcmV0", "kid": "s"}) is None
    assert verifying_key({"kty": "RSA", "use": "enc", "n": "x", "e": "AQAB"}) is None
