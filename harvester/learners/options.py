"""What ``harvester learners`` exports and how: the ``[learners]`` settings, checked.

The keys, their parsers and value checks live in the one config schema
(:data:`harvester.config.SCHEMA`, :class:`~harvester.config.LearnersConfig`); this module
adds only what the command itself needs (at least one enterprise). Must not parse
values of its own or read files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from harvester.config import LearnersConfig, Settings, parse_section
from harvester.errors import ConfigError

__all__ = ["LearnerOptions"]


@dataclass(frozen=True, slots=True)
class LearnerOptions(LearnersConfig):
    """``[learners]`` settings for a run of the command: at least one enterprise."""

    def __post_init__(self) -> None:
        if not self.enterprises:
            raise ConfigError("learners: no enterprise given; pass --enterprise UUID "
                              "(repeatable) or set enterprises = [...] under [learners] "
                              "in the config file")
        LearnersConfig.__post_init__(self)  # zero-argument super() breaks with slots

    @classmethod
    def of(cls, config: LearnersConfig) -> LearnerOptions:
        """The options of loaded settings (``settings.learners``)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(LearnersConfig)})

    @classmethod
    def from_settings(cls, settings: Settings) -> LearnerOptions:
        """The options of ``settings``, as ``Settings.load`` or the CLI built them."""
        return cls.of(settings.learners)

    @classmethod
    def load(cls, *layers: Mapping[str, object]) -> LearnerOptions:
        """Merge ``{"learners.key": raw}`` layers (lowest precedence first) into options.

        Keys of other sections are ignored; an unknown ``learners.*`` key is an error.
        """
        return cls(**parse_section("learners", *layers))
