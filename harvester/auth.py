"""Client-credentials JWT tokens: fetched once, shared, refreshed ahead of expiry.

The token's lifetime comes from ``expires_in`` in the grant (the doc says it "may change
at any time and should not be hard-coded"); if a server omits it, the JWT's own ``exp``
claim is read; if both are missing the token is used until a 401. An ``expires_in`` of 0,
negative or not a number is replaced by ``exp`` or, failing that, a 60 s floor (with one
warning per run), so it never means one token request per API call. Refreshes happen under
one lock, so a hundred workers that find the token stale cause one token request. The
HTTP call itself is injected (``harvester/client/`` owns HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import jwt

from harvester.errors import AuthError
from harvester.obs import event

Clock = Callable[[], float]

#: Below this, a lifetime is not one (0, negative, sub-second): never trusted as such.
MIN_LIFETIME: Final = 1.0
#: The lifetime assumed when neither ``expires_in`` nor the JWT's ``exp`` is usable.
FLOOR_LIFETIME: Final = 60.0


@dataclass(frozen=True, slots=True)
class Grant:
    """What the token endpoint answered (already decoded)."""

    access_token: str
    token_type: str
    expires_in: float | None  #: the lifetime to plan with (see ``_lifetime``)
    note: str = ""  #: why that is not the server's ``expires_in``, when it is not

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
    token = token.strip()
    expires_in, note = _lifetime(body.get("expires_in"), token)
    return Grant(token, ttype, expires_in, note)


def _seconds(raw: object) -> float | None:
    """``expires_in`` as finite seconds, or None when it is not a number at all."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _lifetime(raw: object, token: str) -> tuple[float | None, str]:
    """The token's lifetime in seconds (None: unknown, use until a 401) and, when the
    server's ``expires_in`` could not be used, why.

    An ``expires_in`` under a second (0, negative) or not a number would make every API
    call fetch a new token, so it is replaced by the JWT's ``exp``, else by
    :data:`FLOOR_LIFETIME`; a 401 still refreshes a token that expires sooner.
    """
    served = _seconds(raw)
    if served is not None and served >= MIN_LIFETIME:
        return served, ""
    shown = "missing" if raw is None else repr(raw)[:40] + " is unusable"
    from_exp = _jwt_lifetime(token)
    if from_exp is not None and from_exp >= MIN_LIFETIME:
        return from_exp, "" if raw is None else f"expires_in {shown}; using the JWT's exp"
    if raw is None and from_exp is None:
        return None, ""
    return FLOOR_LIFETIME, (f"expires_in {shown} and the JWT's exp is "
                            f"{'past' if from_exp is not None else 'absent'}; assuming "
                            f"{FLOOR_LIFETIME:g} s (a 401 still refreshes at once)")


def _jwt_lifetime(token: str) -> float | None:
    """Seconds until the JWT's ``exp`` claim (negative when past), read without verifying
    (we are not the audience that verifies it; we only want to know when to refresh)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    seconds = _seconds(exp) if not isinstance(exp, str) else None
    return None if seconds is None else seconds - time.time()


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
        self._warned = False

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
        if grant.note and not self._warned:
            self._warned = True  # once per run: the server says the same thing every time
            event("auth.expires_in_unusable", logging.WARNING, note=grant.note,
                  lifetime=grant.expires_in)
        if grant.expires_in is None:
            self._refresh_at = float("inf")  # unknown lifetime: use until a 401
        else:
            # Count from when we asked, not when the answer arrived: the server's clock
            # started before the response reached us.
            self._refresh_at = started + grant.expires_in - refresh_margin(grant.expires_in)
        return grant.access_token
