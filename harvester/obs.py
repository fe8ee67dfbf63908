"""Observability: run counters, structured logging, and secret redaction.

Log records carry a stable event name (``harvest.catalog_done``) and flat fields; the
text formatter prints ``event k=v``, the JSON formatter one object per line. The
redactor masks every registered secret (client secret, each issued token) and anything
shaped like a credential (a JWT, ``Bearer <x>``, ``access_token=<x>``): as a filter on
every log line whatever code path put it there, and for the writers of error records and
manifests, so nothing a server sends reaches a file or a log unredacted. A secret is
registered with the forms it travels or is echoed in (form- and percent-encoded, base64,
HTTP Basic, JSON and repr escapes). The one definition of the characters a terminal acts
on rather than shows (:func:`is_unsafe`) lives here too: both formatters escape them, so
server text in a log line can neither drive a terminal nor forge a line, and the terminal
gate (``display.text.term_text``) removes them. Nothing here changes control flow.
"""

from __future__ import annotations

import base64
import contextvars
import logging
import re
import sys
import threading
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TextIO, TypeVar
from urllib.parse import quote, quote_plus

import orjson

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


#: Credentials recognised by their shape, whoever sent them: a JWT (base64url of ``{"``,
#: also when cut short by an excerpt), three long base64url segments, the value after an
#: ``Authorization`` scheme, credential-named query or form parameters, and the password
#: of a URL.
_CREDENTIAL_SHAPES: Final = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}"
    r"|\b[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
    r"|(?P<scheme>\b(?i:bearer|jwt)\s+)[A-Za-z0-9._~+/=-]{16,}"
    r"|(?P<param>\b(?:access_token|refresh_token|id_token|client_secret|token|secret|"
    r"password)=)[^&\s\"'<>]+"
    r"|(?P<userinfo>://)[^/\s@:\"'<>]*:[^/\s@\"'<>]*@")


#: Bytes of a secret searched first: its group's shared prefix (see Redactor.mentions).
_PROBE: Final = 16
#: Stride of the one-pass pre-filter over data: any probe of 2 * _GRAM - 1 bytes or more
#: that occurs in the data covers one whole aligned window of this many bytes.
_GRAM: Final = 8


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


