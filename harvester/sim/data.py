"""The simulated world: catalogs, their membership over epochs, tenants and credentials.

Design (all O(1) in catalog size per position; O(epoch) hash evaluations at most):

* Catalog ``c`` position ``i`` at epoch 0 holds global id ``c * stride + i`` with
  ``stride = items - items // 5``, so each catalog shares ~20% of its items with the next.
* At each epoch ``k >= 1`` every slot is independently *replaced* with probability
  ``mutation_rate / 5`` (the old item is deleted from that catalog, a brand-new item takes its
  position) and ``~mutation_rate / 10`` new slots are appended at the tail.
* Every item independently gets a *real change* with probability ``mutation_rate`` per epoch;
  its version (the number of changes so far) feeds the generators in :mod:`.content`.

New ids encode ``(epoch born, catalog, slot)`` so membership checks never scan. Item fields
are :mod:`.content`'s and learner rows :mod:`.learners`'s: this module only places them.
"""

from __future__ import annotations

import bisect
import random
from collections import OrderedDict
from dataclasses import dataclass
from math import gcd
from typing import Any, Final

from harvester.sim.config import SimConfig
from harvester.sim.content import Content
from harvester.sim.hashing import BASE_TIME, days, iso, mix, rand_uuid, unit
from harvester.sim.learners import LearnerRows

__all__ = ["Dataset", "SimTenant"]

Json = dict[str, Any]

_T_REPL, _T_GROW, _T_CHG, _T_CAT, _T_ENT = range(200, 205)
_T_CRED: Final = 206  # 205 is the learners' tag (learners.py)
#: Listing items kept generated (a few MB): enough for a page's details to find theirs.
ITEM_CACHE: Final = 4096
_NEW_BASE: Final = 10**11  # above every epoch-0 id (1001 catalogs x 10M items)
_SLOT_BITS: Final = 26
_CAT_BITS: Final = 10
_MAX_SLOTS: Final = 1 << _SLOT_BITS

@dataclass(frozen=True, slots=True)
class SimTenant:
    """One credential of ``--tenants N``: its enterprise and the catalogs it may read."""

    index: int
    client_id: str
    client_secret: str
    enterprise_uuid: str
    catalogs: range


