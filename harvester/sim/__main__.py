"""``python -m harvester.sim``: serve the simulator until SIGINT/SIGTERM.

Prints exactly one line on start, then serves::

    base_url=http://127.0.0.1:PORT client_id=ID client_secret=SECRET

With ``--tenants N`` (N > 1) the ``[[tenants]]`` config snippet and the ``export``
lines of its variables follow, ending with ``# end of tenants``.

Every :class:`~harvester.sim.config.SimConfig` field is a flag (``seed`` -> ``--seed``,
``fault_kinds`` -> ``--fault-kinds 500,reset``, booleans as ``--etag/--no-etag``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import re
import signal
import sys
import typing
from collections.abc import Callable
from typing import Any

from harvester.sim.config import SimConfig
from harvester.sim.server import SimServer

__all__ = ["build_parser", "config_from_args", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), as in ``harvester``."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _metavar(name: str, hint: object) -> str:
    """What a flag's value is (N, RATE, URL...), never the upper-cased field name."""
    if hint is int:
        return "N"
    if hint is float:
        return "MS" if name.endswith("_ms") else "FRACTION" if "rate" in name or \
            name == "churn" else "X"
    if hint == tuple[str, ...]:
        return "LIST"
    if name.startswith("rate_"):
        return "RATE"
    return "URL" if name.endswith("_base") else "MODE" if name.endswith(("_mode", "_scope")) \
        else "TEXT"


def _port(text: str) -> int:
    """A TCP port to bind: 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535 (0 = any free port), got {port}")
    return port


_HOSTNAME: typing.Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _host(text: str) -> str:
    """An interface to bind: an IP address or a host name (checked before binding, so a
    typo is a usage error, not a failure to serve)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if len(text) > 253 or not _HOSTNAME.fullmatch(text):
            raise argparse.ArgumentTypeError(f"expected an IP address or a host name, got "
                                             f"{text!r}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per ``SimConfig`` field plus ``--host``/``--port``."""
    parser = _Parser(
        prog="harvester sim", description="Local simulator of the edX Enterprise API."
    )
    parser.add_argument("--host", type=_host, default="127.0.0.1", metavar="ADDR",
                        help="interface to bind")
    parser.add_argument("--port", type=_port, default=0, metavar="N",
                        help="port to bind (0 = any free)")
    hints = typing.get_type_hints(SimConfig)
    for field in dataclasses.fields(SimConfig):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        kwargs: dict[str, Any] = {"default": field.default, "help": field.metadata.get("help")}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            convert: Callable[[str], Any]
            if hint is int:
                convert = int
            elif hint is float:
                convert = float
            elif hint == tuple[str, ...]:
                convert = _csv
            else:
                convert = str  # str and str | None
            kwargs["type"] = convert
            kwargs["metavar"] = _metavar(field.name, hint)
        parser.add_argument(flag, dest=field.name, **kwargs)
    return parser


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Build (and thereby validate) a ``SimConfig`` from parsed arguments."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SimConfig)}
    return SimConfig(**values)


#: The last line of the start-up banner with ``--tenants N`` (N > 1).
BANNER_END = "# end of tenants"


def _tenant_banner(srv: SimServer) -> str:
    """The ``[[tenants]]`` snippet for the harvester's config file, and the env lines."""
    toml, env = srv.tenant_config()
    exports = "\n".join(f"export {k}={v}" for k, v in env.items())
    return (f"# {len(env) // 2} tenants: put this in the harvester's config file\n{toml}\n"
            f"# and this in its environment\n{exports}\n{BANNER_END}")


async def _serve(cfg: SimConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with SimServer(cfg, host=host, port=port) as srv:
            line = (
                f"base_url={srv.base_url} client_id={srv.client_id} "
                f"client_secret={srv.client_secret}"
            )
            if cfg.tenants > 1:
                line += "\n" + _tenant_banner(srv)
            print(line, flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, serve until a stop signal, return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve(cfg, args.host, args.port))
    except OSError as exc:
        print(f"harvester sim: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
