"""Learner-summary export: every enrollment of an enterprise's learners, as NDJSON (and CSV).

``harvester learners --enterprise UUID --out DIR`` walks
``/enterprise/v3/enterprise-customer/{uuid}/learner-summary`` asking ``page_size=1000`` (the
endpoint's maximum) through the harvest's own client, budgets, retries and page walker
(:func:`harvester.pipeline.walk_pages`), under the learner-summary budget (``rates.learners``,
60/min by default, separate from the LMS budget).

The package, one concern a module (imports go down this list, never up)::

    export.py    LearnerExport: the run (lock, staging, outcome, manifest, publish)
    walker.py    EnterpriseWalker: one enterprise's walks, dedupe, --pii, staged files
    files.py     the layout on disk, private modes, the --out check, publish
    state.py     EnterpriseState (walk counters shared with catalogs), Tally
    csv.py       the CSV cells and file
    pii.py       the personal fields, --pii (PiiPolicy)
    options.py   LearnerOptions: the [learners] settings, checked for a run

Progress and the end-of-run summary are drawn by :mod:`harvester.display`.

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

from harvester.learners.csv import csv_cell, write_csv
from harvester.learners.export import LearnerExport
from harvester.learners.files import (
    CSV_NAME,
    LEARNERS_DIR,
    MANIFEST_NAME,
    NDJSON_NAME,
    STAGING_DIR,
    check_out,
    private_dir,
)
from harvester.learners.options import LearnerOptions
from harvester.learners.pii import (
    FIELD_ORDER,
    PII_FIELDS,
    PII_HELP,
    PII_KEY_ENV,
    PII_KEY_MIN,
    PII_KINDS,
    PiiMode,
    PiiPolicy,
    is_pii,
)
from harvester.learners.state import EnterpriseState, Tally, enrollment_identity
from harvester.learners.walker import PAGE_SIZE

__all__ = [
    "CSV_NAME",
    "FIELD_ORDER",
    "LEARNERS_DIR",
    "MANIFEST_NAME",
    "NDJSON_NAME",
    "PAGE_SIZE",
    "PII_FIELDS",
    "PII_HELP",
    "PII_KEY_ENV",
    "PII_KEY_MIN",
    "PII_KINDS",
    "STAGING_DIR",
    "EnterpriseState",
    "LearnerExport",
    "LearnerOptions",
    "PiiMode",
    "PiiPolicy",
    "Tally",
    "check_out",
    "csv_cell",
    "enrollment_identity",
    "is_pii",
    "private_dir",
    "write_csv",
]
