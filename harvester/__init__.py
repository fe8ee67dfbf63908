"""edx-harvester: bulk harvester for the edX Enterprise API.

Lists enterprise catalogs, pages through their content concurrently under the API's
real rate limits, fetches the detail of every course, course run and program, and
writes NDJSON partitioned by catalog. See README.md for the command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
