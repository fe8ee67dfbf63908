"""Learner-summary export: every enrollment of an enterprise's learners, as NDJSON (and CSV).

``harvester learners --enterprise UUID --out DIR`` walks
``/enterprise/v3/enterprise-customer/{uuid}/learner-summary`` asking ``page_size=1000`` (the
endpoint's maximum) through the harvest's own client, budgets, retries and page walker
(:func:`harvester.pipeline.walk_pages`), under the learner-summary budget (``rates.learners``,
60/min by default, separate from the LMS budget).

Output, per enterprise, under ``OUT/learners/enterprise=<uuid>/``:

* ``learner_summary.ndjson``: one line per enrollment, the row as the API returned it (after
  the personal-data transformation below), keys in the API's order, plus
  ``_harvest: {enterprise_uuid, fetched_at, pii}``;
* ``learner_summary.csv`` with ``--csv``: the serializer's field order
  (:data:`FIELD_ORDER`), then any field the serializer does not list, sorted. ``null`` is
  an empty cell, booleans are ``true``/``false``, nested values are JSON. A text cell that
  starts with ``=``, ``+``, ``-``, ``@``, TAB or CR gets a leading ``'`` so a spreadsheet
  shows it instead of evaluating it (the NDJSON keeps the value untouched).

Both are written as ``<name>.part`` in a staging directory and renamed when the
enterprise is done; they reach ``OUT/learners`` only when the whole run publishes (see
"Files and manifest" below). An enterprise that fails, or a run that is interrupted,
leaves no ``.part`` behind: there is no resume for learner exports, and a half file of
personal data helps nobody. ``OUT/learners/manifest.json`` (written atomically) records
the run, each enterprise's counts and files (lines, bytes, sha256) and the request totals.

A page that still fails after its retries (a 5xx, a timeout, a maintenance page) costs
only its own rows: the rest of the walk goes on, a rewalk may still find them, and what
is missing at the end is a reported gap (exit 3). A walk that breaks off (its page 1
fails) keeps what earlier walks wrote. Only 401/403 (these credentials may not read the
enterprise) or a failure before any row arrived fail the enterprise, with no file.

Completeness: rows are deduplicated by enrollment identity (``enterprise_enrollment_id``,
else ``enrollment_id`` + ``courserun_key``, else the whole row), keeping only 63-bit
digests in memory. The server sorts by ``-last_activity_date``, which has ties and nulls,
so page boundaries move between requests: when fewer unique enrollments than the reported
``count`` arrived, the list is walked again (``learners.max_rewalks``, default 2; a
re-walk that finds nothing new ends it) and only new enrollments are added. What is
still missing is reported as ``gaps``.

Personal data
-------------
The rows are personal data. Directories (``OUT/learners`` and each ``enterprise=<uuid>``)
are made ``0700`` and files ``0600`` whatever the mode below; rows never reach logs or
error messages (the client keeps learner-summary bodies out of error details, and this
module logs counts only).

``--pii`` decides what happens to the fields that identify a person (:data:`PII_KINDS`;
the README's "Learner summaries" table gives the reason for each field):

* direct identifiers: ``user_email``, ``user_username``, ``user_first_name``,
  ``user_last_name``, ``enterprise_sso_uid``;
* stable ids of one person: ``enterprise_user_id`` ("the learner's ID assigned by edX"),
  and, when a server sends them, ``lms_user_id``, ``user_id``,
  ``enterprise_customer_user_id``;
* ids of one person's record: ``enrollment_id``, ``enterprise_enrollment_id`` (anyone
  with edX data, or with another export in ``keep`` mode, resolves them to the learner)
  and ``coupon_code`` (enterprise codes are assigned to one learner's email);
* quasi-identifiers precise enough to single a person out: ``user_account_creation_date``
  (to the second), ``user_country_code`` / ``user_country``;

plus, failing closed, any field the serializer does not list whose name looks like a
person's (contains ``user``, ``email``, ``learner``, ``sso``..., or is a first/last/full
name): ``lms_user_id``, ``learner_uuid`` and ``manager_email`` are all caught.

* ``keep`` (default; the enterprise admin owns this data): unchanged. A one-line notice on
  stderr says the output holds personal data.
* ``hash``: each such value becomes ``HMAC-SHA256(key, value)`` in lowercase hex, with the
  key taken from ``HARVESTER_PII_KEY`` (at least 16 characters; the run refuses to start
  without it). Strings are hashed as their UTF-8 bytes, other values as their JSON text
  (``enterprise_user_id`` 1234 hashes ``"1234"``), ``null`` stays ``null``. The same key
  gives the same hashes on every run, so exports can still be joined with each other and
  with other data hashed the same way. Because the hash is keyed, small id spaces
  (``lms_user_id`` is a few million integers) cannot be reversed by hashing every
  candidate: without the key the values cannot be recovered or tested against a guess.
* ``drop``: the fields are removed from every row and from the CSV columns.

Course data, grades, progress, dates of activity, money fields and the enterprise's own
ids are kept in every mode: they are what the export is for, but they still describe
people, which is why the file modes do not depend on ``--pii``.

Files and manifest
------------------
A run writes into ``OUT/learners/.state/staging`` and, only once every enterprise is
done, publishes: it removes ``manifest.json``, moves the new files into place, removes
the files of enterprises that failed or that this run does not list, and writes the new
manifest last. So ``OUT/learners`` always holds exactly the files its manifest
describes (same PII mode, same sha256); an interrupted run leaves the previous export and
its manifest untouched, and a run killed mid-publish leaves no manifest at all. Staged
files a killed run left behind are removed when the next run starts.

``--consented-only`` writes only rows whose ``is_consent_granted`` is ``true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import hmac
import io
import logging
import os
import random
import stat
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson

from harvester import __version__
from harvester.client import ApiClient, ThrottleClass, learners_path
from harvester.config import Settings, parse_bool, parse_int, parse_str, parse_str_tuple
from harvester.errors import (
    ApiError,
    ConfigError,
    Forbidden,
    HarvestError,
    RequestError,
    SinkError,
    Unauthorized,
)
from harvester.models import JSONDict, Page, key_digest
from harvester.obs import REDACTOR, Stats, event
from harvester.paginate import ListingPlan
from harvester.pipeline import leading_error, walk_pages, walk_until_complete
from harvester.policy import Clock, Sleep
from harvester.run import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, RunResult, now_iso
from harvester.sinks import (
    PART,
    FileInfo,
    PartFile,
    disk_errors,
    encode_item,
    ensure_dir,
    fsync_dir,
    iter_lines,
    write_json_atomic,
)
from harvester.state import STATE_DIR, RunLock

#: ``EnterpriseLearnerEnrollmentSerializer`` field order (edx-enterprise-data), also the
#: CSV column order.
FIELD_ORDER: Final[tuple[str, ...]] = (
    "enrollment_id", "enterprise_enrollment_id", "is_consent_granted", "paid_by",
    "user_current_enrollment_mode", "enrollment_date", "unenrollment_date",
    "unenrollment_end_within_date", "is_refunded", "seat_delivery_method", "offer_id",
    "offer_name", "offer_type", "coupon_code", "coupon_name", "contract_id",
    "course_list_price", "amount_learner_paid",
    "course_key", "courserun_key", "course_title", "course_pacing_type", "course_start_date",
    "course_end_date", "course_duration_weeks", "course_max_effort", "course_min_effort",
    "course_primary_program", "primary_program_type", "course_primary_subject",
    "has_passed", "last_activity_date", "progress_status", "passed_date", "current_grade",
    "letter_grade",
    "enterprise_user_id", "user_email", "user_account_creation_date", "user_country_code",
    "user_username", "user_first_name", "user_last_name", "enterprise_name",
    "enterprise_customer_uuid", "enterprise_sso_uid", "created", "course_api_url",
    "total_learning_time_hours", "is_subsidy", "course_product_line", "budget_id",
    "enterprise_flex_group_name", "enterprise_flex_group_uuid", "course_progress",
    "course_passing_grade",
)
_KNOWN: Final = frozenset(FIELD_ORDER)

#: Every field the serializer, the API reference or older serializers send that identifies
#: a person, by kind (see the module docstring and the README's table). ``--pii`` hashes or
#: drops all of them.
PII_KINDS: Final[dict[str, str]] = {
    # direct identifiers
    "user_email": "direct", "user_username": "direct", "user_first_name": "direct",
    "user_last_name": "direct", "enterprise_sso_uid": "direct",
    # stable ids of one person, or of one person's record
    "enterprise_user_id": "person id", "lms_user_id": "person id", "user_id": "person id",
    "enterprise_customer_user_id": "person id",
    "enrollment_id": "record id", "enterprise_enrollment_id": "record id",
    "coupon_code": "record id",
    # quasi-identifiers precise enough to single a person out
    "user_account_creation_date": "quasi", "user_country_code": "quasi",
    "user_country": "quasi",
}
PII_FIELDS: Final[tuple[str, ...]] = tuple(PII_KINDS)
_PII: Final = frozenset(PII_FIELDS)
#: In a field the serializer does not list, any of these parts of its name makes it
#: personal (failing closed): ``lms_user_id``, ``learner_uuid``, ``manager_email``...
_PII_NAME_PARTS: Final = ("user", "email", "learner", "student", "employee", "person", "sso",
                          "phone", "address", "birth")
_PII_NAME_TOKENS: Final = frozenset({"uid", "lms", "ip", "dob"})
_PERSON_NAME_TOKENS: Final = frozenset({"first", "last", "full", "middle", "given", "family",
                                        "display", "legal", "preferred"})

PII_KEY_ENV: Final = "HARVESTER_PII_KEY"
PII_KEY_MIN: Final = 16
PAGE_SIZE: Final = 1000  #: the endpoint's max_page_size
LEARNERS_DIR: Final = "learners"
NDJSON_NAME: Final = "learner_summary.ndjson"
CSV_NAME: Final = "learner_summary.csv"
MANIFEST_NAME: Final = "manifest.json"
STAGING_DIR: Final = "staging"  #: under ``OUT/learners/.state``: a run's unpublished files
_MAX_ERRORS_KEPT: Final = 50
_PROGRESS_EVERY: Final = 10.0
_CSV_GUARD: Final = ("=", "+", "-", "@", "\t", "\r")

#: One line for ``--help``: what the PII modes touch.
PII_HELP: Final = (
    "personal-data fields: keep them (default), hash them (HMAC-SHA256 hex, key of at "
    f"least {PII_KEY_MIN} characters in env {PII_KEY_ENV}) or drop them. Fields: "
    f"{', '.join(PII_FIELDS)}, and any unlisted field whose name looks like a person's "
    "(user, email, learner, sso, ...). Files are 0600 and directories 0700 in every mode")


class PiiMode(StrEnum):
    """What happens to personal-data fields."""

    KEEP = "keep"
    HASH = "hash"
    DROP = "drop"


# --- options -----------------------------------------------------------------------------

#: ``[learners]`` keys of the config file (and the CLI's ``learners.*`` dests).
LEARNERS_SCHEMA: Final[dict[str, tuple[str, Callable[[object], Any]]]] = {
    "learners.enterprises": ("enterprises", parse_str_tuple),
    "learners.pii": ("pii", parse_str),
    "learners.csv": ("csv", parse_bool),
    "learners.consented_only": ("consented_only", parse_bool),
    "learners.max_rewalks": ("max_rewalks", parse_int),
}


def _enterprise_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise ConfigError(f"learners.enterprises: {value!r} is not an enterprise customer "
                          "UUID") from None


@dataclass(frozen=True, slots=True)
class LearnerOptions:
    """What ``harvester learners`` exports and how; validated on construction."""

    enterprises: tuple[str, ...] = ()
    pii: PiiMode = PiiMode.KEEP
    csv: bool = False
    consented_only: bool = False
    max_rewalks: int = 2

    def __post_init__(self) -> None:
        if not self.enterprises:
            raise ConfigError("learners: no enterprise given; pass --enterprise UUID "
                              "(repeatable) or set enterprises = [...] under [learners] "
                              "in the config file")
        canonical = tuple(dict.fromkeys(_enterprise_uuid(e) for e in self.enterprises))
        object.__setattr__(self, "enterprises", canonical)
        try:
            object.__setattr__(self, "pii", PiiMode(self.pii))
        except ValueError:
            raise ConfigError(f"learners.pii: must be keep, hash or drop, got {self.pii!r}"
                              ) from None
        if self.max_rewalks < 0:
            raise ConfigError(f"learners.max_rewalks: must be >= 0, got {self.max_rewalks!r}")

    @classmethod
    def load(cls, *layers: Mapping[str, object]) -> LearnerOptions:
        """Merge ``{"learners.key": raw}`` layers (lowest precedence first) into options.

        Keys of other sections are ignored; an unknown ``learners.*`` key is an error.
        """
        values: dict[str, Any] = {}
        for layer in layers:
            for name, raw in layer.items():
                if not name.startswith("learners.") or raw is None:
                    continue
                spec = LEARNERS_SCHEMA.get(name)
                if spec is None:
                    raise ConfigError(f"unknown setting {name!r}; valid: "
                                      f"{', '.join(LEARNERS_SCHEMA)}")
                attr, parse = spec
                try:
                    values[attr] = parse(raw)
                except (ValueError, TypeError) as exc:
                    raise ConfigError(f"{name}: {exc} (got {raw!r})") from None
        return cls(**values)


# --- personal data -----------------------------------------------------------------------

def is_pii(name: str) -> bool:
    """Whether a field identifies a person: listed in :data:`PII_KINDS`, or a field the
    serializer does not list whose name looks like a person's (fails closed)."""
    if name in _PII:
        return True
    if name in _KNOWN:
        return False
    lowered = name.lower()
    if any(part in lowered for part in _PII_NAME_PARTS):
        return True
    tokens = set(lowered.replace("-", "_").split("_"))
    return bool(tokens & _PII_NAME_TOKENS) or ("name" in tokens and bool(
        tokens & _PERSON_NAME_TOKENS))


