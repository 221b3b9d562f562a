"""Bearer tokens for tests: one local key pair per test session, the settings that make a service
trust it, and tokens for any person and roles."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opsledger.devtokens import SigningKey


@dataclass(frozen=True)
class TestTokens:
    __test__ = False  # not a test class, despite the name

    key: SigningKey
    issuer: str = "opsledger-test"
    audience: str = "opsledger"

    def settings(self) -> dict[str, Any]:
        """Settings kwargs that make a service verify these tokens."""
        return {
            "auth_public_key": self.key.public_pem(),
            "auth_issuer": self.issuer,
            "auth_audience": self.audience,
        }

    def env(self) -> dict[str, str]:
        """The same, as the environment of a service process."""
        return {f"OPSLEDGER_{name.upper()}": str(value) for name, value in self.settings().items()}

    def token(
        self,
        sub: str,
        roles: str | list[str] | tuple[str, ...] = (),
        *,
        name: str | None = None,
        email: str | None = None,
        lifetime: timedelta = timedelta(hours=1),
        **claims: Any,
    ) -> str:
        """A valid token for `sub` holding `roles`."""
        roles = [roles] if isinstance(roles, str) else list(roles)
        return self.key.mint(
            sub, roles, issuer=self.issuer, audience=self.audience, name=name, email=email, lifetime=lifetime, **claims
        )

    def headers(self, sub: str, *roles: str, **claims: Any) -> dict[str, str]:
        """`Authorization: Bearer <token>` for `sub` holding `roles`."""
        return {"Authorization": f"Bearer {self.token(sub, roles, **claims)}"}


@functools.cache
def session_tokens() -> TestTokens:
    """The session's tokens: one key pair per process (RS256, so tests can try HS/RS confusion)."""
    return TestTokens(SigningKey.generate("RS256"))
