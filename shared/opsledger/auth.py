"""Who is calling: bearer JWTs verified against an OIDC issuer's JWKS (production) or a local
public key (`make up`, tests), and the roles each route accepts. Integration keys belong to intake.

A person is the token's `sub`; events they cause record the actor `user:<sub>`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from opsledger.problems import FieldError, Problem
from opsledger.settings import ServiceSettings

log = logging.getLogger(__name__)

ROLES = ("reporter", "responder", "manager", "analyst", "admin")
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_CURVE_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


@dataclass(frozen=True)
class Principal:
    """The person a verified token names."""

    sub: str
    name: str | None = None
    email: str | None = None
    roles: frozenset[str] = frozenset()

    @property
    def actor(self) -> str:
        return f"user:{self.sub}"


class AuthError(Problem):
    """401 (no valid token) or 403 (valid token, none of the roles), with `WWW-Authenticate`."""

    def __init__(self, status: int, error: str, description: str) -> None:
        # RFC 6750 §3: the description is a quoted-string; keep it free of quotes and backslashes.
        quoted = description.replace("\\", "/").replace('"', "'")
        super().__init__(
            status,
            description,
            [FieldError("authorization", description)],
            {"WWW-Authenticate": f'Bearer error="{error}", error_description="{quoted}"'},
        )


def invalid_token(description: str) -> AuthError:
    return AuthError(401, "invalid_token", description)


# --- keys -------------------------------------------------------------------------------------------


def public_jwk(key: Any) -> dict[str, Any]:
    """A public key as a JWK (RFC 7517) with its RFC 7638 thumbprint as `kid`."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
        members: tuple[str, ...] = ("e", "kty", "n")
    elif isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
        members = ("crv", "kty", "x", "y")
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key, as_dict=True)
        members = ("crv", "kty", "x")
    else:
        raise ValueError(f"unsupported key type {type(key).__name__}")
    public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    canonical = json.dumps({m: public[m] for m in members}, separators=(",", ":"), sort_keys=True)
    public["kid"] = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    public["use"] = "sig"
    return public


def algorithms_for(jwk: dict[str, Any]) -> frozenset[str]:
    """The signature algorithms a JWK may verify: its `alg` if it names one, else its key type's."""
    if isinstance(jwk.get("alg"), str):
        return frozenset({jwk["alg"]})
    kty = jwk.get("kty")
    if kty == "RSA":
        return _RSA_ALGORITHMS
    if kty == "EC" and jwk.get("crv") in _CURVE_ALGORITHM:
        return frozenset({_CURVE_ALGORITHM[jwk["crv"]]})
    if kty == "OKP":
        return frozenset({"EdDSA"})
    return frozenset()  # "oct" (shared secrets) and anything unknown verify nothing here


@dataclass(frozen=True)
class VerifyingKey:
    kid: str | None
    key: Any  # a cryptography public key
    algorithms: frozenset[str]


def verifying_key(jwk: dict[str, Any]) -> VerifyingKey | None:
    """A JWK usable for signatures, or None (encryption keys, symmetric keys, unparsable ones)."""
    if jwk.get("use") not in (None, "sig") or jwk.get("kty") not in ("RSA", "EC", "OKP"):
        return None
    algorithms = algorithms_for(jwk)
    if not algorithms:
        return None
    try:
        parsed = jwt.PyJWK(jwk, algorithm=next(iter(sorted(algorithms))))
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        log.warning("JWKS key %r is not usable; skipped", jwk.get("kid"))
        return None
    kid = jwk.get("kid")
    return VerifyingKey(kid if isinstance(kid, str) else None, parsed.key, algorithms)


class KeySource(Protocol):
    async def key_for(self, kid: str | None) -> VerifyingKey: ...


def load_public_key(value: str) -> Any:
    """A public key from PEM text or from the path of a PEM file."""
    pem = value if value.lstrip().startswith("-----BEGIN") else Path(value).expanduser().read_text()
    return serialization.load_pem_public_key(pem.encode())


class LocalKey:
    """One public key given in the settings (`make up`, tests)."""

    def __init__(self, public_key: Any) -> None:
        jwk = public_jwk(public_key)
        self.key = VerifyingKey(jwk["kid"], public_key, algorithms_for(jwk))

    async def key_for(self, kid: str | None) -> VerifyingKey:
        if kid is not None and kid != self.key.kid:
            raise invalid_token(f"unknown signing key (kid {kid[:64]!r})")
        return self.key


