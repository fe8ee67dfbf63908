"""Observability: run counters and structured logging.

Log records carry a stable event name (``harvest.catalog_done``) and flat fields; the
text formatter prints ``event k=v``, the JSON formatter one object per line. The
redactor (:mod:`harvester.redact`) is a filter on every log line whatever code path put
it there, and both formatters scrub the final line too. The one definition of the
characters a terminal acts on rather than shows (:func:`is_unsafe`) lives here too: both
formatters escape them, so server text in a log line can neither drive a terminal nor
forge a line, and the terminal gate (``display.text.term_text``) removes them.
Nothing here changes control flow.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TextIO, TypeVar

import orjson

from harvester.redact import REDACTOR

LOGGER_NAME = "harvester"
log = logging.getLogger(LOGGER_NAME)
T = TypeVar("T")


@dataclass(slots=True)
class Stats:
    """Counters for one run; shared by the client (requests) and the pipeline (items)."""

    started: float = field(default_factory=time.monotonic)
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    bytes_in: int = 0
    not_modified: int = 0
    tokens: int = 0
    items_written: int = 0
    pages: int = 0
    details: int = 0
    latency: dict[str, deque[float]] = field(default_factory=dict)

    def observe(self, endpoint: str, seconds: float) -> None:
        """Record how long one request of ``endpoint`` took (send to answer)."""
        recent = self.latency.setdefault(endpoint, deque(maxlen=64))
        recent.append(max(0.0, seconds))

    def typical(self, endpoint: str) -> float | None:
        """A typical recent request time of ``endpoint`` (the 90th percentile of the last
        64), or None before any: what a deadline keeps free for the next request."""
        recent = sorted(self.latency.get(endpoint, ()))
        return recent[min(len(recent) - 1, int(len(recent) * 0.9))] if recent else None

    def count_request(self, endpoint: str, status: int, nbytes: int) -> None:
        """Record one HTTP response."""
        self.requests[(endpoint, status)] += 1
        self.bytes_in += nbytes
        if status == 429:
            self.throttled += 1
        elif status == 304:
            self.not_modified += 1

    def total_requests(self, endpoint: str | None = None) -> int:
        """Responses received, for one endpoint class or all."""
        return sum(n for (ep, _), n in self.requests.items() if endpoint in (None, ep))

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the manifest."""
        by_class: dict[str, dict[str, int]] = {}
        for (ep, status), n in sorted(self.requests.items()):
            by_class.setdefault(ep, {})[str(status)] = n
        return {
            "requests": by_class,
            "requests_total": self.total_requests(),
            "transport_errors": dict(self.transport_errors),
            "retries": sum(self.retries.values()),
            "retries_by_cause": dict(self.retries),
            "throttled_429": self.throttled,
            "not_modified_304": self.not_modified,
            "bytes_in": self.bytes_in,
            "tokens_issued": self.tokens,
            "pages": self.pages,
            "details": self.details,
            "items_written": self.items_written,
            "wall_seconds": round(time.monotonic() - self.started, 3),
        }


#: Unicode categories a terminal (or a log reader) acts on rather than shows: controls
#: (C0 with ESC, BEL, CR, LF; DEL; C1 with CSI and NEL), format characters (bidi
#: overrides, isolates and marks, zero-width characters, BOM, tags), lone surrogates, and
#: the line and paragraph separators. Unicode's own classes, so no hand list falls behind.
UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def is_unsafe(ch: str) -> bool:
    """Whether one character would act on a terminal or a log reader instead of showing."""
    return unicodedata.category(ch) in UNSAFE_CATEGORIES


def replace_unsafe(text: str, repl: Callable[[str], str]) -> str:
    """``text`` with every unsafe character (:func:`is_unsafe`) replaced by ``repl(ch)``."""
    if text.isprintable():  # in C, and false for every unsafe character: the usual case
        return text
    return "".join(repl(ch) if is_unsafe(ch) else ch for ch in text)


def _backslashed(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")  # \n, \x1b, \u202e, \U000e0001


def _json_escaped(ch: str) -> str:
    units = ch.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))


def escape_unsafe(text: str) -> str:
    """``text`` with every unsafe character shown as its backslash escape (``\\x1b``,
    ``\\n``, ``\\u202e``): what a text log line prints, visible and inert."""
    return replace_unsafe(text, _backslashed)


def inert_json(data: bytes) -> bytes:
    """JSON as orjson wrote it (C0 already escaped inside strings) with every other unsafe
    character written as a ``\\u`` escape: the same values, inert when a person shows
    the file on a terminal (``cat errors.ndjson``)."""
    if data.isascii() and b"\x7f" not in data:
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    return _NOT_ASCII.sub(lambda m: _json_escaped(m[0]) if is_unsafe(m[0]) else m[0],
                          text).encode("utf-8")


_NOT_ASCII: Final = re.compile("[^\x00-\x7e]")


#: The tenant whose work is running in this task (and every task it creates): each
#: event names it, so the log of many tenants in one process can be told apart.
TENANT: Final[contextvars.ContextVar[str | None]] = contextvars.ContextVar(
    "harvester_tenant", default=None)


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a structured event: a stable name and flat fields (``tenant`` first, when the
    event happens inside a tenant's work)."""
    if log.isEnabledFor(level):
        tenant = TENANT.get()
        if tenant is not None:
            fields = {"tenant": tenant, **fields}
        log.log(level, name, extra={"fields": fields})


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level event k=v ...`` for humans."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", None) or {}
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{ts} {record.levelname.lower():7s} {record.getMessage()}"
        # The final line too: a field may be any object whose str() quotes a server. Then
        # escaped, so what a server sent can neither drive a terminal nor start a line.
        return escape_unsafe(REDACTOR.scrub(f"{line} {tail}" if tail else line))


class JsonFormatter(logging.Formatter):
    """One JSON object per line for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        # orjson escapes only C0: DEL, C1, bidi and separators become \u escapes here, so
        # the line is inert on a terminal and still parses to the same values.
        return replace_unsafe(REDACTOR.scrub(orjson.dumps(data, default=str).decode()),
                              _json_escaped)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is *now*, so a live progress display that
    redirects stderr shows log lines above itself instead of being torn by them."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup_logging(*, fmt: str = "text", quiet: bool = False, stream: TextIO | None = None
                  ) -> logging.Handler:
    """Send harvester logs to stderr (or ``stream``) with redaction; returns the handler."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(REDACTOR)
    for old in list(log.handlers):
        log.removeHandler(old)
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    return handler
