"""Bearer JWTs: every way a token can be bad gets 401 with WWW-Authenticate, a missing role 403
naming the roles that would do, and a good token names its person (in-process app, no I/O)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import Depends, FastAPI

from opsledger import problems
from opsledger.auth import LocalKey, Principal, Verifier, require_roles, roles_at, use_verifier
from opsledger.devtokens import DEMO_USERS, SigningKey, demo_tokens
from opsledger.settings import ServiceSettings
from opsledger.testing import TestTokens, session_tokens

ISSUER, AUDIENCE = "opsledger-test", "opsledger"


def app_for(verifier: Verifier) -> FastAPI:
    app = FastAPI()
    problems.install(app)
    use_verifier(app, verifier)

    @app.post("/escalate")
    async def escalate(who: Principal = Depends(require_roles("manager", "admin"))) -> dict[str, Any]:
        return {"actor": who.actor, "name": who.name, "email": who.email, "roles": sorted(who.roles)}

    return app


@pytest.fixture
async def client(tokens: TestTokens) -> AsyncIterator[httpx.AsyncClient]:
    verifier = Verifier.from_settings(ServiceSettings(**tokens.settings()))
    transport = httpx.ASGITransport(app=app_for(verifier))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "iat": now, "exp": now + 600, "roles": ["admin"]}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def hs256_with_public_key(tokens: TestTokens) -> str:
    """The classic key-confusion forgery: HS256 'signed' with the verifier's public key as secret."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": tokens.key.kid}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = hmac.new(tokens.key.public_pem().encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def unsigned(tokens: TestTokens) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": tokens.key.kid}).encode())
    return f"{header}.{b64(json.dumps(claims()).encode())}."


def tampered(tokens: TestTokens) -> str:
    header, _, signature = tokens.token("alice", ["responder"]).split(".")
    return f"{header}.{b64(json.dumps(claims()).encode())}.{signature}"  # roles raised to admin


def signed_by_another_key_with_our_kid(tokens: TestTokens) -> str:
    other = SigningKey.generate("RS256")
    return jwt.encode(claims(), other.private_key, algorithm="RS256", headers={"kid": tokens.key.kid})


def with_unknown_kid(tokens: TestTokens) -> str:
    return jwt.encode(claims(), tokens.key.private_key, algorithm="RS256", headers={"kid": "forged-kid"})