class PiiPolicy:
    """Applies ``--pii`` to rows. Holds the HMAC key; never shows it."""

    __slots__ = ("_key", "mode")

    def __init__(self, mode: PiiMode, key: bytes | None = None) -> None:
        self.mode = mode
        if mode is PiiMode.HASH and (key is None or len(key) < PII_KEY_MIN):
            raise ConfigError(f"--pii hash needs a key of at least {PII_KEY_MIN} characters in "
                              f"{PII_KEY_ENV}; refusing to write personal data unhashed")
        self._key = key if mode is PiiMode.HASH else None

    @classmethod
    def from_env(cls, mode: PiiMode, environ: Mapping[str, str]) -> PiiPolicy:
        """The policy for ``mode``, reading the hash key from ``HARVESTER_PII_KEY``."""
        if mode is not PiiMode.HASH:
            return cls(mode)
        text = environ.get(PII_KEY_ENV, "")
        REDACTOR.add(text)
        return cls(mode, text.encode("utf-8") if text else None)

    def __repr__(self) -> str:
        return f"PiiPolicy(mode={self.mode.value!r})"

    @property
    def key_id(self) -> str | None:
        """A short, one-way tag of the key, so two manifests show whether keys match."""
        if self._key is None:
            return None
        return hmac.new(self._key, b"edx-harvester pii key id", hashlib.sha256).hexdigest()[:12]

    def hash_value(self, value: object) -> str:
        """``HMAC-SHA256(key, value)`` in hex: strings as UTF-8, anything else as JSON."""
        assert self._key is not None, "hash_value needs hash mode"
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def apply(self, row: JSONDict) -> JSONDict:
        """The row as it is written: a new dict in the row's key order."""
        if self.mode is PiiMode.KEEP:
            return dict(row)
        if self.mode is PiiMode.DROP:
            return {k: v for k, v in row.items() if not is_pii(k)}
        return {k: (self.hash_value(v) if v is not None and is_pii(k) else v)
                for k, v in row.items()}

    def columns(self, extra: Iterable[str]) -> list[str]:
        """CSV columns: the serializer's order, then unlisted fields sorted."""
        known = [f for f in FIELD_ORDER if not (self.mode is PiiMode.DROP and is_pii(f))]
        extras = sorted({e for e in extra if e not in _KNOWN and e != "_harvest"})
        return known + [e for e in extras if not (self.mode is PiiMode.DROP and is_pii(e))]