def encoded_forms(secret: str) -> set[str]:
    """The forms ``secret`` travels or is echoed back in: itself; form-encoded as the
    token request sends it (aiohttp's form body is ``quote_plus``); percent-encoded, with
    either case of hex; escaped in a JSON string or a Python repr; and base64 (standard
    and URL-safe) at each of the three alignments it can take inside a longer value, so
    HTTP Basic's ``base64(id:secret)`` (also with the RFC 6749 form-encoded secret) is
    covered whatever the id."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    forms |= {_LOWER_HEX.sub(lambda m: m[0].lower(), f) for f in forms}
    forms |= {orjson.dumps(secret).decode()[1:-1], repr(secret)[1:-1]}
    for raw in {secret.encode(), quote_plus(secret).encode()}:
        for k in range(3):
            # base64 of k other bytes then raw: keep the characters that encode raw alone
            enc = base64.b64encode(b"\0" * k + raw).decode()
            inner = enc[-(-8 * k // 6):8 * (k + len(raw)) // 6]
            forms |= {inner, inner.translate(_URLSAFE)}
    return forms


_LOWER_HEX: Final = re.compile("%[0-9A-F]{2}")
_URLSAFE: Final = str.maketrans("+/", "-_")


def _mask(m: re.Match[str]) -> str:
    if m.group("userinfo"):
        return "://***@"
    return (m.group("scheme") or m.group("param") or "") + "***"


class Redactor(logging.Filter):
    """Masks credentials in text: every registered secret (the client secret, each token
    ever issued to this process, old ones included) and anything shaped like one.

    Applied to every log record that passes through a handler, and by the code that
    writes server text anywhere else (error messages, errors.ndjson, manifests).
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self._needles: tuple[bytes, ...] = ()
        self._probes: tuple[tuple[bytes, tuple[bytes, ...]], ...] = ()
        self._grams: frozenset[bytes] = frozenset()
        self._short: tuple[tuple[bytes, tuple[bytes, ...]], ...] = ()  #: not in _grams
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        """Never print this string nor any of its :func:`encoded_forms` (ignored when too
        short to be a real secret)."""
        if len(secret) >= 6 and secret not in self._secrets:
            forms = {f for f in encoded_forms(secret) if len(f) >= 6}
            with self._lock:
                # Longest first, so a secret that contains another is masked whole.
                self._secrets = tuple(sorted({*self._secrets, *forms}, key=len, reverse=True))
                # As the secret appears inside a JSON string that orjson wrote.
                self._needles = tuple(orjson.dumps(s)[1:-1] for s in self._secrets)
                groups: dict[bytes, list[bytes]] = {}
                for n in self._needles:
                    groups.setdefault(n[:_PROBE], []).append(n)
                self._probes = tuple((p, tuple(ns)) for p, ns in groups.items())
                self._grams = frozenset(p[j:j + _GRAM] for p in groups
                                        if len(p) >= 2 * _GRAM - 1
                                        for j in range(len(p) - _GRAM + 1))
                self._short = tuple(pn for pn in self._probes if len(pn[0]) < 2 * _GRAM - 1)

    def mentions(self, data: bytes) -> bool:
        """Whether ``data`` (JSON as orjson writes it) holds a registered secret verbatim.

        A literal search: the tokens of one issuer share their first bytes (the JWT
        header), so one pass per distinct prefix finds whether any of them can be there,
        however many were issued. Credential *shapes* are deliberately not searched: in
        data they would mask legitimate values.

        With many credentials (a hundred tenants' secrets) one search per probe is most of
        a response's cost, so one pass first looks up every aligned window of the data in
        the set of the probes' windows: no hit, and no short probe, means no secret."""
        probes = self._probes
        if not probes:
            return False
        grams, w = self._grams, _GRAM
        if grams and grams.isdisjoint(data[i:i + w] for i in range(0, len(data) - w + 1, w)):
            probes = self._short  # only those the windows cannot vouch for
        return any(p in data and any(n in data for n in ns) for p, ns in probes)

    def scrub_known(self, obj: T) -> T:
        """``obj`` (JSON-like data) with every registered secret in a string or key
        replaced by ``***``; nothing else changes (no credential shapes: this is data)."""
        if isinstance(obj, str):
            for s in self._secrets:
                if s in obj:
                    obj = obj.replace(s, "***")  # type: ignore[assignment]
            return obj
        if isinstance(obj, dict):
            return {self.scrub_known(k): self.scrub_known(v)  # type: ignore[return-value]
                    for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.scrub_known(v) for v in obj]  # type: ignore[return-value]
        return obj

    def scrub_known_line(self, line: bytes) -> bytes:
        """An encoded JSON (or CSV) line with every registered secret replaced by
        ``***`` (a literal replacement: the line stays valid JSON)."""
        if self.mentions(line):
            for n in self._needles:
                line = line.replace(n, b"***")
        return line

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret and credential shape replaced by ``***``."""
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "***")
        return _CREDENTIAL_SHAPES.sub(_mask, text)

    def scrub_obj(self, obj: T) -> T:
        """``obj`` (JSON-like data: dicts, lists, strings) with every string scrubbed."""
        if isinstance(obj, str):
            return self.scrub(obj)  # type: ignore[return-value]
        if isinstance(obj, dict):
            return {self.scrub_obj(k): self.scrub_obj(v)  # type: ignore[return-value]
                    for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return type(obj)(self.scrub_obj(v) for v in obj)
        return obj

    def scrub_line(self, line: bytes) -> bytes:
        """An encoded text line, scrubbed (bytes that are not UTF-8 pass unchanged)."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return line
        clean = self.scrub(text)
        return line if clean == text else clean.encode("utf-8")

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        record.msg = self.scrub(record.getMessage())
        record.args = None
        if isinstance(fields, dict):
            record.fields = self.scrub_obj(fields)
        return True


REDACTOR = Redactor()


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
