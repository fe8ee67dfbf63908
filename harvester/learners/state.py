"""What one learner export has found so far: per-enterprise counters and the summary tally.

:class:`EnterpriseState` shares its walk counters with a catalog's state
(:class:`harvester.run.WalkCounters`) and adds what only learners have (consent, rows
written, files). Holds no row data: identities are 63-bit digests, errors carry no row.
Must not do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from harvester.models import JSONDict, key_digest
from harvester.redact import REDACTOR
from harvester.run import WalkCounters, error_record, now_iso

__all__ = ["EnterpriseState", "Tally", "enrollment_identity"]

_MAX_ERRORS_KEPT: Final = 50


def enrollment_identity(row: JSONDict) -> int:
    """A 63-bit digest of the enrollment a row describes: ``enterprise_enrollment_id``,
    else ``enrollment_id`` + ``courserun_key``, else the whole row."""
    eid = row.get("enterprise_enrollment_id")
    if eid is not None and eid != "" and not isinstance(eid, bool):
        return key_digest("enterprise_enrollment", str(eid))
    enrollment, run = row.get("enrollment_id"), row.get("courserun_key")
    if enrollment is not None and enrollment != "" and isinstance(run, str) and run:
        return key_digest("enrollment", f"{enrollment}\x00{run}")
    return key_digest("row", orjson.dumps(row, option=orjson.OPT_SORT_KEYS).decode())


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


@dataclass(slots=True, kw_only=True)
class EnterpriseState(WalkCounters):
    """Counters of one enterprise's export."""

    uuid: str = field(kw_only=False)
    status: str = "pending"
    error: str | None = None
    access_denied: bool = False
    rows_received: int = 0
    not_consented: int = 0
    rows_written: int = 0
    page_errors: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    extra_fields: set[str] = field(default_factory=set)
    #: For a failed enterprise: what became of the previous run's files (carried, stale,
    #: with the run and PII mode that wrote them; or removed, and why). None otherwise.
    previous_files: dict[str, Any] | None = None

    @property
    def dirname(self) -> str:
        """``enterprise=<uuid>`` (the UUID is validated and canonical)."""
        return f"enterprise={self.uuid}"

    @property
    def settled(self) -> bool:
        """Exported (completely or not) or failed: nothing more happens to it."""
        return self.status in ("complete", "partial", "failed")

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
            **({"previous_files": self.previous_files} if self.previous_files else {}),
        }

    def record_error(self, kind: str, exc: BaseException, page: int | None = None) -> None:
        """Keep a bounded list of what went wrong (messages carry no row data)."""
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(REDACTOR.scrub_obj(
                error_record(exc, kind=kind, at=now_iso(), page=page)))