def enrollment_identity(row: JSONDict) -> int:
    """A 63-bit digest of the enrollment a row describes (see the module docstring)."""
    eid = row.get("enterprise_enrollment_id")
    if eid is not None and eid != "" and not isinstance(eid, bool):
        return key_digest("enterprise_enrollment", str(eid))
    enrollment, run = row.get("enrollment_id"), row.get("courserun_key")
    if enrollment is not None and enrollment != "" and isinstance(run, str) and run:
        return key_digest("enrollment", f"{enrollment}\x00{run}")
    return key_digest("row", orjson.dumps(row, option=orjson.OPT_SORT_KEYS).decode())


# --- CSV ---------------------------------------------------------------------------------

def csv_cell(value: object) -> str:
    """One CSV cell: ``null`` empty, booleans lower-case, nested values as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value if value.startswith(_CSV_GUARD) else value
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def write_csv(lines: Iterable[bytes], columns: list[str], part: PartFile) -> None:
    """Write a header and one record per NDJSON line into ``part``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")

    def emit(cells: list[str]) -> None:
        buf.seek(0)
        buf.truncate()
        writer.writerow(cells)
        part.write(buf.getvalue().encode("utf-8"))

    emit(columns)
    for line in lines:
        row = orjson.loads(line)
        emit([csv_cell(row.get(c)) for c in columns])


