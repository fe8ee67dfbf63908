"""Client-credentials JWT tokens: fetched once, shared, refreshed ahead of expiry.

The token's lifetime comes from ``expires_in`` in the grant (the doc says it "may change
at any time and should not be hard-coded"); if a server omits it, the JWT's own ``exp``
claim is read; if both are missing the token is used until a 401. Refreshes happen under
one lock, so a hundred workers that find the token stale cause one token request. The
HTTP call itself is injected (``client.py`` owns HTTP).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from harvester.errors import AuthError

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Grant:
    """What the token endpoint answered (already decoded)."""

    access_token: str
    token_type: str
    expires_in: float | None

    def __repr__(self) -> str:
        return f"Grant(access_token='***', token_type={self.token_type!r}, " \
               f"expires_in={self.expires_in!r})"


def parse_grant(body: object) -> Grant:
    """Validate a token endpoint body ``{access_token, token_type, expires_in, scope}``."""
    if not isinstance(body, dict):
        raise AuthError("token endpoint answered something other than a JSON object")
    token = body.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise AuthError("token endpoint answered without an access_token")
    ttype = body.get("token_type", "JWT")
    if not isinstance(ttype, str) or ttype.upper() != "JWT":
        raise AuthError(f"token endpoint issued a {ttype!r} token; the API needs JWT "
                        "(the harvester asks with token_type=jwt)")
    raw = body.get("expires_in")
    expires_in: float | None
    if isinstance(raw, bool) or raw is None:
        expires_in = None
    elif isinstance(raw, int | float):
        expires_in = float(raw)
    elif isinstance(raw, str):
        try:
            expires_in = float(raw)
        except ValueError:
            expires_in = None
    else:
        expires_in = None
    if expires_in is None:
        expires_in = _jwt_lifetime(token)
    return Grant(token.strip(), ttype, expires_in)


def _jwt_lifetime(token: str) -> float | None:
    """Seconds until the JWT's ``exp`` claim, read without verifying (we are not the
    audience that verifies it; we only want to know when to refresh)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = float(payload["exp"])
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None
    return max(0.0, exp - time.time())


def refresh_margin(lifetime: float) -> float:
    """How long before expiry to refresh: max(5 s, 10%), but at most half the lifetime."""
    return min(max(5.0, 0.1 * lifetime), lifetime / 2)


class TokenManager:
    """Hands out a valid token; refreshes it ahead of expiry or after a 401, single-flight."""

    def __init__(self, fetch: Callable[[], Awaitable[Grant]], *, clock: Clock = time.monotonic
                 ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0  # clock time after which the token counts as stale
        self.issued = 0

    def __repr__(self) -> str:
        return f"TokenManager(issued={self.issued}, has_token={self._token is not None})"

    def _fresh(self) -> str | None:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        return None

    async def token(self) -> str:
        """A token that will not expire within the refresh margin."""
        tok = self._fresh()
        if tok is not None:
            return tok
        async with self._lock:
            tok = self._fresh()  # another waiter may have refreshed while we queued
            if tok is not None:
                return tok
            return await self._refresh()

    async def rejected(self, token: str) -> str:
        """The server answered 401 to ``token``: refresh once, unless someone already did."""
        async with self._lock:
            if self._token is not None and self._token != token:
                return self._token
            return await self._refresh()

    async def _refresh(self) -> str:
        started = self._clock()
        grant = await self._fetch()
        self.issued += 1
        self._token = grant.access_token
        if grant.expires_in is None:
            self._refresh_at = float("inf")  # unknown lifetime: use until a 401
        else:
            # Count from when we asked, not when the answer arrived: the server's clock
            # started before the response reached us.
            self._refresh_at = started + grant.expires_in - refresh_margin(grant.expires_in)
        return grant.access_token
