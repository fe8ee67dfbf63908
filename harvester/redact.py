"""Secret redaction: every registered secret, in every form it may travel or be echoed
back in, and anything shaped like a credential, masked as ``***``.

A secret is registered with its forms (:func:`encoded_forms`): percent-encoded as the
usual encoders write it (which punctuation each leaves alone, space as ``%20`` or ``+``,
either hex case, once or twice, every byte), JSON (also with PHP's escaped ``/`` and every
character ``\\u``-escaped), a Python repr, hex, and base64 at each alignment (so HTTP
Basic's ``base64(id:secret)`` is covered whatever the id). A base64 form is masked with
the whole run of base64 characters around it, padding included: its edge characters also
encode the secret's neighbours, and left visible they would tell its first and last bits.
Tokens are mostly alphanumeric, so their forms collapse to a few.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from typing import Final, TypeVar

import orjson

T = TypeVar("T")


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


#: Characters besides ASCII letters and digits that one usual percent-encoder or another
#: leaves as they are: RFC 3986 (Python's ``quote``), RFC 2396 (``~`` encoded), Java's
#: URLEncoder, JavaScript's encodeURIComponent, a path (``/`` kept), none at all.
_KEEPS: Final = ("-._~", "-._", "-._*", "-._~!'()*", "-._~/", "")


def _pct(text: str, keep: str, plus: bool) -> str:
    """``text`` percent-encoded (upper-case hex) leaving letters, digits and ``keep``;
    a space as ``+`` when ``plus`` (form encoding)."""
    def encoded(m: re.Match[str]) -> str:
        return "+" if plus and m[0] == " " else "".join(f"%{b:02X}" for b in m[0].encode())
    return re.sub(f"[^A-Za-z0-9{re.escape(keep)}]", encoded, text)  # in C for a token


def _percent_forms(secret: str) -> set[str]:
    """Every percent-encoding of ``secret`` the usual encoders write, once and twice,
    every byte as ``%XX`` too, in either hex case."""
    forms = {secret}
    for keep in _KEEPS:
        for plus in (False, True):
            once = _pct(secret, keep, plus)
            forms |= {once, _pct(once, keep, plus)}
    every = "".join(f"%{b:02X}" for b in secret.encode())
    forms |= {every, every.replace("%", "%25")}
    return forms | {_LOWER_HEX.sub(lambda m: m[0].lower(), f) for f in forms}


def _base64_forms(raws: set[bytes]) -> set[str]:
    """base64 (standard and URL-safe) of each of ``raws`` at each of the three alignments
    it can take inside a longer value: the characters that encode its bytes alone."""
    forms: set[str] = set()
    for raw in raws:
        for k in range(3):
            enc = base64.b64encode(b"\0" * k + raw).decode()
            inner = enc[-(-8 * k // 6):8 * (k + len(raw)) // 6]
            forms |= {inner, inner.translate(_URLSAFE)}
    return forms


def encoded_forms(secret: str) -> tuple[set[str], set[str]]:
    """The forms ``secret`` travels or is echoed back in, as (literal forms, base64
    forms): percent-encodings (:func:`_percent_forms`), JSON string escapes (plain, PHP's
    ``\\/``, every character as ``\\u`` in either hex case), a Python repr and hex; and
    base64 of it and of its form-encoded value (RFC 6749's HTTP Basic). Each form holding
    a ``/`` also as a JSON writer that escapes slashes shows it."""
    units = secret.encode("utf-16-be", "surrogatepass")
    every_u = "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
    plain = _percent_forms(secret) | {orjson.dumps(secret).decode()[1:-1], repr(secret)[1:-1],
                                      every_u, every_u.upper().replace("\\U", "\\u"),
                                      secret.encode().hex(), secret.encode().hex().upper()}
    b64 = _base64_forms({secret.encode(), _pct(secret, "-._~", True).encode()})
    return ({*plain, *(f.replace("/", "\\/") for f in plain)},
            {*b64, *(f.replace("/", "\\/") for f in b64)})


_LOWER_HEX: Final = re.compile("%[0-9A-F]{2}")
_URLSAFE: Final = str.maketrans("+/", "-_")
_B64_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-")


def _mask_runs(text: str, form: str) -> str:
    """``text`` with each occurrence of the base64 ``form`` masked together with the whole
    run of base64 characters around it (a JSON-escaped ``\\/`` included) and its padding."""
    out, pos, start = [], 0, text.find(form)
    while start >= 0:
        lo, hi = start, start + len(form)
        while lo > pos and (text[lo - 1] in _B64_CHARS or text[lo - 1:lo + 1] == "\\/"):
            lo -= 1
        while hi < len(text) and (text[hi] in _B64_CHARS or text[hi:hi + 2] == "\\/"):
            hi += 2 if text[hi] == "\\" else 1
        while text[hi:hi + 1] == "=":
            hi += 1
        out += [text[pos:lo], "***"]
        pos, start = hi, text.find(form, hi)
    return "".join([*out, text[pos:]]) if out else text


def _windows(forms: tuple[str, ...]) -> frozenset[str]:
    """Every _GRAM-character window of each form's first _PROBE characters: any text that
    holds a form of 2 * _GRAM - 1 characters or more holds one at an aligned offset."""
    return frozenset(p[j:j + _GRAM] for p in {f[:_PROBE] for f in forms}
                     if len(p) >= 2 * _GRAM - 1 for j in range(len(p) - _GRAM + 1))


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
        self._b64: tuple[str, ...] = ()  #: base64 forms: masked with their whole run
        #: Aligned windows of the forms' first _PROBE characters, and the forms too short
        #: for them to vouch for: the one-pass pre-filter of text (as ``_grams`` of data).
        self._text_grams: frozenset[str] = frozenset()
        self._text_short: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._needles: tuple[bytes, ...] = ()
        self._json: dict[str, bytes] = {}  #: each form as orjson writes it in a string
        self._probes: tuple[tuple[bytes, tuple[bytes, ...]], ...] = ()
        self._grams: frozenset[bytes] = frozenset()
        self._short: tuple[tuple[bytes, tuple[bytes, ...]], ...] = ()  #: not in _grams
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        """Never print this string nor any of its :func:`encoded_forms` (ignored when too
        short to be a real secret)."""
        if len(secret) >= 6 and secret not in self._secrets:
            plain, b64 = (tuple(f for f in fs if len(f) >= 6) for fs in encoded_forms(secret))
            with self._lock:
                # Longest first, so a secret that contains another is masked whole.
                self._secrets = tuple(sorted({*self._secrets, *plain}, key=len, reverse=True))
                self._b64 = tuple(sorted({*self._b64, *b64}, key=len, reverse=True))
                self._text_grams |= _windows((*plain, *b64))
                self._text_short = (tuple(f for f in self._b64 if len(f) < 2 * _GRAM - 1),
                                    tuple(f for f in self._secrets if len(f) < 2 * _GRAM - 1))
                # As the secret appears inside a JSON string that orjson wrote.
                self._json.update((f, orjson.dumps(f)[1:-1]) for f in (*plain, *b64))
                self._needles = tuple(self._json[s] for s in self._secrets)
                groups: dict[bytes, list[bytes]] = {}
                for n in (*self._needles, *(self._json[s] for s in self._b64)):
                    groups.setdefault(n[:_PROBE], []).append(n)
                self._probes = tuple((p, tuple(ns)) for p, ns in groups.items())
                self._grams = frozenset(p[j:j + _GRAM] for p in groups
                                        if len(p) >= 2 * _GRAM - 1
                                        for j in range(len(p) - _GRAM + 1))
                self._short = tuple(pn for pn in self._probes if len(pn[0]) < 2 * _GRAM - 1)

    def _known(self, text: str) -> str:
        """``text`` with every registered form masked: base64 ones first, with their runs.

        Most text holds none, and with many tokens one search per form is most of the
        cost: no aligned window of ``text`` among the forms' windows leaves only the forms
        too short to have one."""
        b64, plain, w = self._b64, self._secrets, _GRAM
        if self._text_grams.isdisjoint(text[i:i + w] for i in range(0, len(text) - w + 1, w)):
            b64, plain = self._text_short
        for f in b64:
            if f in text:
                text = _mask_runs(text, f)
        for s in plain:
            if s in text:
                text = text.replace(s, "***")
        return text

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
            return self._known(obj)  # type: ignore[return-value]
        if isinstance(obj, dict):
            return {self.scrub_known(k): self.scrub_known(v)  # type: ignore[return-value]
                    for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.scrub_known(v) for v in obj]  # type: ignore[return-value]
        return obj

    def scrub_known_line(self, line: bytes) -> bytes:
        """An encoded JSON (or CSV) line with every registered secret replaced by
        ``***`` (a literal replacement: the line stays valid JSON)."""
        if not self.mentions(line):
            return line
        text = line.decode("utf-8", "surrogateescape")  # orjson wrote it: valid UTF-8
        for f in self._b64:
            if (j := orjson.dumps(f)[1:-1].decode()) in text:
                text = _mask_runs(text, j)
        line = text.encode("utf-8", "surrogateescape")
        for n in self._needles:
            line = line.replace(n, b"***")
        return line

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret and credential shape replaced by ``***``."""
        return _CREDENTIAL_SHAPES.sub(_mask, self._known(text))

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
