"""The harvester's exception tree.

Every failure the harvester can report is one of these. Library errors (aiohttp,
orjson, OSError from the disk) are translated into this tree at one boundary each:
``harvester/client/`` for HTTP, ``sinks.py``/``state.py`` for the disk. Messages are one line,
name what failed and never contain a secret, a token or learner data: every message,
``url`` and ``detail`` passes the redactor (``redact.REDACTOR``) on construction.

::

    HarvestError
    ├── ConfigError              bad config, flag or environment (exit 2)
    ├── AuthError                the token endpoint refused our credentials (exit 2)
    ├── Unreachable              the API host never answered (DNS, refused, TLS, timeout)
    ├── RequestError             no usable HTTP response
    │   ├── ConnectError         could not connect
    │   ├── ReadTimeout          no complete answer in time (read, deadline, max_time)
    │   └── ConnectionLost       reset / closed mid-response / truncated body
    ├── ApiError                 an HTTP response we cannot use as data
    │   ├── RateLimited          429 (carries the advertised wait)
    │   ├── ServerError          5xx
    │   ├── GatewayError         400 on a well-formed GET (the gateway's remap of upstream errors)
    │   ├── Unauthorized         401
    │   ├── Forbidden            403
    │   ├── NotFound             404 (InvalidPage: 404 "Invalid page.")
    │   ├── UnexpectedStatus     any other status
    │   ├── ResponseTooLarge     a body over api.max_response_bytes (after decompression)
    │   ├── NestedTooDeep        valid JSON nested deeper than the harvester can write back
    │   └── PayloadError         a 2xx whose body is not the JSON we expect
    │       └── UnexpectedXML    XML or HTML although we asked for JSON (after retries)
    ├── SinkError                the output could not be written (disk full, permissions)
    │   └── UnsafePath           a link (or a stranger's directory) where we would write (exit 2)
    ├── PublishError             --publish: the upload to object storage failed (exit 3)
    └── StateError               resume ledger unusable, incompatible or locked
        └── IllegalPhase         a catalog phase move the run contract forbids (a bug)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from harvester.redact import REDACTOR


class HarvestError(Exception):
    """Base of every error the harvester raises on purpose.

    Messages often quote what a server said, so they are redacted here, once, where that
    text enters: a token or secret echoed by the server is masked before any log line,
    error record, manifest or terminal can see it.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(REDACTOR.scrub(a) if isinstance(a, str) else a for a in args))


class ConfigError(HarvestError):
    """A config value, flag or environment variable is missing or invalid."""


class AuthError(HarvestError):
    """The token endpoint refused the client credentials, or answered nonsense."""


class Unreachable(HarvestError):
    """The API host never answered: every attempt failed before any HTTP response.

    Fatal for the run (exit 1), unlike a mid-run outage: nothing will work until the base
    URL, DNS, TLS or network is fixed. ``reason`` is one of :data:`REASONS`' keys.
    """

    def __init__(self, message: str, *, host: str, reason: str) -> None:
        super().__init__(message)
        self.host = host
        self.reason = reason


#: Why no HTTP response arrived (``RequestError.reason``), in words for one-line errors.
REASONS: Final[Mapping[str, str]] = {
    "dns": "DNS lookup failed (no such host)",
    "refused": "connection refused (nothing listens on that port)",
    "tls": "TLS handshake failed",
    "timeout": "timed out",
    "gated": "no attempt made within the time allowed (the rate limit held it back)",
    "connect": "could not connect",
    "reset": "connection lost",
    "truncated": "body cut short",
    "other": "request failed",
}


class RequestError(HarvestError):
    """No usable HTTP response arrived (connection, timeout, reset, truncation).

    ``reason`` says why, as a key of :data:`REASONS`.
    """

    def __init__(self, message: str, *, endpoint: str = "", url: str = "",
                 reason: str = "other") -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.url = REDACTOR.scrub(url)
        self.reason = reason


class ConnectError(RequestError):
    """The TCP/TLS connection could not be made."""


class ReadTimeout(RequestError):
    """No complete answer in time: a read stalled (``api.read_timeout``), the attempt ran
    past its deadline (``api.request_timeout``), or the request past ``retry.max_time``."""


class ConnectionLost(RequestError):
    """The connection was reset or closed before the whole body arrived."""


class ApiError(HarvestError):
    """The server answered, but not with data we can use.

    ``url`` is the request URL without credentials (we never put any in URLs);
    ``detail`` is a short, sanitised excerpt of the body.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        endpoint: str = "",
        url: str = "",
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.endpoint = endpoint
        self.url = REDACTOR.scrub(url)
        self.detail = REDACTOR.scrub(detail)


class RateLimited(ApiError):
    """429. ``retry_after`` is the advertised wait in seconds, or None if none was given."""

    def __init__(self, message: str, *, retry_after: float | None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx from the server or the gateway."""


class GatewayError(ApiError):
    """400 on a GET we know is well formed: api.edx.org remaps upstream errors to 400."""


class Unauthorized(ApiError):
    """401: the token was refused (expired, revoked or malformed)."""


class Forbidden(ApiError):
    """403: these credentials may not see this resource. Never retried."""


class NotFound(ApiError):
    """404. On detail endpoints this may be a transient upstream failure."""


class InvalidPage(NotFound):
    """404 ``{"detail": "Invalid page."}``: the page is past the end of the list."""


class UnexpectedStatus(ApiError):
    """A status the harvester has no rule for."""


class ResponseTooLarge(ApiError):
    """The body exceeded ``api.max_response_bytes`` once decompressed. Never retried: the
    same request would bring the same body; the item or page is recorded as failed."""


class NestedTooDeep(ApiError):
    """Valid JSON nested deeper than :data:`~harvester.client.bodies.MAX_JSON_DEPTH` levels: the
    JSON encoder that writes every output line refuses it. Never retried (the server's
    data, not the transfer, is the problem); the item or page is recorded as failed."""


class PayloadError(ApiError):
    """A 2xx whose body is not valid JSON of the expected shape."""


class UnexpectedXML(PayloadError):
    """Markup (XML, or an HTML gateway page) although the request sent ``Accept:
    application/json``. Retried like any bad body; raised once the retries keep getting it."""


class OutOfTime(HarvestError):
    """A request could not be admitted and answered before the run's deadline
    (``sync --deadline`` / ``--time-budget``). Not a failure: the item is deferred to the
    next night, never recorded in ``errors.ndjson``."""


class SinkError(HarvestError):
    """Output could not be written; what was already written and renamed stays valid."""


class UnsafePath(SinkError):
    """A symlink, or a directory writable by another user, where we would write: refused."""


class PublishError(HarvestError):
    """Uploading finished output to object storage failed (exit 3): the local output is
    intact, and rerunning the command resumes the publish. ``result`` is the run's own
    outcome (a :class:`~harvester.run.RunResult` or ``SyncResult``), when there was one."""

    def __init__(self, message: str, *, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class StateError(HarvestError):
    """The resume ledger is unusable, belongs to an incompatible run, or is locked."""


class IllegalPhase(StateError):
    """A catalog was asked to move between phases the contract forbids (a bug): above
    all, a failed catalog can never become done without succeeding."""