class JwksKeys:
    """An OIDC issuer's JWKS, fetched with httpx (never blocking the event loop) and cached. An
    unknown `kid` (the issuer rotated its keys) re-reads the set, at most once per
    `min_refresh_seconds`; when the issuer is unreachable the cached keys keep working."""

    def __init__(
        self,
        url: str,
        cache_seconds: float = 300.0,
        min_refresh_seconds: float = 30.0,
        timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self.fetches = 0  # attempts, successful or not
        self._keys: list[VerifyingKey] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    def _find(self, kid: str | None) -> VerifyingKey | None:
        if kid is None:
            # Without a kid, only an unambiguous set will do.
            return self._keys[0] if len(self._keys) == 1 else None
        return next((k for k in self._keys if k.kid == kid), None)

    def _may_fetch(self) -> bool:
        return self._attempted_at is None or self.clock() - self._attempted_at >= self.min_refresh_seconds

    def _stale(self) -> bool:
        return self._fetched_at is None or self.clock() - self._fetched_at >= self.cache_seconds

    async def key_for(self, kid: str | None) -> VerifyingKey:
        found = self._find(kid)
        if found is not None:
            if self._stale() and self._may_fetch() and not self._background:
                # Known key: answer now, refresh behind the request.
                task = asyncio.create_task(self.refresh(), name="jwks-refresh")
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return found
        if self._may_fetch():
            await self.refresh()
            found = self._find(kid)
        if found is None:
            which = f"kid {kid[:64]!r}" if kid is not None else "no kid, and the issuer has several keys"
            raise invalid_token(f"unknown signing key ({which})")
        return found

    async def refresh(self) -> None:
        """Re-read the JWKS (one fetch at a time; a caller that waited for another's fetch uses it)."""
        asked_at = self._attempted_at
        async with self._lock:
            if self._attempted_at != asked_at:
                return  # someone else fetched while this caller waited
            self._attempted_at = self.clock()
            self.fetches += 1
            try:
                async with httpx.AsyncClient(timeout=self.timeout_seconds) as client:
                    answer = await client.get(self.url, headers={"accept": "application/json"})
                    answer.raise_for_status()
                    document = answer.json()
                keys = [k for k in (verifying_key(j) for j in document.get("keys", []) if isinstance(j, dict)) if k]
            except (httpx.HTTPError, ValueError, AttributeError, TypeError) as exc:
                log.warning(
                    "JWKS %s unreachable or unusable, keeping %d cached keys: %r", self.url, len(self._keys), exc
                )
                return
            if not keys:
                log.warning("JWKS %s holds no usable signing key; keeping %d cached keys", self.url, len(self._keys))
                return
            self._keys = keys
            self._fetched_at = self.clock()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class NoKeys:
    """No usable JWKS URL or public key is configured: nobody can be verified."""

    def __init__(self, reason: str = "this service has no token verification configured") -> None:
        self.reason = reason

    async def key_for(self, kid: str | None) -> VerifyingKey:
        raise invalid_token(self.reason)


# --- verification -----------------------------------------------------------------------------------


@dataclass
class Verifier:
    """Checks a bearer JWT (signature, algorithm, issuer, audience, expiry) and names its person."""

    keys: KeySource
    issuer: str
    audience: str
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    roles_claim: str = "roles"
    leeway_seconds: float = 30.0

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Verifier:
        keys: KeySource
        if settings.auth_jwks_url:
            keys = JwksKeys(
                settings.auth_jwks_url,
                settings.auth_jwks_cache_seconds,
                settings.auth_jwks_min_refresh_seconds,
                settings.auth_jwks_timeout_seconds,
            )
        elif settings.auth_public_key:
            try:
                keys = LocalKey(load_public_key(settings.auth_public_key))
            except (OSError, ValueError, TypeError) as exc:
                log.error("OPSLEDGER_AUTH_PUBLIC_KEY is unusable, every bearer token is refused: %r", exc)
                keys = NoKeys("this service's verification key is unusable (see its log)")
        else:
            log.warning("no OPSLEDGER_AUTH_JWKS_URL or OPSLEDGER_AUTH_PUBLIC_KEY: every bearer token is refused")
            keys = NoKeys()
        return cls(
            keys,
            settings.auth_issuer,
            settings.auth_audience,
            tuple(settings.auth_algorithms),
            settings.auth_roles_claim,
            settings.auth_leeway_seconds,
        )

    async def verify(self, token: str) -> Principal:
        """The token's person, or AuthError 401 saying what is wrong with it."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid_token("malformed token: not a signed JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.algorithms:
            # Refused before any key is touched: "none", and HS256 "signed" with our public key.
            raise invalid_token(f"algorithm {alg!r} is not accepted (accepted: {', '.join(self.algorithms)})")
        if kid is not None and not isinstance(kid, str):
            raise invalid_token("malformed token: kid is not a string")
        key = await self.keys.key_for(kid)
        if alg not in key.algorithms:
            raise invalid_token(f"algorithm {alg} does not fit the signing key (kid {key.kid!r})")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise invalid_token("token expired") from None
        except jwt.InvalidAudienceError:
            raise invalid_token(f"wrong audience (expected {self.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise invalid_token(f"wrong issuer (expected {self.issuer!r})") from None
        except jwt.InvalidSignatureError:
            raise invalid_token("bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"missing claim {exc.claim!r}") from None
        except jwt.ImmatureSignatureError:
            raise invalid_token("token not valid yet (nbf or iat in the future)") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise invalid_token(f"invalid token: {type(exc).__name__}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise invalid_token("claim 'sub' is not a non-empty string")
        return Principal(
            sub=sub,
            name=_text(claims.get("name")) or _text(claims.get("preferred_username")),
            email=_text(claims.get("email")),
            roles=frozenset(roles_at(claims, self.roles_claim)),
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def roles_at(claims: dict[str, Any], path: str) -> list[str]:
    """The roles at a dotted claim path (`realm_access.roles`): a list of strings, or one string
    of space- or comma-separated names."""
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return [r for r in value.replace(",", " ").split() if r]
    if isinstance(value, list):
        return [r for r in value if isinstance(r, str)]
    return []


# --- FastAPI ----------------------------------------------------------------------------------------

_STATE = "opsledger_verifier"
# Declares the scheme in OpenAPI (/docs "Authorize"); the header is read by authenticate().
bearer_scheme = HTTPBearer(auto_error=False, bearerFormat="JWT", description="A JWT from the OIDC issuer")


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def use_verifier(app: Any, verifier: Verifier) -> None:
    """Make `app` verify tokens with `verifier` (by default one is built from its runtime's settings)."""
    setattr(app.state, _STATE, verifier)


def verifier_of(request: Request) -> Verifier:
    state = request.app.state
    verifier: Verifier | None = getattr(state, _STATE, None)
    if verifier is None:
        verifier = Verifier.from_settings(state.runtime.settings)
        setattr(state, _STATE, verifier)
    return verifier


async def authenticate(request: Request) -> Principal:
    """The caller's verified person; AuthError 401 when the token is missing or invalid."""
    token = bearer_token(request)
    if token is None:
        raise invalid_token("missing bearer token (Authorization: Bearer <JWT>)")
    return await verifier_of(request).verify(token)


# Any verified person, whatever their roles (endpoints that accept only some use require_roles).
ActorDep = Annotated[Principal, Depends(authenticate)]


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts: a JWT rather than an opaque key."""
    return token.count(".") == 2


RoleCheck = Callable[..., Awaitable[Principal]]


def check_roles(principal: Principal, roles: Iterable[str]) -> Principal:
    """`principal` if it holds one of `roles`, else AuthError 403 naming the roles that would do."""
    roles = tuple(roles)
    if principal.roles.isdisjoint(roles):
        has = ", ".join(sorted(principal.roles)) or "none"
        raise AuthError(
            403, "insufficient_scope", f"requires one of the roles: {', '.join(roles)} (the token has: {has})"
        )
    return principal


def require_roles(*roles: str) -> RoleCheck:
    """FastAPI dependency: a verified person holding at least one of `roles` (403 naming them
    otherwise). Returns the Principal; record `principal.actor` on the events it causes."""
    unknown = sorted(set(roles) - set(ROLES))
    if not roles or unknown:
        raise ValueError(f"require_roles needs some of {ROLES}, got {roles}")

    async def check(request: Request, _: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> Principal:
        return check_roles(await authenticate(request), roles)

    check.roles = roles  # type: ignore[attr-defined]  # read by the route-table test and docs
    return check


def roles_of(dependencies: Iterable[Any]) -> tuple[str, ...] | None:
    """The roles a route's dependencies demand (None when none of them is a require_roles check)."""
    for dependency in dependencies:
        roles = getattr(dependency, "roles", None)
        if roles is not None:
            return tuple(roles)
    return None
