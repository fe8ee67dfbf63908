"""Mutable per-app state: stats counters, epoch, throttle logs, seeded RNGs."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Final

from harvester.sim.auth import TokenIssuer
from harvester.sim.config import SimConfig
from harvester.sim.data import Dataset, Order
from harvester.sim.hashing import mix
from harvester.sim.throttle import SlidingLog

__all__ = ["CLASSES", "SimState", "Stats"]

#: Endpoint classes, for stats and throttling.
CLASSES: Final = ("token", "lms", "content", "learners")

_T_FAULT, _T_ORDER, _T_LATENCY, _T_HOSTILE = range(300, 304)


class Stats:
    """Counters behind ``GET /__stats``."""

    def __init__(self) -> None:
        self.in_flight: defaultdict[str, int] = defaultdict(int)
        self._zero()

    def _zero(self) -> None:
        self.requests: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        #: with ``--tenants``: "class:status" counts per client id (per-credential view)
        self.by_client: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self.throttled_429 = 0
        self.bytes_out = 0
        self.tokens_issued = 0
        self.detail_requests = 0
        self.not_modified_304 = 0
        self.faults: defaultdict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = dict.fromkeys(("overall", *CLASSES), 0)

    def enter(self, klass: str) -> None:
        """A request of ``klass`` started; track concurrency peaks."""
        for key in ("overall", klass):
            self.in_flight[key] += 1
            self.peak[key] = max(self.peak.get(key, 0), self.in_flight[key])

    def leave(self, klass: str) -> None:
        """A request of ``klass`` finished."""
        for key in ("overall", klass):
            self.in_flight[key] -= 1

    def record(self, klass: str, status: str, nbytes: int) -> None:
        """Count one finished request by class and status."""
        self.requests[klass][status] += 1
        self.bytes_out += nbytes
        if status == "429":
            self.throttled_429 += 1
        elif status == "304":
            self.not_modified_304 += 1

    def reset(self) -> None:
        """Zero every counter; requests in flight stay tracked so they still leave cleanly."""
        self._zero()

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view."""
        snap: dict[str, Any] = {
            "requests": {k: dict(v) for k, v in self.requests.items()},
            "throttled_429": self.throttled_429,
            "peak_concurrency": dict(self.peak),
            "bytes_out": self.bytes_out,
            "tokens_issued": self.tokens_issued,
            "detail_requests": self.detail_requests,
            "not_modified_304": self.not_modified_304,
            "faults": dict(self.faults),
        }
        if self.by_client:
            snap["by_client"] = {k: dict(v) for k, v in self.by_client.items()}
        return snap


class SimState:
    """Everything a handler needs; one instance per :func:`build_app`."""

    def __init__(self, cfg: SimConfig, clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.clock = clock
        self.data = Dataset(cfg)
        self.epoch = cfg.epoch
        self.base_url: str | None = None
        self.stats = Stats()
        self.tokens = TokenIssuer(
            client_id=self.data.client_id,
            signing_key=self.data.signing_key,
            enterprise_uuid=self.data.enterprise_uuid,
            ttl=cfg.token_ttl,
            clock=clock,
        )
        self.lms_log = SlidingLog(cfg.lms_rate, clock, {
            t.client_id: cfg.tenant_lms_rate(t.index) for t in self.data.tenants[1:]
            if cfg.tenant_rate_lms} | ({self.data.client_id: cfg.tenant_lms_rate(0)}
                                        if cfg.tenant_rate_lms else {}))
        self.learners_log = SlidingLog(cfg.learners_rate, clock)
        self.fault_rng = random.Random(mix(cfg.seed, _T_FAULT))
        self.order_rng = random.Random(mix(cfg.seed, _T_ORDER))
        self.latency_rng = random.Random(mix(cfg.seed, _T_LATENCY))
        self.hostile_rng = random.Random(mix(cfg.seed, _T_HOSTILE))
        self.rotation: dict[int, int] = {}
        self.detail_404_served: dict[tuple[int, str], int] = {}
        self.content_requests: dict[int, int] = {}

    def hidden_head(self, c: int) -> int:
        """Items of catalog ``c`` still hidden by ``head_inserts`` (the first base positions).

        Counts this content-page request: every ``head_insert_every`` of them, one hidden
        item appears at the head of the list, ahead of every page already served.
        """
        served = self.content_requests.get(c, 0)
        self.content_requests[c] = served + 1
        inserted = served // self.cfg.head_insert_every
        return max(0, self.cfg.head_inserts - inserted)

    def order_for(self, c: int, n: int) -> Order:
        """The ordering one content-page request of catalog ``c`` sees (shuffle, churn)."""
        rotation = self.rotation.get(c, 0)
        if self.cfg.churn > 0 and n > 1 and self.order_rng.random() < self.cfg.churn:
            # A few rows inserted/deleted ahead of the cursor shift everything by a little.
            step = self.order_rng.choice([-3, -2, -1, 1, 2, 3])
            rotation = (rotation + step) % n
            self.rotation[c] = rotation
        if self.cfg.shuffle:
            return Order.shuffled(n, self.order_rng, rotation)
        return Order(n, rotation=rotation)

    def latency(self) -> float:
        """Seconds to stall this request (0 when the knob is off)."""
        if self.cfg.latency_ms <= 0 and self.cfg.jitter_ms <= 0:
            return 0.0
        jitter = self.latency_rng.uniform(-self.cfg.jitter_ms, self.cfg.jitter_ms)
        return max(0.0, self.cfg.latency_ms + jitter) / 1000.0

    def draw_fault(self, klass: str, *, detail: bool = False) -> str | None:
        """The fault to inject into this request (``detail``: a detail route), if any."""
        if self.cfg.fault_rate <= 0 or (klass == "token" and not self.cfg.fault_token):
            return None
        if self.cfg.fault_scope == "details" and not detail:
            return None
        if self.fault_rng.random() >= self.cfg.fault_rate:
            return None
        return self.fault_rng.choice(self.cfg.fault_kinds)

    def draw_hostile(self, klass: str, rate: float) -> bool:
        """Whether this answer gets a hostile treatment drawn at ``rate`` (drip, bomb).

        Like faults, these spare the token endpoint unless ``fault_token`` is set, and
        never touch the simulator's own ``/__`` routes or unrouted paths.
        """
        if rate <= 0 or klass == "other" or (klass == "token" and not self.cfg.fault_token):
            return False
        return rate >= 1.0 or self.hostile_rng.random() < rate

    def info(self, base_url: str) -> dict[str, Any]:
        """``GET /__info`` body (never the secret)."""
        config = asdict(self.cfg)
        config.pop("client_secret", None)
        return {
            "base_url": base_url,
            "client_id": self.data.client_id,
            "enterprise_uuid": self.data.enterprise_uuid,
            "catalog_uuids": self.data.catalog_uuids[: self.data.foreign_index],
            "foreign_catalog_uuid": self.data.catalog_uuids[self.data.foreign_index],
            "epoch": self.epoch,
            "config": config,
        } | ({"tenants": [
            {"index": t.index, "client_id": t.client_id, "enterprise_uuid": t.enterprise_uuid,
             "catalog_uuids": [self.data.catalog_uuids[c] for c in t.catalogs]}
            for t in self.data.tenants]} if self.cfg.tenants > 1 else {})