# --- state -------------------------------------------------------------------------------

@dataclass(slots=True)
class Tally:
    """The end-of-run summary of written rows: learners and outcomes."""

    learners: set[int] = field(default_factory=set)
    enrollments: int = 0
    passed: int = 0
    in_progress: int = 0
    failed: int = 0

    def add(self, row: JSONDict) -> None:
        """Count one written row (the original, before any PII transformation)."""
        self.enrollments += 1
        user = row.get("enterprise_user_id")
        if user is not None:
            self.learners.add(key_digest("learner", str(user)))
        status = row.get("progress_status")
        status = status.strip().lower() if isinstance(status, str) else ""
        if row.get("has_passed") is True or status == "passed":
            self.passed += 1
        elif status == "in progress":
            self.in_progress += 1
        elif status == "failed":
            self.failed += 1

    def as_dict(self) -> dict[str, int]:
        """Plain numbers for the manifest."""
        return {"learners": len(self.learners), "enrollments": self.enrollments,
                "passed": self.passed, "in_progress": self.in_progress, "failed": self.failed}


@dataclass(slots=True)
class EnterpriseState:
    """Counters of one enterprise's export."""

    uuid: str
    status: str = "pending"
    error: str | None = None
    access_denied: bool = False
    count_reported: int | None = None
    rows_received: int = 0
    unique: int = 0
    duplicates: int = 0
    not_consented: int = 0
    rows_written: int = 0
    gaps: int = 0
    walks: int = 0
    pages: int = 0
    pages_planned: int = 0
    page_size_used: int = 0
    clamped: bool = False
    page_errors: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    extra_fields: set[str] = field(default_factory=set)

    @property
    def dirname(self) -> str:
        """``enterprise=<uuid>`` (the UUID is validated and canonical)."""
        return f"enterprise={self.uuid}"

    def manifest(self) -> dict[str, Any]:
        """This enterprise's entry in the manifest."""
        return {
            "dir": self.dirname,
            "status": self.status,
            "error": self.error,
            "count_reported": self.count_reported,
            "rows_received": self.rows_received,
            "unique_found": self.unique,
            "duplicates_dropped": self.duplicates,
            "not_consented_dropped": self.not_consented,
            "rows_written": self.rows_written,
            "gaps": self.gaps,
            "walks": self.walks,
            "pages": self.pages,
            "page_size_used": self.page_size_used,
            "page_size_clamped": self.clamped,
            "page_errors": self.page_errors,
            "errors": self.errors,
            "summary": self.tally.as_dict(),
            "files": self.files,
        }

    def record_error(self, kind: str, exc: BaseException, page: int | None = None) -> None:
        """Keep a bounded list of what went wrong (messages carry no row data)."""
        if len(self.errors) >= _MAX_ERRORS_KEPT:
            return
        rec: dict[str, Any] = {"kind": kind, "at": now_iso(), "error": type(exc).__name__,
                               "message": REDACTOR.scrub(str(exc))}
        if page is not None:
            rec["page"] = page
        if isinstance(exc, ApiError):
            rec["status"] = exc.status
        self.errors.append(rec)