BAD_TOKENS = {
    "missing": (None, "missing bearer token"),
    "not a JWT": (lambda t: "not-a-jwt", "malformed"),
    "three garbage parts": (lambda t: "a.b.c", "malformed"),
    "expired": (lambda t: t.token("alice", "admin", lifetime=timedelta(minutes=-5)), "expired"),
    "wrong issuer": (lambda t: t.token("alice", "admin", iss="https://evil.example"), "wrong issuer"),
    "wrong audience": (lambda t: t.token("alice", "admin", aud="someone-else"), "wrong audience"),
    "no audience": (lambda t: t.token("alice", "admin", aud=None), "aud"),
    "no sub": (lambda t: t.key.mint("", ["admin"], issuer=ISSUER, audience=AUDIENCE), "sub"),
    "tampered payload": (tampered, "bad signature"),
    "signed by another key": (signed_by_another_key_with_our_kid, "bad signature"),
    "alg none": (unsigned, "algorithm 'none' is not accepted"),
    "HS256 signed with the public key": (hs256_with_public_key, "algorithm 'HS256' is not accepted"),
    "unknown kid": (with_unknown_kid, "unknown signing key"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_get_401_with_www_authenticate(
    case: str, client: httpx.AsyncClient, tokens: TestTokens
) -> None:
    make, says = BAD_TOKENS[case]
    headers = {} if make is None else {"Authorization": f"Bearer {make(tokens)}"}
    response = await client.post("/escalate", headers=headers)
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="'), challenge
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["title"], body["type"]) == (401, "Unauthorized", "about:blank")
    assert says in body["detail"] and body["errors"][0]["field"] == "authorization", body


async def test_a_missing_role_is_403_naming_the_roles_that_would_do(
    client: httpx.AsyncClient, tokens: TestTokens
) -> None:
    response = await client.post("/escalate", headers=tokens.headers("rita", "responder", "analyst"))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    detail = response.json()["detail"]
    assert "manager, admin" in detail and "analyst, responder" in detail, detail
    no_roles = await client.post("/escalate", headers=tokens.headers("nobody"))
    assert no_roles.status_code == 403 and "(the token has: none)" in no_roles.json()["detail"]


async def test_a_good_token_names_its_person(client: httpx.AsyncClient, tokens: TestTokens) -> None:
    headers = tokens.headers("u-42", "manager", name="Mina Manager", email="mina@example.com")
    response = await client.post("/escalate", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "actor": "user:u-42",
        "name": "Mina Manager",
        "email": "mina@example.com",
        "roles": ["manager"],
    }


async def test_leeway_accepts_a_token_just_expired_and_es256_keys_verify() -> None:
    key = SigningKey.generate("ES256")
    verifier = Verifier(LocalKey(key.private_key.public_key()), ISSUER, AUDIENCE, leeway_seconds=30)
    token = key.mint("u", ["admin"], issuer=ISSUER, audience=AUDIENCE, lifetime=timedelta(seconds=-10))
    assert (await verifier.verify(token)).sub == "u"


def test_roles_come_from_the_configured_claim_path() -> None:
    keycloak = {"realm_access": {"roles": ["manager", "offline_access"]}}
    assert roles_at(keycloak, "realm_access.roles") == ["manager", "offline_access"]
    assert roles_at({"groups": "responder analyst"}, "groups") == ["responder", "analyst"]
    assert roles_at({"roles": "nope"}, "realm_access.roles") == []
    assert roles_at({"roles": [1, "admin"]}, "roles") == ["admin"]


async def test_keycloak_shaped_tokens_verify_with_the_roles_claim_setting(tokens: TestTokens) -> None:
    settings = ServiceSettings(**tokens.settings(), auth_roles_claim="realm_access.roles")
    verifier = Verifier.from_settings(settings)
    token = tokens.key.mint(
        "kc-user", ["responder"], issuer=ISSUER, audience=AUDIENCE, roles_claim="realm_access.roles"
    )
    assert (await verifier.verify(token)).roles == {"responder"}


def test_settings_refuse_symmetric_algorithms_and_none() -> None:
    for refused in ("HS256", "none", "RS256,HS512"):
        with pytest.raises(ValueError, match="refused"):
            ServiceSettings(auth_algorithms=refused)
    assert ServiceSettings(auth_algorithms="RS256, PS256").auth_algorithms == ["RS256", "PS256"]
    # No key and no JWKS: nothing verifies (a default must never work in production).
    assert ServiceSettings().auth_public_key is None and ServiceSettings().auth_jwks_url is None


async def test_a_service_without_keys_refuses_every_token(tokens: TestTokens) -> None:
    verifier = Verifier.from_settings(ServiceSettings())
    transport = httpx.ASGITransport(app=app_for(verifier))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        response = await c.post("/escalate", headers=tokens.headers("a", "admin"))
    assert response.status_code == 401 and "no token verification configured" in response.json()["detail"]


def test_public_key_setting_takes_pem_text_or_a_path(tmp_path: Any, tokens: TestTokens) -> None:
    path = tmp_path / "public.pem"
    path.write_text(tokens.key.public_pem())
    for value in (tokens.key.public_pem(), str(path)):
        verifier = Verifier.from_settings(ServiceSettings(auth_public_key=value))
        assert isinstance(verifier.keys, LocalKey) and verifier.keys.key.kid == tokens.key.kid


async def test_demo_tokens_name_each_demo_user_and_are_kept_until_due_for_renewal() -> None:
    key = SigningKey.generate("ES256")
    first = demo_tokens(key, ISSUER, AUDIENCE)
    assert list(first) == [u.env_name for u in DEMO_USERS]
    assert {"OPSLEDGER_ADMIN_TOKEN", "OPSLEDGER_RESPONDER2_TOKEN", "OPSLEDGER_REPORTER_TOKEN"} <= set(first)
    verifier = Verifier(LocalKey(key.private_key.public_key()), ISSUER, AUDIENCE)
    for user in DEMO_USERS:
        who = await verifier.verify(first[user.env_name])
        assert (who.sub, who.name, who.email, who.roles) == (user.sub, user.name, user.email, set(user.roles))
        exp = jwt.decode(first[user.env_name], options={"verify_signature": False})["exp"]
        assert exp - datetime.now(UTC).timestamp() > 29 * 86400
    assert demo_tokens(key, ISSUER, AUDIENCE, previous=first) == first
    # Another audience (or key, or issuer) makes them invalid: re-minted.
    assert demo_tokens(key, ISSUER, "other", previous=first) != first


def test_session_tokens_are_one_key_pair_per_session() -> None:
    assert session_tokens() is session_tokens()


async def test_an_unusable_public_key_setting_refuses_tokens_instead_of_failing(tokens: TestTokens) -> None:
    for value in ("/nonexistent/public.pem", "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"):
        verifier = Verifier.from_settings(ServiceSettings(**{**tokens.settings(), "auth_public_key": value}))
        with pytest.raises(problems.Problem, match="unusable") as refused:
            await verifier.verify(tokens.token("a", "admin"))
        assert refused.value.status_code == 401
