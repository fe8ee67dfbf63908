"""The learner-summary CSV: one cell's text, and a file written from the NDJSON.

Owns the cell rules (``null`` empty, booleans lower-case, nested values as JSON, a
spreadsheet-formula guard on text). Must not choose columns (``pii.PiiPolicy.columns``
does) or open files itself: it writes into the :class:`~harvester.partfile.PartFile` given.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Final

import orjson

from harvester.partfile import PartFile

__all__ = ["csv_cell", "write_csv"]

#: A text cell starting with one of these gets a leading ``'``: a spreadsheet shows it
#: instead of evaluating it as a formula.
_CSV_GUARD: Final = ("=", "+", "-", "@", "\t", "\r")


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
