"""OAuth2 client-credentials tokens as real HS256 JWTs, and their verification.

Expiry is judged on the *simulator's* clock so tests can expire a token by moving a fake
clock: ``sim_now = wall time at start + (clock() - clock at start)``. Tokens carry ``exp``
and ``iat`` on that timeline, which coincides with wall time when the clock is real.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Container
from typing import Any, Final

import jwt

__all__ = ["TokenIssuer"]

_ISSUER: Final = "https://courses.edx.org/oauth2"
_AUDIENCE: Final = "openedx"
_LEEWAY: Final = 1.0  # JWT_LEEWAY in edx-platform


class TokenIssuer:
    """Issues and verifies access tokens for one client."""

    def __init__(
        self,
        *,
        client_id: str,
        signing_key: str,
        enterprise_uuid: str,
        ttl: int,
        clock: Callable[[], float],
    ) -> None:
        self.client_id = client_id
        self.ttl = ttl
        self._key = signing_key
        self._enterprise = enterprise_uuid
        self._clock = clock
        self._clock0 = clock()
        self._wall0 = time.time()

    def now(self) -> float:
        """Seconds since the Unix epoch on the simulator's timeline."""
        return self._wall0 + (self._clock() - self._clock0)

    def issue_jwt(self, client_id: str | None = None, enterprise_uuid: str | None = None) -> str:
        """A signed JWT shaped like the LMS's (``create_jwt_token_dict``), for this client
        or (``--tenants``) another one signed with the same key."""
        client_id = client_id or self.client_id
        enterprise = enterprise_uuid or self._enterprise
        now = int(self.now())
        claims: dict[str, Any] = {
            "aud": _AUDIENCE,
            "iss": _ISSUER,
            "iat": now,
            "exp": now + self.ttl,
            "jti": str(uuid.uuid4()),
            "sub": client_id,
            "client_id": client_id,
            "preferred_username": f"{client_id}-service-user",
            "scopes": ["read", "write", "profile", "email"],
            "version": "1.2.0",
            "grant_type": "client-credentials",
            "is_restricted": False,
            "filters": [],
            "email_verified": True,
            "roles": [f"enterprise_catalog_admin:{enterprise}"],
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    @staticmethod
    def issue_opaque() -> str:
        """What the LMS returns without ``token_type=jwt``: a DOT bearer token, useless here."""
        return secrets.token_urlsafe(24)

    def verify(self, token: str, clients: Container[str] | None = None
               ) -> dict[str, Any] | None:
        """Claims of a valid, unexpired token for this client (or any of ``clients``),
        else ``None``."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=_AUDIENCE,
                issuer=_ISSUER,
                # Time checks run below on the simulator clock, not on wall time.
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["exp", "iat", "jti", "sub"],
                },
            )
        except jwt.PyJWTError:
            return None
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or self.now() > exp + _LEEWAY:
            return None
        if clients is not None:
            return claims if claims.get("sub") in clients else None
        if claims.get("sub") != self.client_id:
            return None
        return claims