class Dataset:
    """Deterministic, lazily generated data for one :class:`SimConfig`."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        seed = cfg.seed
        self.seed = seed
        self.items = cfg.items
        self.stride = max(1, cfg.items - cfg.items // 5)
        self.replace_p = cfg.mutation_rate / 5
        self.change_p = cfg.mutation_rate
        self.enterprise_uuid = rand_uuid(seed, _T_ENT, 0)
        self.foreign_enterprise_uuid = rand_uuid(seed, _T_ENT, 1)
        self.enterprise_name = ("Acme Learning Co.", "Globex Universität", "Initech Café")[seed % 3]
        self.enterprise_slug = f"acme-{seed % 1000:03d}"
        # Own catalogs are indexes 0..pool-1 (tenant 0's are 0..catalogs-1); the foreign
        # one is index `pool`.
        pool = cfg.pool_size()
        self.catalog_uuids = [rand_uuid(seed, _T_CAT, c) for c in range(pool + 1)]
        if cfg.case_twin_catalogs:
            self.catalog_uuids[1] = self.catalog_uuids[0].upper()
        self.foreign_index = pool
        self.content = Content(seed, self.enterprise_uuid, self.enterprise_slug)
        self._items: OrderedDict[tuple[int, int], Json] = OrderedDict()
        self._sizes: list[list[int]] = [[cfg.items] for _ in range(pool + 1)]
        self.client_id = cfg.client_id or f"sim-{mix(seed, _T_CRED, 0):016x}"[:24]
        secret = f"{mix(seed, _T_CRED, 1):016x}{mix(seed, _T_CRED, 2):016x}"
        self.client_secret = cfg.client_secret or secret
        self.tenants = [SimTenant(0, self.client_id, self.client_secret, self.enterprise_uuid,
                                  cfg.tenant_catalogs(0))]
        for t in range(1, cfg.tenants):
            self.tenants.append(SimTenant(
                t, f"sim-t{t}-{mix(seed, _T_CRED, 0, t):016x}"[:24],
                f"{mix(seed, _T_CRED, 1, t):016x}{mix(seed, _T_CRED, 2, t):016x}",
                rand_uuid(seed, _T_ENT, t + 1), cfg.tenant_catalogs(t)))
        self.tenant_by_id = {tenant.client_id: tenant for tenant in self.tenants}
        # >= 32 bytes: PyJWT warns about shorter HMAC keys (and tests turn warnings into errors).
        self.signing_key = "".join(f"{mix(seed, _T_CRED, 3, i):016x}" for i in range(4))
        self.learner_rows = LearnerRows(cfg, self.content, self.enterprise_name,
                                        [tenant.enterprise_uuid for tenant in self.tenants])

    # -- catalog structure -------------------------------------------------------------------
    def catalog_index(self, catalog_uuid: str) -> int | None:
        """Index of a catalog (own or foreign) by UUID: the exact id first (case twins are
        distinct catalogs), else case-insensitively."""
        for candidate in (catalog_uuid, catalog_uuid.lower()):
            if candidate in self.catalog_uuids:
                return self.catalog_uuids.index(candidate)
        return None

    def size(self, c: int, epoch: int) -> int:
        """Number of items of catalog ``c`` at ``epoch`` (memoised: O(epoch) once)."""
        sizes = self._sizes[c]
        while len(sizes) <= epoch:
            k = len(sizes)
            prev = sizes[-1]
            grow = int(prev * self.replace_p / 2 + unit(self.seed, _T_GROW, c, k))
            sizes.append(min(_MAX_SLOTS, prev + grow))
        return sizes[epoch]

    def _slot_birth(self, c: int, p: int, epoch: int) -> int:
        if p < self.items:
            return 0
        self.size(c, epoch)
        return bisect.bisect_right(self._sizes[c], p)

    def _replaced(self, c: int, p: int, k: int) -> bool:
        return unit(self.seed, _T_REPL, c, p, k) < self.replace_p

    @staticmethod
    def _new_gid(k: int, c: int, p: int) -> int:
        return _NEW_BASE + (((k << _CAT_BITS) | c) << _SLOT_BITS | p)

    def gid_at(self, c: int, p: int, epoch: int) -> int:
        """Global id at position ``p`` of catalog ``c`` (caller ensures ``p < size``)."""
        birth = self._slot_birth(c, p, epoch)
        if self.replace_p > 0:
            for k in range(epoch, birth, -1):
                if self._replaced(c, p, k):
                    return self._new_gid(k, c, p)
        return c * self.stride + p if birth == 0 else self._new_gid(birth, c, p)

    def contains(self, c: int, gid: int, epoch: int) -> bool:
        """Whether item ``gid`` is a member of catalog ``c`` at ``epoch``."""
        if gid < 0:
            return False
        if gid >= _NEW_BASE:
            x = gid - _NEW_BASE
            p = x & (_MAX_SLOTS - 1)
            cc = (x >> _SLOT_BITS) & ((1 << _CAT_BITS) - 1)
            k = x >> (_SLOT_BITS + _CAT_BITS)
            if cc != c or k > epoch or p >= self.size(c, epoch):
                return False
        else:
            p = gid - c * self.stride
            if not 0 <= p < self.items:
                return False
        return self.gid_at(c, p, epoch) == gid

    def version(self, gid: int, epoch: int) -> tuple[int, int]:
        """``(number of real changes, epoch of the last one)`` of ``gid`` up to ``epoch``."""
        birth = 0
        if gid >= _NEW_BASE:
            birth = (gid - _NEW_BASE) >> (_SLOT_BITS + _CAT_BITS)
        count, last = 0, birth
        if self.change_p > 0:
            for k in range(birth + 1, epoch + 1):
                if unit(self.seed, _T_CHG, gid, k) < self.change_p:
                    count, last = count + 1, k
        return count, last

    def item(self, gid: int, epoch: int) -> Json:
        """Listing form of ``gid`` as of ``epoch``. Callers must not mutate it: it is
        cached, because a detail request regenerates the item its listing page just made
        and generation is most of the simulator's CPU (the harvester shares the cores)."""
        cached = self._items.get((gid, epoch))
        if cached is not None:
            self._items.move_to_end((gid, epoch))
            return cached
        version, changed = self.version(gid, epoch)
        body = self.content.item(gid, version, changed, epoch)
        self._items[(gid, epoch)] = body
        if len(self._items) > ITEM_CACHE:
            self._items.popitem(last=False)
        return body

    def page_gids(self, c: int, epoch: int, positions: range, order: Order) -> list[int]:
        """The ids at the given visible positions, through the request's ordering."""
        return [self.gid_at(c, order.base_position(q), epoch) for q in positions]

    def membership(self, c: int, epoch: int) -> set[int]:
        """Every id in catalog ``c`` at ``epoch`` (O(N); ops endpoint and tests only)."""
        return {self.gid_at(c, p, epoch) for p in range(self.size(c, epoch))}

    def changes(self, a: int, b: int) -> list[dict[str, str]]:
        """Ground-truth change feed from epoch ``a`` to ``b`` over the client's catalogs."""
        out: list[dict[str, str]] = []
        for c in range(self.foreign_index):
            # A catalog that left the lists (drop_catalog_at_epoch) holds nothing any more.
            before = set() if self.cfg.dropped(c, a) else self.membership(c, a)
            after = set() if self.cfg.dropped(c, b) else self.membership(c, b)
            rows: list[tuple[str, int]] = [("delete", g) for g in before - after]
            rows += [("upsert", g) for g in after - before]
            rows += [
                ("upsert", g)
                for g in before & after
                if self.version(g, a)[0] != self.version(g, b)[0]
            ]
            entries = [
                {
                    "op": op,
                    "catalog_uuid": self.catalog_uuids[c],
                    "content_type": self.content.content_type(g),
                    "key": self.content.content_key(g),
                }
                for op, g in rows
            ]
            entries.sort(key=lambda e: (e["op"], e["content_type"], e["key"]))
            out += entries
        return out

    # -- catalog rows ------------------------------------------------------------------------
    def catalog_row_v1(self, c: int) -> Json:
        """``EnterpriseCustomerCatalogSerializer`` row (LMS)."""
        created = BASE_TIME - days(400 - c)
        return {
            "uuid": self.catalog_uuids[c],
            "title": f"{self.enterprise_name} catalog {c + 1}",
            "enterprise_customer": self._owner(c),
            "enterprise_catalog_query": 1000 + c,
            "created": iso(created),
            "modified": iso(created + days(30)),
        }

    def catalog_row_v2(self, c: int, epoch: int) -> Json:
        """``EnterpriseCatalogSerializer`` row (enterprise-catalog)."""
        row = self.catalog_row_v1(c)
        return {
            "uuid": row["uuid"],
            "title": row["title"],
            "enterprise_customer": row["enterprise_customer"],
            "catalog_query_uuid": rand_uuid(self.seed, _T_CAT, c, 7),
            "content_last_modified": iso(BASE_TIME + days(epoch) + days(1 / 24)),
            "catalog_modified": row["modified"],
            "query_title": f"Query {c + 1}",
        }

    def _owner(self, c: int) -> str:
        return self.foreign_enterprise_uuid if c == self.foreign_index else self.enterprise_uuid

    # -- learners ----------------------------------------------------------------------------
    def learner_row(self, i: int, epoch: int, tenant: int = 0) -> Json:
        """Row ``i`` of learner-summary of ``tenant``'s enterprise (see :mod:`.learners`)."""
        return self.learner_rows.row(i, epoch, tenant)


class Order:
    """Maps a *visible* position of one content-page request to a base position.

    ``visible -> (a * visible + b + rotation) mod n`` with ``gcd(a, n) == 1``: a bijection,
    O(1) per position. Plain order is ``a=1, b=0``; ``shuffle`` draws ``a, b`` per request;
    ``churn`` contributes ``rotation``.
    """

    __slots__ = ("a", "b", "n", "rotation")

    def __init__(self, n: int, a: int = 1, b: int = 0, rotation: int = 0) -> None:
        self.n, self.a, self.b, self.rotation = n, a, b, rotation

    def base_position(self, visible: int) -> int:
        """The base position shown at ``visible``."""
        if self.n == 0:
            return visible
        return (self.a * visible + self.b + self.rotation) % self.n

    @classmethod
    def shuffled(cls, n: int, rnd: random.Random, rotation: int = 0) -> Order:
        """A random affine permutation of ``range(n)``."""
        if n <= 1:
            return cls(n, rotation=rotation)
        a = rnd.randrange(1, n)
        while gcd(a, n) != 1:
            a = rnd.randrange(1, n)
        return cls(n, a=a, b=rnd.randrange(n), rotation=rotation)
