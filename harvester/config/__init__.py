"""Configuration: frozen dataclasses validated on construction, and one loader.

Precedence is CLI > environment > config file > defaults. Every setting has a dotted
name (``rates.lms``) used in the TOML file, in error messages and in the manifest.
Credentials come from the environment or the file only, never from a flag, so they
cannot land in shell history. Secrets are wrapped in :class:`Secret`, whose ``repr``
and ``str`` are masked.

One schema (:data:`SCHEMA`) covers every section, the ``[learners]`` and ``[sync]``
sections that one command applies included, so a typo or a bad value in any section is
an error whichever command reads the file. Must not open sockets, create sessions or
read files other than the config file.

::

    values.py    Secret, Rate and the parsers of raw values
    sections.py  one frozen dataclass per section, and Settings
    loader.py    SCHEMA, ENV, the config file, load_settings
    tenants.py   [[tenants]] tables (TenantSpec) and --shard auto/N
"""

from harvester.config.loader import (
    ENV,
    SCHEMA,
    build_settings,
    env_layer,
    load_settings,
    parse_section,
    read_config_file,
)
from harvester.config.sections import (
    DEFAULT_API_BASE,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_CONCURRENCY,
    PUBLISH_SCHEMES,
    RUN_SECTIONS,
    TOKEN_PATH,
    ApiConfig,
    HarvestOptions,
    LearnersConfig,
    LimitsConfig,
    OutputOptions,
    PiiMode,
    PublishConfig,
    RetryConfig,
    Settings,
    SyncConfig,
)
from harvester.config.tenants import (
    JOB_INDEX_ENV,
    TenantsConfig,
    TenantSpec,
    parse_tenants,
    resolve_shard,
)
from harvester.config.values import (
    MAX_AGE_LIMIT,
    Rate,
    Secret,
    parse_bool,
    parse_duration,
    parse_file_path,
    parse_float,
    parse_int,
    parse_keep,
    parse_path,
    parse_rate,
    parse_str,
    parse_str_tuple,
)

__all__ = [
    "DEFAULT_API_BASE",
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ENV",
    "JOB_INDEX_ENV",
    "MAX_AGE_LIMIT",
    "MAX_CONCURRENCY",
    "PUBLISH_SCHEMES",
    "RUN_SECTIONS",
    "SCHEMA",
    "TOKEN_PATH",
    "ApiConfig",
    "HarvestOptions",
    "LearnersConfig",
    "LimitsConfig",
    "OutputOptions",
    "PiiMode",
    "PublishConfig",
    "Rate",
    "RetryConfig",
    "Secret",
    "Settings",
    "SyncConfig",
    "TenantSpec",
    "TenantsConfig",
    "build_settings",
    "env_layer",
    "load_settings",
    "parse_bool",
    "parse_duration",
    "parse_file_path",
    "parse_float",
    "parse_int",
    "parse_keep",
    "parse_path",
    "parse_rate",
    "parse_section",
    "parse_str",
    "parse_str_tuple",
    "parse_tenants",
    "read_config_file",
    "resolve_shard",
]
