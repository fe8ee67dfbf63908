"""The one gate between what a server sends and a terminal.

Owns :func:`term_text` (what a terminal acts on removed) and :func:`cell` (a rich table cell
that is never read as markup). Every live view and summary passes server text (titles,
ids, types, error text) through here. Must not draw, print or import ``rich`` at import
time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harvester.obs import replace_unsafe

if TYPE_CHECKING:
    from rich.text import Text

__all__ = ["cell", "term_text"]


def term_text(value: object) -> str:
    """A value as it may reach a terminal: every character a terminal would act on rather
    than show removed (C0/C1 controls, DEL, bidi and zero-width controls, line and
    paragraph separators: :func:`harvester.obs.is_unsafe`, the same definition the log
    lines escape). The one gate for what a server sends (titles, ids, types, error text)
    on its way to a screen; rich cells also go through :func:`cell`, so ``[bold]`` stays
    text, not markup."""
    return replace_unsafe(str(value), _removed)


def _removed(_ch: str) -> str:
    return ""


def cell(value: object) -> Text:
    """A table cell: :func:`term_text`, never read as rich markup."""
    from rich.text import Text

    return Text(term_text(value))
