"""The HTTP client: the only package that touches aiohttp.

Imports flow one way, top to bottom:

- ``paths``: throttle classes and URL paths (pure)
- ``bodies``: capped reads, excerpts, storable bodies
- ``translate``: aiohttp and timeout errors -> :mod:`harvester.errors` (the one boundary)
- ``answers``: status and body -> a value or an error (pure)
- ``retries``: a request's tries through the retry loop, each bounded on the injected clock
- ``api``: :class:`ApiClient`, which puts them together

Code outside the package imports from here, not from its modules.
"""

from harvester.client.api import ApiClient
from harvester.client.paths import (
    ThrottleClass,
    catalogs_path,
    content_path,
    detail_path,
    learners_path,
)

__all__ = [
    "ApiClient", "ThrottleClass", "catalogs_path", "content_path", "detail_path",
    "learners_path",
]
