"""The identity of catalog content items: type, keys and UUIDs, and their inverses.

An item's identity is a pure function of its global id ``gid`` and the seed, and is
parseable back to the ``gid``, so detail lookups never scan a catalog. This module owns
only identity: it generates no item fields and holds no state beyond the seed.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from harvester.sim import vocab
from harvester.sim.hashing import mix

__all__ = ["T_ITEM", "T_ORG", "T_TYPE", "T_VOL", "ContentKeys"]

# Purpose tags keep the hash streams of different decisions independent. The item
# generators share some (an owner's UUID hashes with the org tag, for one).
T_TYPE, T_ORG, _T_NUM, _T_RUN, T_ITEM, _T_UUID, T_VOL, _T_MASK = range(100, 108)

_NUM_RE: Final = re.compile(r"^([A-Za-z]+)(\d+)([A-Za-z]*)$")


class ContentKeys:
    """Type, keys and UUIDs of the items of one simulated world (one seed)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._mask = mix(seed, _T_MASK) & ((1 << 62) - 1)

    def content_type(self, gid: int) -> str:
        """60% course, 25% courserun, 12% program, 3% learnerpathway, by hash of the id."""
        bucket = mix(self.seed, T_TYPE, gid) % 100
        if bucket < 60:
            return "course"
        if bucket < 85:
            return "courserun"
        return "program" if bucket < 97 else "learnerpathway"

    def course_key(self, gid: int) -> str:
        """``Org+Num`` for a course or a courserun's parent course; the number embeds ``gid``."""
        h = mix(self.seed, _T_NUM, gid)
        org = vocab.ORGS[mix(self.seed, T_ORG, gid) % len(vocab.ORGS)]
        prefix = vocab.PREFIXES[h % len(vocab.PREFIXES)]
        suffix = vocab.SUFFIXES[(h >> 8) % len(vocab.SUFFIXES)]
        return f"{org}+{prefix}{gid}{suffix}"

    def run_key(self, gid: int, run: str) -> str:
        """``course-v1:Org+Num+Run``."""
        return f"course-v1:{self.course_key(gid)}+{run}"

    def single_run(self, gid: int) -> str:
        """The run name (``2T2023``) of a courserun item."""
        h = mix(self.seed, _T_RUN, gid)
        return f"{h % 3 + 1}T{2019 + (h >> 4) % 8}"

    def entity_uuid(self, gid: int) -> str:
        """UUID of a program or pathway; its low bits carry ``gid`` so it can be parsed back."""
        hi = (mix(self.seed, _T_UUID, gid) & ~(0xF << 12)) | (0x4 << 12)  # version 4 nibble
        lo = (0b10 << 62) | (gid ^ self._mask)  # RFC 4122 variant bits, then the id
        return str(uuid.UUID(int=(hi << 64) | lo))

    def content_key(self, gid: int) -> str:
        """What the catalog service calls ``content_key``: ``key``, or ``uuid`` if keyless."""
        ctype = self.content_type(gid)
        if ctype == "course":
            return self.course_key(gid)
        if ctype == "courserun":
            return self.run_key(gid, self.single_run(gid))
        return self.entity_uuid(gid)

    def gid_from_course_key(self, key: str) -> int | None:
        """Inverse of :meth:`course_key` (``None`` if the key was never generated)."""
        _org, plus, number = key.partition("+")
        match = _NUM_RE.match(number) if plus else None
        if match is None:
            return None
        gid = int(match.group(2))
        return gid if self.course_key(gid) == key else None

    def gid_from_uuid(self, text: str) -> int | None:
        """Inverse of :meth:`entity_uuid`."""
        try:
            value = uuid.UUID(text).int
        except ValueError:
            return None
        gid = (value & ((1 << 62) - 1)) ^ self._mask
        return gid if self.entity_uuid(gid) == text.lower() else None
