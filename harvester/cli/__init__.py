"""The command line: parse, load settings, run, map the outcome to an exit code.

Wiring only. Exit codes: 0 complete, 3 partial (everything else written), 2 usage,
config, auth or state errors, 1 unexpected, 130/143 after SIGINT/SIGTERM (files closed,
nothing half-written looks complete; rerun to resume).

This module owns :func:`main` (dispatch and the error-to-exit-code mapping) and
re-exports the names other code imports from ``harvester.cli``. The package, one way:
``parser`` (the flags) and ``options`` (what they mean) <- ``jobs`` (signals,
``--metrics-file``, publish) <- ``tenants`` <- the commands (``harvest``, ``sync``,
``learners``, ``tools``) <- this module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from harvester.cli.harvest import cmd_harvest
from harvester.cli.jobs import EXIT_SIGINT, EXIT_SIGTERM, Interrupted, run_job, say
from harvester.cli.learners import cmd_learners
from harvester.cli.parser import build_parser
from harvester.cli.sync import cmd_sync
from harvester.cli.tools import cmd_demo, cmd_export, cmd_plan, cmd_verify
from harvester.errors import (
    AuthError,
    ConfigError,
    HarvestError,
    PublishError,
    SinkError,
    StateError,
    UnsafePath,
)
from harvester.pipes import quiet_on_closed_pipe
from harvester.run import EXIT_PARTIAL, EXIT_UNEXPECTED, EXIT_USAGE

__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "Interrupted", "build_parser", "main", "run_job"]

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "harvest": cmd_harvest, "sync": cmd_sync, "plan": cmd_plan, "export": cmd_export,
    "learners": cmd_learners, "demo": cmd_demo, "verify": cmd_verify,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harvester`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "sim":
        from harvester.sim.__main__ import main as sim_main

        return sim_main(args[1:])
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # argparse already printed usage
        return EXIT_USAGE if exc.code not in (0, None) else 0
    try:
        return quiet_on_closed_pipe(lambda: _COMMANDS[ns.command](ns))
    except Interrupted as exc:
        return exc.code
    except (ConfigError, AuthError, StateError, UnsafePath) as exc:
        say(str(exc))
        return EXIT_USAGE
    except PublishError as exc:
        say(f"{exc} (the local output is intact; rerun the same command to resume the "
            "publish)")
        return EXIT_PARTIAL
    except SinkError as exc:
        say(f"{exc} (everything committed so far is kept; rerun to resume)")
        return EXIT_UNEXPECTED
    except HarvestError as exc:
        say(str(exc))
        return EXIT_UNEXPECTED
