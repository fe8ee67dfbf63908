"""Personal data in learner-summary rows: which fields identify a person, and ``--pii``.

Owns the serializer's field list (:data:`FIELD_ORDER`), the personal fields by kind
(:data:`PII_KINDS`), the fail-closed name rule for unlisted fields (:func:`is_pii`) and
:class:`PiiPolicy`, which keeps, hashes (keyed HMAC) or drops them. Pure: no I/O besides
reading the key from the environment it is given. Must never log, repr or raise with a
row value or the key in it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

from harvester.config import PiiMode
from harvester.errors import ConfigError
from harvester.models import JSONDict
from harvester.redact import REDACTOR

__all__ = ["FIELD_ORDER", "KNOWN_FIELDS", "PII_FIELDS", "PII_HELP", "PII_KEY_ENV",
           "PII_KEY_MIN", "PII_KINDS", "PiiMode", "PiiPolicy", "is_pii"]

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
KNOWN_FIELDS: Final = frozenset(FIELD_ORDER)

#: Every field the serializer, the API reference or older serializers send that identifies
#: a person, by kind (see the package docstring and the README's table). ``--pii`` hashes
#: or drops all of them.
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
#: In a field the serializer does not list, any of these inside its normalised name (words
#: lower-cased and run together: ``firstName``, ``first-name`` and ``firstname`` are all
#: ``firstname``) makes it personal, failing closed: ``lms_user_id``, ``managerEmail``...
_PII_NAME_PARTS: Final = (
    "user", "mail", "learner", "student", "employee", "person", "phone", "mobile", "address",
    "birth", "login", "surname", "firstname", "lastname", "fullname", "givenname",
    "middlename", "familyname", "displayname", "legalname", "preferredname", "nickname",
    "maidenname", "realname", "passport", "nationalid", "clientip", "remoteip", "ipaddr",
    "ipv4", "ipv6")
#: Whole words that make a field personal (too short to match inside other words).
_PII_NAME_TOKENS: Final = frozenset({"uid", "guid", "ip", "dob", "lms", "sso", "ssn", "gender"})
#: With the word ``name``, these make a person's name; ``name`` alone is one too.
_PERSON_NAME_TOKENS: Final = frozenset({"first", "last", "full", "middle", "given", "family",
                                        "display", "legal", "preferred", "sur", "nick",
                                        "maiden", "real", "contact", "owner"})
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS: Final = re.compile(r"[^a-z0-9]+")

#: Nesting levels inside a row that ``--pii hash|drop`` inspects (rows are flat; the
#: serializer nests nothing).
_MAX_DEPTH: Final = 32

PII_KEY_ENV: Final = "HARVESTER_PII_KEY"
PII_KEY_MIN: Final = 16

#: One line for ``--help``: what the PII modes touch.
PII_HELP: Final = (
    "personal-data fields: keep them (default), hash them (HMAC-SHA256 hex, key of at "
    f"least {PII_KEY_MIN} characters in env {PII_KEY_ENV}) or drop them. Fields: "
    f"{', '.join(PII_FIELDS)}, and any unlisted field whose name looks like a person's "
    "in any spelling (user, email, firstName, fullname, uid, ip, ...), at any depth. Files "
    "are 0600 and directories 0700 in every mode")


def is_pii(name: str) -> bool:
    """Whether a field identifies a person: listed in :data:`PII_KINDS`, or a field the
    serializer does not list whose name looks like a person's (fails closed), whatever
    its spelling: ``firstName``, ``first-name``, ``FIRST_NAME``, ``firstname``."""
    if name in _PII:
        return True
    if name in KNOWN_FIELDS:
        return False
    words = [w for w in _SEPARATORS.split(_CAMEL.sub("_", name).lower()) if w]
    joined, tokens = "".join(words), set(words)
    if any(part in joined for part in _PII_NAME_PARTS) or tokens & _PII_NAME_TOKENS:
        return True
    if joined.startswith("sso") or (joined.endswith("uid") and not joined.endswith("uuid")):
        return True  # ssoSubject, externaluid, idpGuid (a catalog_uuid is not a person's)
    return "name" in tokens and (len(tokens) == 1 or bool(tokens & _PERSON_NAME_TOKENS))


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
        """The row as it is written: a new dict in the row's key order. Objects nested in
        a kept field (``{"manager": {"email": ...}}``, a list of them) get the same rule
        at every depth; a personal field's whole value is hashed or dropped. A value
        nested deeper than :data:`_MAX_DEPTH` is not inspected: it is written as null."""
        if self.mode is PiiMode.KEEP:
            return dict(row)
        return self._object(row, 0)

    def _object(self, obj: JSONDict, depth: int) -> JSONDict:
        if self.mode is PiiMode.DROP:
            return {k: self._nested(v, depth) for k, v in obj.items() if not is_pii(k)}
        return {k: (self.hash_value(v) if v is not None and is_pii(k)
                    else self._nested(v, depth)) for k, v in obj.items()}

    def _nested(self, value: object, depth: int) -> Any:
        if not isinstance(value, dict | list):
            return value
        if depth >= _MAX_DEPTH:
            return None  # fails closed: what was not inspected is not written
        if isinstance(value, dict):
            return self._object(value, depth + 1)
        return [self._nested(v, depth + 1) for v in value]

    def columns(self, extra: Iterable[str]) -> list[str]:
        """CSV columns: the serializer's order, then unlisted fields sorted."""
        known = [f for f in FIELD_ORDER if not (self.mode is PiiMode.DROP and is_pii(f))]
        extras = sorted({e for e in extra if e not in KNOWN_FIELDS and e != "_harvest"})
        return known + [e for e in extras if not (self.mode is PiiMode.DROP and is_pii(e))]
