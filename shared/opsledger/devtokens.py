"""The demo people of `make up` and a local signing key to mint their tokens (never for production:
there, an OIDC issuer signs tokens and the services read its JWKS).

    python -m opsledger.devtokens keys   --dir .local/auth
    python -m opsledger.devtokens tokens --dir .local/auth --issuer I --audience A --out .local/tokens.env
    python -m opsledger.devtokens mint   --dir .local/auth --issuer I --audience A --sub alice --roles responder
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from opsledger.auth import public_jwk


@dataclass(frozen=True)
class DemoUser:
    """A person of the demo platform; `key` names the env-file line (OPSLEDGER_<KEY>_TOKEN)."""

    key: str
    sub: str
    name: str
    email: str
    roles: tuple[str, ...]

    @property
    def env_name(self) -> str:
        return f"OPSLEDGER_{self.key.upper()}_TOKEN"


# One table for every use: make up's tokens, and the assignment service's demo team (the manager
# and the two responders), which refers to them by `sub`.
DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("admin", "demo-admin", "Avery Admin", "avery.admin@example.com", ("admin",)),
    DemoUser("manager", "demo-manager", "Morgan Manager", "morgan.manager@example.com", ("manager",)),
    DemoUser("responder", "demo-responder", "Riley Responder", "riley.responder@example.com", ("responder",)),
    DemoUser("responder2", "demo-responder2", "Robin Responder", "robin.responder@example.com", ("responder",)),
    DemoUser("analyst", "demo-analyst", "Alex Analyst", "alex.analyst@example.com", ("analyst",)),
    DemoUser("reporter", "demo-reporter", "Rowan Reporter", "rowan.reporter@example.com", ("reporter",)),
)
DEMO_TEAM = ("demo-manager", "demo-responder", "demo-responder2")  # manager first


def demo_user(key: str) -> DemoUser:
    return next(u for u in DEMO_USERS if u.key == key)


@dataclass(frozen=True)
class SigningKey:
    """A private key that signs tokens, with the `kid` (RFC 7638 thumbprint) the services see."""

    private_key: Any
    algorithm: str

    @classmethod
    def generate(cls, algorithm: str = "RS256") -> SigningKey:
        if algorithm.startswith("ES"):
            return cls(ec.generate_private_key(ec.SECP256R1()), "ES256")
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm)

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        return cls(key, "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256")

    @property
    def kid(self) -> str:
        kid: str = public_jwk(self.private_key.public_key())["kid"]
        return kid

    def private_pem(self) -> bytes:
        pem: bytes = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return pem

    def public_pem(self) -> str:
        pem: bytes = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.decode()

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWKS document."""
        return {"keys": [{**public_jwk(self.private_key.public_key()), "alg": self.algorithm}]}

    def mint(
        self,
        sub: str,
        roles: Sequence[str],
        *,
        issuer: str,
        audience: str,
        name: str | None = None,
        email: str | None = None,
        lifetime: timedelta = timedelta(days=30),
        now: datetime | None = None,
        roles_claim: str = "roles",
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        """A signed token for `sub` with `roles` under `roles_claim` (a dotted path); `kid`
        overrides the key's own (tests forge kids with it)."""
        issued = now or datetime.now(UTC)
        body: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": sub,
            "iat": int(issued.timestamp()),
            "exp": int((issued + lifetime).timestamp()),
            "jti": str(uuid.uuid4()),
        }
        if name is not None:
            body["name"] = name
        if email is not None:
            body["email"] = email
        *parents, leaf = roles_claim.split(".")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(roles)
        body.update(claims)
        token: str = jwt.encode(body, self.private_key, algorithm=self.algorithm, headers={"kid": kid or self.kid})
        return token


def ensure_key_pair(directory: Path, algorithm: str = "RS256") -> SigningKey:
    """The key pair kept in `directory` (private.pem, mode 600, and public.pem), made once."""
    private, public = directory / "private.pem", directory / "public.pem"
    if private.exists():
        key = SigningKey.from_pem(private.read_bytes())
    else:
        directory.mkdir(parents=True, exist_ok=True)
        key = SigningKey.generate(algorithm)
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_pem())
    if not public.exists() or public.read_text() != key.public_pem():
        public.write_text(key.public_pem())
    return key


def _still_good(token: str, key: SigningKey, user: DemoUser, issuer: str, audience: str, renew_before: int) -> bool:
    """Whether a token written earlier still fits: same key, issuer, audience, person and roles,
    and more than `renew_before` seconds to live."""
    try:
        claims = jwt.decode(
            token, key.private_key.public_key(), algorithms=[key.algorithm], audience=audience, issuer=issuer
        )
    except jwt.PyJWTError:
        return False
    same = (claims.get("sub"), claims.get("name"), claims.get("email"), claims.get("roles")) == (
        user.sub,
        user.name,
        user.email,
        list(user.roles),
    )
    return same and int(claims["exp"]) - int(datetime.now(UTC).timestamp()) > renew_before


def demo_tokens(
    key: SigningKey,
    issuer: str,
    audience: str,
    days: int = 30,
    renew_after_days: int = 3,
    previous: dict[str, str] | None = None,
) -> dict[str, str]:
    """Env name -> token for every demo user, keeping a previous token until it is
    `renew_after_days` old (so a second `make up` writes the same file)."""
    previous = previous or {}
    renew_before = (days - renew_after_days) * 86400
    tokens = {}
    for user in DEMO_USERS:
        old = previous.get(user.env_name)
        if old and _still_good(old, key, user, issuer, audience, renew_before):
            tokens[user.env_name] = old
        else:
            tokens[user.env_name] = key.mint(
                user.sub,
                user.roles,
                issuer=issuer,
                audience=audience,
                name=user.name,
                email=user.email,
                lifetime=timedelta(days=days),
            )
    return tokens


def _read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsledger.devtokens", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="create the key pair once; print the public key's path")
    tokens = commands.add_parser("tokens", help="write every demo user's token to an env file")
    mint = commands.add_parser("mint", help="print one token")
    for p in (keys, tokens, mint):
        p.add_argument("--dir", type=Path, required=True, help="where private.pem and public.pem live")
        p.add_argument("--algorithm", default="RS256", choices=["RS256", "ES256"])
    for p in (tokens, mint):
        p.add_argument("--issuer", required=True)
        p.add_argument("--audience", required=True)
        p.add_argument("--days", type=int, default=30)
    tokens.add_argument("--out", type=Path, required=True)
    tokens.add_argument("--renew-after-days", type=int, default=3)
    mint.add_argument("--sub", required=True)
    mint.add_argument("--roles", required=True, help="comma-separated")
    mint.add_argument("--name")
    mint.add_argument("--email")
    args = parser.parse_args(argv)

    key = ensure_key_pair(args.dir, args.algorithm)
    if args.command == "keys":
        print(args.dir / "public.pem")
    elif args.command == "tokens":
        previous = _read_env(args.out)
        fresh = demo_tokens(key, args.issuer, args.audience, args.days, args.renew_after_days, previous)
        if fresh != previous:
            text = "".join(f"{name}={token}\n" for name, token in fresh.items())
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
    else:
        roles = [r.strip() for r in args.roles.split(",") if r.strip()]
        print(
            key.mint(
                args.sub,
                roles,
                issuer=args.issuer,
                audience=args.audience,
                name=args.name,
                email=args.email,
                lifetime=timedelta(days=args.days),
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
