"""Paths a user names for us to write outside OUT (``--metrics-file``, ``export --out``).

What is at such a path is checked with lstat, never opened: a device, FIFO or socket is
refused (renaming our temp over it would destroy it; opening it can block forever), a link
is replaced as a link, never followed. A trailing slash names a directory, never a file.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Callable
from pathlib import Path

from harvester.config import Settings, parse_file_path
from harvester.errors import ConfigError

__all__ = ["file_arg", "refuse_special", "run_dirs"]


def file_arg(text: str) -> Path:
    """An argparse type: a file's path (not empty, no trailing slash)."""
    try:
        return parse_file_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def refuse_special(path: Path, name: str) -> None:
    """Raise :class:`ConfigError` unless what is at ``path`` is nothing, a regular file
    or a link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{name}: {path}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{name}: {path} is a directory; name a file in it")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise ConfigError(f"{name}: {path} is not a regular file (a device, FIFO or "
                          "socket); name a regular file")


def run_dirs(command: str, ns: argparse.Namespace,
             settings: Callable[[argparse.Namespace], Settings]) -> tuple[Path | None, ...]:
    """The directories ``command`` writes (``--store``, OUT, the configured store): a
    user-named file must stay out of them. A config that does not load is the command's
    own exit 2, said there."""
    store: Path | None = getattr(ns, "store", None)
    try:
        s = settings(ns)
    except ConfigError:
        return (store,)
    mine: dict[str, Path | None] = {"harvest": s.output.out, "learners": s.output.out,
                                    "sync": s.sync.store, "plan": s.sync.store}
    return (store, mine.get(command))
