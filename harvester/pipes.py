"""A command's stdout whose reader went away (``harvester verify OUT | head -1``): the
command ends quietly with 128 + SIGPIPE, as other command-line tools do, not with a
``BrokenPipeError`` traceback."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["EXIT_CLOSED_PIPE", "quiet_on_closed_pipe"]

#: Exit code of a command whose reader went away (``| head``): 128 + SIGPIPE, as a CLI
#: killed by the signal reports it.
EXIT_CLOSED_PIPE: Final = 128 + signal.SIGPIPE


def quiet_on_closed_pipe(command: Callable[[], int]) -> int:
    """Run ``command`` and flush its output; a reader that closed the pipe (``| head -1``)
    ends it quietly, as other CLIs end, instead of with a traceback. stdout is then
    pointed at /dev/null so that the interpreter's own last flush cannot fail again."""
    try:
        code = command()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_CLOSED_PIPE
