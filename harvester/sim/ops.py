"""The operator endpoints: ``/__info``, ``/__stats``, ``/__reset``, ``/__epoch``,
``/__config`` and ``/__changes``.

They sit beside the simulated API, not behind its gateway: no auth, throttles, faults or
stats. Owns which knobs may change at run time and how a JSON value becomes a knob's type.
Each handler takes the :class:`~.state.SimState` it acts on; :mod:`.app` registers
:data:`OPS` and hands it in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from harvester.sim.config import SimConfig
from harvester.sim.reply import json_response
from harvester.sim.state import SimState

__all__ = ["OPS", "OpsHandler"]

OpsHandler = Callable[[SimState, web.Request], Awaitable[web.StreamResponse]]


async def _info(st: SimState, request: web.Request) -> web.StreamResponse:
    base = st.base_url or f"{request.scheme}://{request.host}"
    return json_response(200, st.info(base))


async def _stats(st: SimState, request: web.Request) -> web.StreamResponse:
    return json_response(200, st.stats.snapshot())


async def _reset(st: SimState, request: web.Request) -> web.StreamResponse:
    st.stats.reset()
    st.lms_log.reset()
    st.learners_log.reset()
    return json_response(200, {"reset": True})


async def _set_epoch(st: SimState, request: web.Request) -> web.StreamResponse:
    try:
        epoch = orjson.loads(await request.read())["epoch"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return json_response(400, {"detail": 'body must be {"epoch": N}'})
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= 10_000:
        return json_response(400, {"detail": "epoch must be an integer in [0, 10000]"})
    st.epoch = epoch
    return json_response(200, {"epoch": epoch})


#: Knobs that ``POST /__config`` may change at run time: those read per request. The data
#: shape (seed, catalogs, items...) and the throttle logs are built once and stay fixed.
_LIVE_KNOBS: Final = frozenset({
    "forbid_catalogs", "detail_403_rate", "detail_403_keys",
    "fault_rate", "fault_kinds", "fault_token", "fault_scope", "detail_404_rate",
    "detail_404_mode", "detail_404_times", "shuffle", "churn", "etag", "latency_ms",
    "jitter_ms", "strip_retry_after", "gateway_remap", "end_marker", "accept_mode",
    "limit_mode", "echo_token", "expires_in", "omit_count",
    "slow_drip_ms", "slow_drip_rate", "bomb_rate", "bomb_mb", "keyless_items",
    "forbid_tenants", "fault_tenants",
})


_KNOB_TYPES: Final = {f.name: str(f.type) for f in dataclasses.fields(SimConfig)}


def _knob_value(name: str, value: object) -> object:
    """A live knob's JSON value as its field's type; ValueError (a 400) when it is not
    one. JSON has numbers, so a catalog index may come as one: it becomes the string the
    flag would give. A bool is never a number here (``True`` is no index or rate)."""
    kind = _KNOB_TYPES[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "tuple[str, ...]":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(
                isinstance(i, str) or (isinstance(i, int) and not isinstance(i, bool))
                for i in items):
            raise ValueError(f"{name}: must be a list of strings (or integer indexes)")
        return tuple(str(i) for i in items)
    ok = {"bool": isinstance(value, bool), "float": number,
          "int": number and isinstance(value, int), "str": isinstance(value, str),
          "str | None": value is None or isinstance(value, str)}.get(kind, False)
    if not ok:
        raise ValueError(f"{name}: must be of type {kind}, not {type(value).__name__}")
    return value


async def _set_config(st: SimState, request: web.Request) -> web.StreamResponse:
    try:
        changes = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return json_response(400, {"detail": "body must be a JSON object of knobs"})
    if not isinstance(changes, dict) or not changes:
        return json_response(400, {"detail": "body must be a non-empty JSON object of knobs"})
    unknown = sorted(set(changes) - _LIVE_KNOBS)
    if unknown:
        return json_response(
            400, {"detail": f"not live knobs: {unknown}; live: {sorted(_LIVE_KNOBS)}"})
    try:
        values: dict[str, Any] = {k: _knob_value(k, v) for k, v in changes.items()}
        st.cfg = dataclasses.replace(st.cfg, **values)
    except (TypeError, ValueError, AttributeError) as exc:
        return json_response(400, {"detail": str(exc)})
    return json_response(200, {k: getattr(st.cfg, k) for k in changes})


async def _changes(st: SimState, request: web.Request) -> web.StreamResponse:
    try:
        start = int(request.query["from"])
        stop = int(request.query.get("to", str(st.epoch)))
    except (KeyError, ValueError):
        return json_response(400, {"detail": "usage: /__changes?from=A&to=B (integers)"})
    if not (0 <= start <= 10_000 and 0 <= stop <= 10_000):
        return json_response(400, {"detail": "epochs must be in [0, 10000]"})
    return json_response(200, st.data.changes(start, stop))


#: Every operator endpoint as (method, path, handler), in registration order.
OPS: Final[tuple[tuple[str, str, OpsHandler], ...]] = (
    ("GET", "/__info", _info),
    ("GET", "/__stats", _stats),
    ("GET", "/__changes", _changes),
    ("POST", "/__reset", _reset),
    ("POST", "/__epoch", _set_epoch),
    ("POST", "/__config", _set_config),
)
