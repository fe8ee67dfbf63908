"""One ``--publish`` URL: its fsspec filesystem, the check before a run, the few calls
made on it. The only place a filesystem is built (``harvester.publish`` is the only
package that writes to a store). Must not walk the output or decide what is published."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from harvester.config import PUBLISH_SCHEMES, PublishConfig
from harvester.errors import ConfigError, PublishError
from harvester.sinks import resolved

__all__ = ["PublishReport", "Target", "check_target"]

_PROBE: Final = ".harvester-write-check"


@dataclass(slots=True)
class PublishReport:
    """What one publish did."""

    url: str
    uploaded: int = 0
    skipped: int = 0
    deleted: int = 0
    bytes: int = 0
    latest: str | None = None  #: the snapshot ``latest.json`` now names (stores only)
    seconds: float = 0.0  #: wall time of the publish, listing and hashing included


class Target:
    """One ``--publish`` URL, its fsspec filesystem, and the few calls made on it."""

    def __init__(self, config: PublishConfig) -> None:
        self.url = config.url
        scheme = urlsplit(config.url).scheme
        package, extra = PUBLISH_SCHEMES[scheme]
        options = dict(config.storage_options)
        self.local = scheme == "file"
        if self.local:
            options.setdefault("auto_mkdir", True)
        try:
            import fsspec

            # A fresh instance: fsspec caches by options, not by the environment (endpoint,
            # credentials) a long-lived scheduler process may change between runs.
            self.fs: Any = fsspec.filesystem(scheme, skip_instance_cache=True, **options)
        except ImportError:
            hint = f"pip install 'edx-harvester[{extra}]'" if extra else "reinstall"
            raise ConfigError(f"--publish {self.url}: {scheme}:// needs the {package} package "
                              f"({hint})") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"--publish {self.url}: publish.storage_options rejected: "
                              f"{exc}") from None
        self.root: str = self.fs._strip_protocol(config.url).rstrip("/")

    def path(self, *parts: str) -> str:
        """The store path of ``parts`` under the URL."""
        return "/".join([self.root, *(p.strip("/") for p in parts if p.strip("/"))])

    def fail(self, doing: str, exc: BaseException) -> PublishError:
        """A one-line PublishError for ``exc`` raised while ``doing``."""
        why = str(exc).splitlines()[0] if str(exc) else ""
        return PublishError(f"publish to {self.url} failed while {doing}: "
                            f"{type(exc).__name__}{': ' + why if why else ''}")

    def read_json(self, path: str) -> Any:
        """A small JSON object, or None when it is missing or not JSON."""
        try:
            return orjson.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            return None

    def write_atomic(self, path: str, data: bytes) -> None:
        """One object written whole: an object PUT is atomic; a local file is renamed in."""
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/.{name}.tmp-{os.getpid()}"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)

    def sizes(self, prefix: str) -> dict[str, int]:
        """``{relative path: size}`` of every object under ``prefix``."""
        try:
            found = self.fs.find(prefix, detail=True)
        except FileNotFoundError:
            return {}
        base = prefix.rstrip("/") + "/"
        return {name[len(base):]: int(info.get("size") or 0) for name, info in found.items()
                if name.startswith(base) and info.get("type", "file") == "file"}


def check_target(config: PublishConfig, source: Path | None = None) -> Target | None:
    """Prove the URL is usable (exit 2 otherwise), before any API request. None: no URL.
    ``source``: the directory that will be published; a ``file://`` target inside it (or
    it itself) is refused, since the publish would write into what it reads."""
    if not config.url:
        return None
    target = Target(config)
    if target.local and source is not None:
        here, there = resolved(source), resolved(Path(target.root))
        if there == here or here in there.parents:
            raise ConfigError(f"--publish {config.url}: that is inside {source}, the output "
                              "it would publish; choose a directory outside it")
    probe = target.path(_PROBE)
    try:
        if target.local:
            parent = os.path.dirname(target.root) or "/"
            if not os.path.isdir(parent):
                raise FileNotFoundError(parent)
            target.fs.makedirs(target.root, exist_ok=True)
        target.fs.pipe_file(probe, b"")
        target.fs.rm_file(probe)
    except FileNotFoundError:
        what = "its parent directory" if target.local else "the bucket"
        raise ConfigError(f"--publish {config.url}: {what} does not exist") from None
    except PermissionError as exc:
        raise ConfigError(f"--publish {config.url}: access refused ({_first_line(exc)}); "
                          "check the storage credentials") from None
    except Exception as exc:  # the storage boundary: every backend raises its own kinds
        raise ConfigError(f"--publish {config.url}: cannot reach the store "
                          f"({type(exc).__name__}: {_first_line(exc)})") from None
    return target


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
