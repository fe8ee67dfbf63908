"""edx-harvester: bulk harvester for the edX Enterprise API.

Lists enterprise catalogs, pages through their content concurrently under the API's
real rate limits, fetches the detail of every course, course run and program, and
writes NDJSON partitioned by catalog. See README.md for the command line and the
Python API (``harvester.harvest``, ``harvester.sync``, ``harvester.export_learners``,
``harvester.Settings.load``). The learner export is ``export_learners``, not
``learners``: ``harvester.learners`` is the package that implements it.

This module is the public surface only: re-exports and ``__all__`` (checked by a test).
Importing it loads no HTTP client and no terminal library.
"""

__version__ = "0.1.0"

from harvester.api import export_learners, harvest, sync, sync_tenants
from harvester.config import Settings
from harvester.errors import ConfigError, HarvestError, PublishError
from harvester.run import RunResult, SyncResult

__all__ = [
    "ConfigError",
    "HarvestError",
    "PublishError",
    "RunResult",
    "Settings",
    "SyncResult",
    "__version__",
    "export_learners",
    "harvest",
    "sync",
    "sync_tenants",
]
