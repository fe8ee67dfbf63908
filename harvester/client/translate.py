"""The one boundary where aiohttp and timeout exceptions become harvester errors.

Every exchange runs inside :func:`translated`; each library error becomes the most
specific :mod:`harvester.errors` class (``raise ... from`` the original), so nothing above
``harvester/client/`` ever sees an aiohttp exception. Sends nothing and decides no retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp

from harvester.client.paths import host_of
from harvester.errors import ConnectError, ConnectionLost, HarvestError, ReadTimeout, RequestError


@contextmanager
def translated(endpoint: str, url: str, deadline: asyncio.Timeout | None = None,
               limit: float = 0.0) -> Iterator[None]:
    """Translate what the exchange inside raises from aiohttp or the timers.

    ``deadline`` is the exchange's own total timer (``limit`` seconds): when it is what
    fired, the error says so, since no read ever stalled long enough to trip a read timeout.
    """
    kw: dict[str, Any] = {"endpoint": endpoint, "url": url}
    try:
        yield
    except HarvestError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise ConnectError(f"{endpoint}: timed out connecting to {host_of(url)} "
                           "(api.connect_timeout)", reason="timeout", **kw) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        if deadline is not None and deadline.expired():
            raise ReadTimeout(f"{endpoint}: timed out: no complete answer within {limit:g} s "
                              "(api.request_timeout)", reason="timeout", **kw) from exc
        raise ReadTimeout(f"{endpoint}: timed out: no data within the read timeout "
                          "(api.read_timeout)", reason="timeout", **kw) from exc
    except aiohttp.ClientSSLError as exc:
        raise ConnectError(f"{endpoint}: TLS handshake with {host_of(url)} failed "
                           f"({_ssl_reason(exc)})", reason="tls", **kw) from exc
    except aiohttp.ClientConnectorDNSError as exc:
        raise ConnectError(f"{endpoint}: DNS lookup of {exc.host} failed", reason="dns",
                           **kw) from exc
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ConnectionRefusedError):
            raise ConnectError(f"{endpoint}: connection refused by {exc.host}:{exc.port}",
                               reason="refused", **kw) from exc
        raise ConnectError(f"{endpoint}: cannot connect to {exc.host}:{exc.port} "
                           f"({exc.os_error.strerror or type(exc.os_error).__name__})",
                           reason="connect", **kw) from exc
    except aiohttp.ClientPayloadError as exc:
        raise ConnectionLost(f"{endpoint}: response body cut short", reason="truncated",
                             **kw) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise ConnectionLost(f"{endpoint}: connection lost ({type(exc).__name__})",
                             reason="reset", **kw) from exc
    except aiohttp.ClientResponseError as exc:  # malformed HTTP from the server
        raise ConnectionLost(f"{endpoint}: malformed HTTP response ({exc.message})",
                             reason="reset", **kw) from exc
    except aiohttp.ClientError as exc:
        raise RequestError(f"{endpoint}: request failed ({type(exc).__name__})", **kw) from exc


def _ssl_reason(exc: aiohttp.ClientSSLError) -> str:
    """The OpenSSL reason (``wrong version number``: the port speaks plain HTTP)."""
    err = exc.os_error
    reason = getattr(err, "reason", None) or getattr(err, "strerror", None)
    return str(reason or type(err).__name__).replace("_", " ").lower()