# --- files -------------------------------------------------------------------------------

def private_dir(path: Path) -> Path:
    """Create ``path`` (one level) as ``0700``, or tighten an existing one to ``0700``."""
    with disk_errors(path):
        if path.is_symlink():
            raise SinkError(f"refusing to write personal data through the symlink {path}")
        path.mkdir(mode=0o700, exist_ok=True)
        if stat.S_IMODE(path.stat().st_mode) != 0o700:
            path.chmod(0o700)
    return path


def _unlink(path: Path) -> None:
    with disk_errors(path), contextlib.suppress(FileNotFoundError):
        path.unlink()


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot hold the export, before anything is created.

    A file, a path under a file, a symbolic link (for OUT or ``OUT/learners``: personal
    data is never written through a link) or a directory we may not write are usage
    errors (exit 2), not disk failures.
    """
    for path in (out, out / LEARNERS_DIR):
        if path.is_symlink():
            raise ConfigError(f"--out {out}: {path} is a symbolic link; personal data is "
                              "never written through a link (pass the real directory)")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--out {out}: {probe} exists and is not a directory")
    if (out / LEARNERS_DIR).exists() and not (out / LEARNERS_DIR).is_dir():
        raise ConfigError(f"--out {out}: {out / LEARNERS_DIR} exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {probe} is not writable")


def _page_of(exc: ApiError | RequestError) -> int | None:
    """The page number a failed request asked for (from its URL), if any."""
    values = parse_qs(urlsplit(exc.url).query).get("page")
    return int(values[0]) if values and values[0].isdigit() else None


def _clear_enterprise(directory: Path) -> None:
    """Remove the learner files of one ``enterprise=<uuid>`` directory (ours only), and
    the directory if that leaves it empty."""
    if directory.is_symlink() or not directory.is_dir():
        return
    for name in (NDJSON_NAME, CSV_NAME):
        _unlink(directory / name)
        _unlink(directory / (name + PART))
    with contextlib.suppress(OSError):
        directory.rmdir()  # only if empty


def _remove_staging(staging: Path) -> None:
    """Remove a staging tree (this run's unfinished files, or a killed run's)."""
    if staging.is_symlink() or not staging.is_dir():
        return
    for directory in staging.iterdir():
        if directory.is_dir() and not directory.is_symlink():
            for name in (NDJSON_NAME, CSV_NAME):
                _unlink(directory / name)
                _unlink(directory / (name + PART))
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        staging.rmdir()


# --- the run -----------------------------------------------------------------------------

class LearnerExport:
    """One ``harvester learners`` run: enterprises one after another, one budget."""

    def __init__(
        self,
        settings: Settings,
        options: LearnerOptions,
        pii: PiiPolicy,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        stats: Stats | None = None,
    ) -> None:
        if pii.mode is not options.pii:
            raise ConfigError(f"the PII policy ({pii.mode}) does not match --pii "
                              f"({options.pii})")
        self.settings = settings
        self.options = options
        self.pii = pii
        self.out = settings.output.out
        self.root = self.out / LEARNERS_DIR
        self.staging = self.root / STATE_DIR / STAGING_DIR
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self.stats = stats or Stats()
        self.enterprises = [EnterpriseState(u) for u in options.enterprises]
        self.run_id = ""
        self.started_at = ""
        self._last_progress = 0.0

    def pii_notice(self) -> str | None:
        """The one-line stderr notice for ``--pii keep``, else None."""
        if self.pii.mode is not PiiMode.KEEP:
            return None
        return (f"harvester: note: {self.root}/ will hold personal data (emails, names, "
                "usernames, SSO ids, grades); files are private (0600). Use --pii hash or "
                "--pii drop to pseudonymise or remove identifying fields.")

    async def run(self) -> RunResult:
        """Export every enterprise into staging, then publish; the manifest is written last."""
        self.settings.api.require_credentials()
        check_out(self.out)
        ensure_dir(self.out)
        private_dir(self.root)
        private_dir(self.root / STATE_DIR)  # before RunLock makes it with default modes
        lock = RunLock(self.root)
        lock.acquire()
        with disk_errors(lock.path):
            lock.path.chmod(0o600)
        try:
            _remove_staging(self.staging)  # what a killed run left: never published
            private_dir(self.staging)
            self.run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuidlib.uuid4().hex[:8]}"
            self.started_at = now_iso()
            event("learners.start", run_id=self.run_id, enterprises=len(self.enterprises),
                  pii=self.pii.mode.value, csv=self.options.csv,
                  consented_only=self.options.consented_only)
            t0 = self._clock()
            self._last_progress = t0
            async with ApiClient(self.settings, stats=self.stats, clock=self._clock,
                                 sleep=self._sleep, rand=self._rand) as client:
                for es in self.enterprises:
                    await self._export(client, es)
            return self._finish(self._clock() - t0)
        finally:
            _remove_staging(self.staging)  # empty after a publish; else unfinished PII
            lock.release()

    async def _export(self, client: ApiClient, es: EnterpriseState) -> None:
        directory = private_dir(self.staging / es.dirname)
        part = PartFile(directory / NDJSON_NAME, private=True)
        committed = False
        es.status = "listing"
        event("learners.enterprise_start", enterprise=es.uuid)
        try:
            try:
                await self._walks(client, es, part)
            except (ApiError, RequestError) as exc:  # 401/403, or nothing arrived at all
                self._fail(es, exc)
                return
            self._commit(es, part, directory)
            committed = True
        finally:
            if not committed:
                part.abandon()
                _unlink(part.path)
        event("learners.enterprise_done", enterprise=es.uuid, status=es.status,
              count=es.count_reported, written=es.rows_written, duplicates=es.duplicates,
              gaps=es.gaps, walks=es.walks, pages=es.pages)

    def _fail(self, es: EnterpriseState, exc: ApiError | RequestError) -> None:
        es.status = "failed"
        es.error = REDACTOR.scrub(str(exc))
        es.access_denied = isinstance(exc, Forbidden | Unauthorized)
        es.record_error("enterprise_failed", exc)
        event("learners.enterprise_failed", logging.WARNING, enterprise=es.uuid,
              error=type(exc).__name__, status=getattr(exc, "status", None))

    async def _walks(self, client: ApiClient, es: EnterpriseState, part: PartFile) -> None:
        seen: set[int] = set()
        broken: list[ApiError | RequestError] = []

        async def walk(n: int) -> bool:
            es.walks = n
            try:
                await self._walk(client, es, part, seen, seen if n == 1 else set())
                return True
            except (Forbidden, Unauthorized):
                raise  # these credentials may not read it: no page will do better
            except (ApiError, RequestError) as exc:
                # A page the walk could not go on without (page 1, or a later page that
                # broke the walk): keep every row so far; a rewalk may find the rest.
                broken.append(exc)
                es.page_errors += 1
                es.record_error("walk_failed", exc, page=_page_of(exc))
                event("learners.walk_failed", logging.WARNING, enterprise=es.uuid, walk=n,
                      error=type(exc).__name__, status=getattr(exc, "status", None))
                return False  # cut short: it cannot show that the gap is persistent

        await walk_until_complete(walk, lambda: (es.unique, es.count_reported), first=1,
                                  max_rewalks=self.options.max_rewalks,
                                  event_name="learners.rewalk", enterprise=es.uuid)
        if broken and es.rows_received == 0:
            raise broken[0]  # nothing arrived at all: the enterprise failed
        es.gaps = max(0, (es.count_reported or 0) - es.unique)
        unjudged = es.count_reported is None and es.page_errors > 0
        es.status = "partial" if es.gaps or unjudged else "complete"
        if es.gaps:
            event("learners.gaps", logging.WARNING, enterprise=es.uuid, gaps=es.gaps,
                  count=es.count_reported, walks=es.walks)

    async def _walk(self, client: ApiClient, es: EnterpriseState, part: PartFile,
                    seen: set[int], walk_seen: set[int]) -> None:
        async def on_plan(plan: ListingPlan) -> None:
            es.count_reported = plan.count
            es.page_size_used = plan.page_size
            es.clamped = plan.clamped
            es.pages_planned = plan.total_pages or 0

        async def on_page_error(number: int, exc: HarvestError) -> None:
            es.page_errors += 1
            es.record_error("page_failed", exc, page=number)
            event("learners.page_failed", logging.WARNING, enterprise=es.uuid, page=number,
                  error=type(exc).__name__)

        async def take(page: Page) -> None:
            self._take(es, part, page, seen, walk_seen)

        try:
            # Only a refusal ends the walk: a page that keeps answering markup (a
            # maintenance page) is one failed page, not a reason to drop the others.
            await walk_pages(client, ThrottleClass.LEARNERS, learners_path(es.uuid), PAGE_SIZE,
                             take, parallel=self.settings.limits.page_concurrency,
                             on_plan=on_plan, on_page_error=on_page_error,
                             fatal=(Forbidden, Unauthorized))
        except BaseExceptionGroup as group:
            # Pages after the first run in a TaskGroup: a 403 there arrives wrapped.
            raise leading_error(group) from None

    def _take(self, es: EnterpriseState, part: PartFile, page: Page, seen: set[int],
              walk_seen: set[int]) -> None:
        meta = {"enterprise_uuid": es.uuid, "fetched_at": now_iso(), "pii": self.pii.mode.value}
        for row in page.results:
            es.rows_received += 1
            digest = enrollment_identity(row)
            if digest in walk_seen:
                es.duplicates += 1  # the page boundaries moved within this walk
                continue
            new = digest not in seen  # else written by an earlier walk
            walk_seen.add(digest)
            seen.add(digest)
            if not new:
                continue
            es.unique += 1
            if self.options.consented_only and row.get("is_consent_granted") is not True:
                es.not_consented += 1
                continue
            es.tally.add(row)
            out = self.pii.apply(row)
            es.extra_fields.update(k for k in out if k not in _KNOWN)
            part.write(encode_item(out, meta))
            es.rows_written += 1
            self.stats.items_written += 1
        es.pages += 1
        now = self._clock()
        if now - self._last_progress >= _PROGRESS_EVERY:
            self._last_progress = now
            event("learners.progress", **self.progress())

    def _commit(self, es: EnterpriseState, part: PartFile, directory: Path) -> None:
        """Write the CSV from the NDJSON ``.part``, then rename both.

        Runs on the event loop on purpose: enterprises are exported one at a time, so
        nothing else is waiting, and a thread could outlive a cancelled run.
        """
        part.checkpoint()
        csv_part: PartFile | None = None
        try:
            if self.options.csv:
                csv_part = PartFile(directory / CSV_NAME, private=True)
                write_csv(iter_lines(part.path), self.pii.columns(es.extra_fields), csv_part)
            infos: list[FileInfo] = [part.commit()]
            if csv_part is not None:
                infos.append(csv_part.commit())
                csv_part = None
        finally:
            if csv_part is not None:
                csv_part.abandon()
                _unlink(csv_part.path)
        es.files = {i.name: i.as_dict() for i in infos}

    def _finish(self, wall: float) -> RunResult:
        done = [es for es in self.enterprises if es.status in ("complete", "partial")]
        if all(es.status == "complete" for es in self.enterprises):
            status, code = "complete", EXIT_OK
        elif done:
            status, code = "partial", EXIT_PARTIAL
        else:
            status = "failed"
            denied = all(es.access_denied for es in self.enterprises)
            code = EXIT_USAGE if denied else EXIT_PARTIAL
        stats = self.stats.as_dict()
        totals: dict[str, Any] = {
            "enterprises": len(self.enterprises),
            "enterprises_done": len(done),
            "rows_written": sum(es.rows_written for es in self.enterprises),
            "duplicates_dropped": sum(es.duplicates for es in self.enterprises),
            "not_consented_dropped": sum(es.not_consented for es in self.enterprises),
            "gaps": sum(es.gaps for es in self.enterprises),
            "learners": sum(len(es.tally.learners) for es in self.enterprises),
            "enrollments": sum(es.tally.enrollments for es in self.enterprises),
            "passed": sum(es.tally.passed for es in self.enterprises),
            "in_progress": sum(es.tally.in_progress for es in self.enterprises),
            "failed": sum(es.tally.failed for es in self.enterprises),
        }
        for k in ("requests", "requests_total", "retries", "retries_by_cause",
                  "throttled_429", "transport_errors", "bytes_in", "tokens_issued", "pages"):
            totals[k] = stats[k]
        totals["wall_seconds"] = round(wall, 3)
        manifest: dict[str, Any] = {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "ended_at": now_iso(),
            "status": status,
            "version": __version__,
            "pii": {"mode": self.pii.mode.value, "fields": list(PII_FIELDS),
                    "key_id": self.pii.key_id},
            "consented_only": self.options.consented_only,
            "csv": self.options.csv,
            "config": {"api_base": self.settings.api.base,
                       "rate_learners": str(self.settings.limits.learners),
                       "page_size": PAGE_SIZE, "max_rewalks": self.options.max_rewalks},
            "enterprises": {es.uuid: es.manifest() for es in self.enterprises},
            "totals": totals,
        }
        self._publish()
        write_json_atomic(self.root / MANIFEST_NAME, manifest, private=True)
        event("learners.done", run_id=self.run_id, status=status,
              rows=totals["rows_written"], gaps=totals["gaps"])
        message = ""
        if code == EXIT_USAGE:
            first = self.enterprises[0]
            message = (f"no enterprise could be exported: these credentials may not read "
                       f"the learner summary of {first.uuid}"
                       + (f" and {len(self.enterprises) - 1} more" if len(self.enterprises) > 1
                          else "") + f" ({first.error})")
        return RunResult(status, code, self.root, manifest, message)

    def _publish(self) -> None:
        """Replace the previous export with this run's staged files.

        The old manifest goes first (a crash from here on leaves no manifest rather than
        one describing files it did not write); then each enterprise's files move in, or
        its old files go if it failed; then enterprises this run does not list go.
        Synchronous on purpose: a signal cannot stop it halfway.
        """
        _unlink(self.root / MANIFEST_NAME)
        fsync_dir(self.root)
        for es in self.enterprises:
            staged, final = self.staging / es.dirname, self.root / es.dirname
            if not es.files:
                _clear_enterprise(final)
                continue
            private_dir(final)
            for name in (NDJSON_NAME, CSV_NAME):
                with disk_errors(final / name):
                    if name in es.files:
                        os.replace(staged / name, final / name)  # replaces a link, never follows
                    else:
                        _unlink(final / name)
                    _unlink(final / (name + PART))
            fsync_dir(final)
        ours = {es.dirname for es in self.enterprises}
        for directory in self.root.glob("enterprise=*"):
            if directory.name not in ours:
                _clear_enterprise(directory)
        fsync_dir(self.root)

    # --- progress --------------------------------------------------------------------------

    def progress(self) -> dict[str, Any]:
        """A snapshot for progress displays and the periodic log event."""
        return {
            "enterprises_done": sum(es.status in ("complete", "partial", "failed")
                                    for es in self.enterprises),
            "enterprises": len(self.enterprises),
            "rows": sum(es.rows_written for es in self.enterprises),
            "pages": sum(es.pages for es in self.enterprises),
            "requests": self.stats.total_requests(),
            "throttled": self.stats.throttled,
        }


def progress_display(export: LearnerExport, enabled: bool) -> AbstractContextManager[Any]:
    """A rich Live table of per-enterprise progress on stderr, or a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    def render() -> Table:
        p = export.progress()
        t = Table(title=f"learners: rows {p['rows']}  requests {p['requests']}  "
                        f"429s {p['throttled']}")
        for col in ("enterprise", "status", "walk", "pages", "rows", "dupes"):
            t.add_column(col)
        for es in export.enterprises[:20]:
            t.add_row(es.uuid[:13], es.status, str(es.walks),
                      f"{es.pages}/{es.pages_planned or '?'}", str(es.rows_written),
                      str(es.duplicates))
        return t

    return Live(console=Console(stderr=True), get_renderable=render, refresh_per_second=4,
                transient=True)


def format_summary(result: RunResult) -> str:
    """The short end-of-run summary for stdout."""
    m = result.manifest or {}
    t = m.get("totals") or {}
    lines = [f"learners {m.get('run_id', '')}: {result.status}"]
    for uuid, e in (m.get("enterprises") or {}).items():
        lines.append(f"  {uuid}  {e['status']:<8}  count {e['count_reported']}  "
                     f"written {e['rows_written']}  duplicates {e['duplicates_dropped']}  "
                     f"gaps {e['gaps']}")
    lines += [
        f"learners     {t.get('learners')}",
        f"enrollments  {t.get('enrollments')}",
        f"passed       {t.get('passed')}",
        f"in progress  {t.get('in_progress')}",
        f"failed       {t.get('failed')}",
        f"requests {t.get('requests_total')}  retries {t.get('retries')}  "
        f"429s {t.get('throttled_429')}  wall {t.get('wall_seconds')} s",
        f"output: {result.out.resolve()} ({MANIFEST_NAME}, enterprise=<uuid>/{NDJSON_NAME})",
    ]
    return "\n".join(lines)

