"""Simulator configuration: one frozen dataclass of every knob, validated once.

Owns the knobs' names, defaults, help texts and legal values, and the small derivations
read from them (tenants' catalogs and budgets, dropped catalogs, the grant's
``expires_in``). No I/O and no simulator state; rates parse in :mod:`.rates`.

Every field is also a CLI flag (``harvester/sim/__main__.py`` builds the parser from
``dataclasses.fields(SimConfig)``), so a field added here is reachable from the shell too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Final

from harvester.sim.rates import Rate, parse_rate

__all__ = ["FAULT_KINDS", "OMIT", "SimConfig"]

#: Every fault the simulator knows how to inject (see ``SimConfig.fault_kinds``).
FAULT_KINDS: Final[tuple[str, ...]] = (
    "500",
    "502",
    "503",
    "504",
    "reset",
    "truncate",
    "badjson",
    "maintenance",
)


#: ``SimConfig.expires_in_value`` for "leave ``expires_in`` out of the grant".
OMIT: Final = object()


def _help(text: str) -> dict[str, str]:
    """Field metadata carrying the CLI help text."""
    return {"help": text}


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes the simulated edX Enterprise API.

    All knobs default to OFF so a bare ``SimConfig()`` behaves like a well-behaved
    api.edx.org (with its real limits: 60/min on LMS endpoints, page size clamp 100).
    """

    seed: int = field(default=0, metadata=_help("seed for all data, credentials and RNGs"))
    catalogs: int = field(default=3, metadata=_help("catalogs of the client's enterprise"))
    items: int = field(default=2000, metadata=_help("content items per catalog at epoch 0"))
    learners: int = field(default=500, metadata=_help("learner-summary rows per enterprise"))
    epoch: int = field(default=0, metadata=_help("initial data epoch"))
    mutation_rate: float = field(
        default=0.05, metadata=_help("fraction of items changed per epoch (deletes/adds ~ /5)")
    )
    client_id: str | None = field(
        default=None, metadata=_help("OAuth client id (default: derived from seed)")
    )
    client_secret: str | None = field(
        default=None, metadata=_help("OAuth client secret (default: derived from seed)")
    )
    token_ttl: int = field(default=180, metadata=_help("JWT lifetime, seconds (expires_in)"))
    max_page_size: int = field(default=100, metadata=_help("page_size clamp for catalogs"))
    learner_max_page_size: int = field(
        default=1000, metadata=_help("page_size clamp for learner-summary")
    )
    rate_lms: str = field(
        default="60/min", metadata=_help("LMS budget (v1 list + details), e.g. 60/min, 0=off")
    )
    rate_learners: str = field(
        default="60/min", metadata=_help("learner-summary budget, e.g. 60/min, 0=off")
    )
    limit_mode: str = field(
        default="ignore", metadata=_help("'ignore' (gateway drops limit) or 'doc' (limit=size)")
    )
    accept_mode: str = field(
        default="doc", metadata=_help("'doc' (XML unless JSON asked) or 'backend' (DRF)")
    )
    end_marker: str = field(
        default="null", metadata=_help("last page's next: 'null' or 'empty' (\"\")")
    )
    public_base: str | None = field(
        default=None, metadata=_help("base of next/previous links (default: own base_url)")
    )
    strip_retry_after: bool = field(
        default=False, metadata=_help("drop Retry-After on 429 like the gateway")
    )
    gateway_remap: bool = field(
        default=False, metadata=_help("map statuses outside 200/304/401/403/404/429/500 to 400")
    )
    latency_ms: float = field(default=0.0, metadata=_help("mean added latency, ms"))
    jitter_ms: float = field(default=0.0, metadata=_help("uniform latency jitter, +/- ms"))
    fault_rate: float = field(default=0.0, metadata=_help("probability of a fault (0..1)"))
    fault_kinds: tuple[str, ...] = field(
        default=FAULT_KINDS, metadata=_help("comma list of " + ",".join(FAULT_KINDS))
    )
    fault_token: bool = field(default=False, metadata=_help("faults also hit the token endpoint"))
    fault_scope: str = field(
        default="all", metadata=_help("'all' API requests, or only 'details' (listings stay clean)")
    )
    detail_404_rate: float = field(
        default=0.0, metadata=_help("fraction of items whose detail 404s")
    )
    detail_404_mode: str = field(
        default="transient", metadata=_help("'transient' (first K calls) or 'permanent'")
    )
    detail_404_times: int = field(default=2, metadata=_help("K for transient detail 404s"))
    shuffle: bool = field(default=False, metadata=_help("new item order on every content page"))
    churn: float = field(
        default=0.0, metadata=_help("per content page, chance the order rotates a little")
    )
    etag: bool = field(default=False, metadata=_help("ETag/Last-Modified + 304 on details"))
    forbid_catalogs: tuple[str, ...] = field(
        default=(),
        metadata=_help("comma list of own catalog indexes (0-based) whose content and details "
                       "answer 403; POST /__config can heal them at run time"),
    )
    omit_count: bool = field(
        default=False,
        metadata=_help("content pages carry no 'count' (it is optional; live knob)"),
    )
    detail_403_rate: float = field(
        default=0.0,
        metadata=_help("fraction of items (picked by seeded key hash) whose detail answers "
                       "403, every time; live (POST /__config heals it)"),
    )
    detail_403_keys: tuple[str, ...] = field(
        default=(),
        metadata=_help("comma list of item keys (course/run key, program uuid) whose detail "
                       "answers 403, every time; live"),
    )
    drop_catalog_at_epoch: tuple[str, ...] = field(
        default=(),
        metadata=_help("comma list of I:E: own catalog index I leaves the catalog lists "
                       "(its content and details 404) from epoch E on"),
    )

    echo_token: bool = field(
        default=False,
        metadata=_help("every 403 body echoes the caller's Authorization header (a hostile "
                       "server leaking the token back)"),
    )
    expires_in: str | None = field(
        default=None,
        metadata=_help("override the grant's expires_in, served as a number when numeric "
                       "('0', '-5'), else as the string ('soon', ''); 'null' serves null, "
                       "'omit' leaves it out; the JWT's exp still uses token_ttl"),
    )
    case_twin_catalogs: bool = field(
        default=False,
        metadata=_help("own catalog 1's id is catalog 0's id in upper case: two catalogs "
                       "whose ids differ only in case, each with its own content "
                       "(needs --catalogs >= 2)"),
    )
    slow_drip_ms: float = field(
        default=0.0,
        metadata=_help("send bodies one byte every N ms (0 = off): defeats per-read timeouts"),
    )
    slow_drip_rate: float = field(
        default=1.0, metadata=_help("fraction of answers dripped when --slow-drip-ms is set")
    )
    bomb_rate: float = field(
        default=0.0,
        metadata=_help("fraction of 2xx answers sent gzip-encoded with --bomb-mb MiB of padding"),
    )
    bomb_mb: int = field(
        default=64, metadata=_help("MiB a gzip bomb inflates to (about 1/1000 on the wire)")
    )

    lie_count: int = field(
        default=0, metadata=_help("content pages report this count whatever the real size "
                                  "(0 = the truth)")
    )
    keyless_items: int = field(
        default=0, metadata=_help("items per catalog listed without key or uuid")
    )
    dup_keys: int = field(
        default=0,
        metadata=_help("items per catalog listed a second time, at the end of the list, with "
                       "the same key and other content (even ones newer, odd ones older); "
                       "count stays the number of distinct items"),
    )
    head_inserts: int = field(
        default=0,
        metadata=_help("items per catalog hidden at first, then inserted at the head of the "
                       "list one at a time, every head_insert_every content-page requests"),
    )
    head_insert_every: int = field(
        default=15, metadata=_help("content-page requests of a catalog between head inserts")
    )
    tenants: int = field(
        default=1,
        metadata=_help("credentials served, each with its own enterprise, catalogs (with "
                       "--catalogs >= 2 a tenant's last catalog is the next one's first), "
                       "learners and budget; the [[tenants]] config is printed at start-up"),
    )
    tenant_rate_lms: tuple[str, ...] = field(
        default=(),
        metadata=_help("comma list of T:RATE: tenant T's own LMS budget (default rate_lms)"),
    )
    forbid_tenants: tuple[str, ...] = field(
        default=(),
        metadata=_help("comma list of tenant indexes whose catalogs' content and details "
                       "answer 403 (their credential lacks the role); live"),
    )
    fault_tenants: tuple[str, ...] = field(
        default=(),
        metadata=_help("comma list of tenant indexes: fault_rate faults hit only their API "
                       "requests (an outage of one tenant's backend); live"),
    )

    def __post_init__(self) -> None:
        """Reject impossible settings early, with the field name in the message."""
        self._check_finite()
        self._check_world()
        self._check_wire()
        self._check_faults()
        self._check_item_knobs()
        self._check_tenants()

    def _check_finite(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):  # inf passes >= 0
                raise ValueError(f"{f.name}: must be a finite number, got {value!r}")

    def _check_world(self) -> None:
        """The data's shape, the token's lifetime, page clamps and budgets."""
        _check(0 <= self.seed < 2**63, "seed", "must be in [0, 2**63)")
        _check(1 <= self.catalogs <= 1000, "catalogs", "must be in [1, 1000]")
        _check(0 <= self.items <= 10_000_000, "items", "must be in [0, 10_000_000]")
        _check(0 <= self.learners <= 10_000_000, "learners", "must be in [0, 10_000_000]")
        _check(0 <= self.epoch <= 10_000, "epoch", "must be in [0, 10000]")
        _check(0.0 <= self.mutation_rate <= 1.0, "mutation_rate", "must be in [0, 1]")
        _check(self.token_ttl >= 1, "token_ttl", "must be >= 1")
        _check(self.max_page_size >= 1, "max_page_size", "must be >= 1")
        _check(self.learner_max_page_size >= 1, "learner_max_page_size", "must be >= 1")
        for name in ("rate_lms", "rate_learners"):
            try:
                parse_rate(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None

    def _check_wire(self) -> None:
        """How pages and links are rendered and negotiated."""
        _check(self.limit_mode in {"ignore", "doc"}, "limit_mode", "must be 'ignore' or 'doc'")
        _check(self.accept_mode in {"doc", "backend"}, "accept_mode", "must be 'doc' or 'backend'")
        _check(self.end_marker in {"null", "empty"}, "end_marker", "must be 'null' or 'empty'")
        if self.public_base is not None:
            _check(self.public_base.startswith(("http://", "https://")), "public_base",
                   "must start with http:// or https://")

    def _check_faults(self) -> None:
        """Latency, injected faults, flaky details and order churn."""
        _check(self.latency_ms >= 0.0, "latency_ms", "must be >= 0")
        _check(self.jitter_ms >= 0.0, "jitter_ms", "must be >= 0")
        _check(0.0 <= self.fault_rate <= 1.0, "fault_rate", "must be in [0, 1]")
        _check(isinstance(self.fault_kinds, tuple) and len(self.fault_kinds) > 0,
               "fault_kinds", "must be a non-empty tuple")
        unknown = sorted(set(self.fault_kinds) - set(FAULT_KINDS))
        _check(not unknown, "fault_kinds", f"unknown kinds {unknown}; known: {FAULT_KINDS}")
        _check(self.fault_scope in {"all", "details"}, "fault_scope", "must be 'all' or 'details'")
        _check(0.0 <= self.detail_404_rate <= 1.0, "detail_404_rate", "must be in [0, 1]")
        _check(self.detail_404_mode in {"transient", "permanent"}, "detail_404_mode",
               "must be 'transient' or 'permanent'")
        _check(self.detail_404_times >= 0, "detail_404_times", "must be >= 0")
        _check(0.0 <= self.churn <= 1.0, "churn", "must be in [0, 1]")
        _check(self.slow_drip_ms >= 0.0, "slow_drip_ms", "must be >= 0")
        _check(0.0 <= self.slow_drip_rate <= 1.0, "slow_drip_rate", "must be in [0, 1]")
        _check(0.0 <= self.bomb_rate <= 1.0, "bomb_rate", "must be in [0, 1]")
        _check(1 <= self.bomb_mb <= 4096, "bomb_mb", "must be in [1, 4096]")
        for name in ("client_id", "client_secret"):
            _check(getattr(self, name) != "", name, "must not be empty")

    def _check_item_knobs(self) -> None:
        """The catalog and item knobs, each bounded by ``catalogs`` or ``items``."""
        _check(all(c.isdigit() and int(c) < self.catalogs for c in self.forbid_catalogs),
               "forbid_catalogs", f"must be catalog indexes in [0, {self.catalogs})")
        _check(0.0 <= self.detail_403_rate <= 1.0, "detail_403_rate", "must be in [0, 1]")
        _check(all(isinstance(k, str) and k for k in self.detail_403_keys), "detail_403_keys",
               "must be non-empty keys")
        _check(all(_drop_spec(d, self.catalogs) is not None for d in self.drop_catalog_at_epoch),
               "drop_catalog_at_epoch",
               f"must be I:E pairs, I a catalog index in [0, {self.catalogs}), E an epoch >= 0")
        _check(not self.case_twin_catalogs or self.catalogs >= 2, "case_twin_catalogs",
               "needs catalogs >= 2")
        _check(0 <= self.lie_count <= 10**15, "lie_count", "must be in [0, 10**15]")
        for name in ("keyless_items", "dup_keys"):
            _check(0 <= getattr(self, name) <= self.items, name, "must be in [0, items]")
        _check(0 <= self.head_inserts < max(1, self.items), "head_inserts",
               "must be in [0, items)")
        _check(self.head_insert_every >= 1, "head_insert_every", "must be >= 1")

    def _check_tenants(self) -> None:
        _check(1 <= self.tenants <= 1000, "tenants", "must be in [1, 1000]")
        _check(self.pool_size() <= 1000, "tenants", "tenants x catalogs must stay within "
               "1000 distinct catalogs")
        for name in ("forbid_tenants", "fault_tenants"):
            _check(all(t.isdigit() and int(t) < self.tenants for t in getattr(self, name)),
                   name, f"must be tenant indexes in [0, {self.tenants})")
        for spec in self.tenant_rate_lms:
            index, sep, rate = spec.partition(":")
            _check(bool(sep) and index.isdigit() and int(index) < self.tenants,
                   "tenant_rate_lms", f"must be T:RATE pairs, T in [0, {self.tenants})")
            try:
                parse_rate(rate)
            except ValueError as exc:
                raise ValueError(f"tenant_rate_lms: {exc}") from None

    def pool_size(self) -> int:
        """Distinct catalogs of all tenants (consecutive tenants share one when each has
        two or more)."""
        step = self.catalogs - 1 if self.catalogs >= 2 else 1
        return (self.tenants - 1) * step + self.catalogs

    def tenant_catalogs(self, t: int) -> range:
        """The catalog indexes tenant ``t`` may read."""
        step = self.catalogs - 1 if self.catalogs >= 2 else 1
        return range(t * step, t * step + self.catalogs)

    def tenant_lms_rate(self, t: int) -> Rate | None:
        """Tenant ``t``'s LMS budget (``tenant_rate_lms``, else ``rate_lms``)."""
        for spec in self.tenant_rate_lms:
            index, _, rate = spec.partition(":")
            if int(index) == t:
                return parse_rate(rate)
        return self.lms_rate

    def expires_in_value(self) -> object:
        """What the token endpoint serves as ``expires_in`` (see the ``expires_in`` knob);
        ``OMIT`` means the field is left out."""
        if self.expires_in is None:
            return self.token_ttl
        text = self.expires_in
        if text == "null":
            return None
        if text == "omit":
            return OMIT
        try:
            return int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            return text
        return value if math.isfinite(value) else text

    def forbids(self, c: int) -> bool:
        """Whether own catalog index ``c`` is forbidden by the ``forbid_catalogs`` knob."""
        return str(c) in self.forbid_catalogs

    def dropped(self, c: int, epoch: int) -> bool:
        """Whether own catalog ``c`` has left the catalog lists at ``epoch``."""
        for spec in self.drop_catalog_at_epoch:
            parsed = _drop_spec(spec, self.catalogs)
            if parsed is not None and parsed[0] == c and epoch >= parsed[1]:
                return True
        return False

    @property
    def lms_rate(self) -> Rate | None:
        """The parsed LMS budget (``None`` = unthrottled)."""
        return parse_rate(self.rate_lms)

    @property
    def learners_rate(self) -> Rate | None:
        """The parsed learner-summary budget (``None`` = unthrottled)."""
        return parse_rate(self.rate_learners)


def _drop_spec(spec: str, catalogs: int) -> tuple[int, int] | None:
    """``"I:E"`` as ``(I, E)``, or None when it is not a valid drop of an own catalog."""
    index, sep, epoch = spec.partition(":")
    if not (sep and index.isdigit() and epoch.isdigit()):
        return None
    c, e = int(index), int(epoch)
    return (c, e) if c < catalogs and e <= 10_000 else None


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")
