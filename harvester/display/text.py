"""The one gate between what a server sends and a terminal.

Owns :func:`term_text` (control characters removed) and :func:`cell` (a rich table cell
that is never read as markup). Every live view and summary passes server text (titles,
ids, types, error text) through here. Must not draw, print or import ``rich`` at import
time.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

__all__ = ["cell", "term_text"]

#: What a terminal would act on rather than show: C0/C1 controls (escape sequences, bells,
#: carriage returns), DEL, and the zero-width and bidi controls that hide or reorder text.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def term_text(value: object) -> str:
    """A value as it may reach a terminal: every control character removed. The one
    gate for what a server sends (titles, ids, types, error text) on its way to a screen;
    rich cells also go through :func:`cell`, so ``[bold]`` stays text, not markup."""
    return _CONTROLS.sub("", str(value))


def cell(value: object) -> Text:
    """A table cell: :func:`term_text`, never read as rich markup."""
    from rich.text import Text

    return Text(term_text(value))
