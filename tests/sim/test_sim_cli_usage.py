"""``harvester sim`` usage errors: one line on stderr and exit 2, never the whole usage
text, a traceback or exit 1; non-finite numbers are refused by ``SimConfig`` itself."""

from __future__ import annotations

import math

import pytest

import harvester.sim.__main__ as sim_main
from harvester.sim import SimConfig
from harvester.sim.__main__ import main


@pytest.mark.parametrize(("argv", "says"), [
    (["--port", "-1"], "--port"),
    (["--port", "99999"], "--port"),
    (["--port", "http"], "--port"),
    (["--jitter-ms", "inf"], "jitter_ms"),
    (["--latency-ms", "nan"], "latency_ms"),
    (["--host", "bad host"], "--host"),
    (["--host", ""], "--host"),
    (["--no-such-flag"], "no-such-flag"),
    (["--fault-kinds", "boom"], "fault_kinds"),
])
def test_a_usage_error_is_one_line_and_exit_2(argv: list[str], says: str,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    async def serve(*_: object) -> None:
        raise AssertionError("the simulator started serving despite the bad value")

    monkeypatch.setattr(sim_main, "_serve", serve)
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith("harvester sim: ") and says in err


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("name", ["jitter_ms", "latency_ms", "slow_drip_ms", "churn"])
def test_non_finite_floats_are_refused(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        SimConfig(**{name: value})


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "sim-1.internal"])
def test_good_hosts_parse(host: str) -> None:
    from harvester.sim.__main__ import build_parser

    assert build_parser().parse_args(["--host", host]).host == host
