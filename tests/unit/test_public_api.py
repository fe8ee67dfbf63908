"""The public surface: ``harvester.__all__`` is complete and sorted, importing it is
cheap, and ``Settings.load`` validates like the command line. No sockets."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import harvester
from harvester.config import PiiMode, Settings
from harvester.errors import ConfigError
from harvester.learners import LearnerOptions

README = Path(__file__).resolve().parents[2] / "README.md"
ENT = "8f2b0d2e-1c1a-4a57-9d0e-6f1f5c2f4b11"


def _api_section() -> str:
    text = README.read_text("utf-8")
    start = text.index("## Python API")
    return text[start:text.index("\n## ", start + 1)]


def test_all_is_sorted() -> None:
    """An explicit, sorted __all__ (httpx's test_exported_members habit)."""
    assert harvester.__all__ == sorted(harvester.__all__)
    assert len(set(harvester.__all__)) == len(harvester.__all__)


def test_all_is_complete_and_resolves() -> None:
    """Every name the README's Python API section uses is exported, every exported name
    exists, and every public non-module attribute of the package is exported."""
    used = set(re.findall(r"(?<![\w/.-])harvester\.([A-Za-z_]\w*)", _api_section()))
    assert used, "the README's Python API section names no harvester.* name"
    assert used - {"learners"} <= set(harvester.__all__), used - set(harvester.__all__)
    for name in harvester.__all__:
        assert hasattr(harvester, name), name
    public = {n for n, v in vars(harvester).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public <= set(harvester.__all__), public - set(harvester.__all__)


def test_importing_harvester_loads_no_http_client_or_terminal_library() -> None:
    """A scheduler imports harvester to build its DAG: that must stay cheap."""
    code = ("import sys, harvester; heavy = {'aiohttp', 'rich', 'harvester.pipeline', "
            "'harvester.learners'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_api_names_survive_importing_the_implementing_modules() -> None:
    """harvester.sync stays the function once every submodule is imported (a submodule
    of the same name would silently replace it)."""
    import harvester.cli

    assert callable(harvester.sync) and not isinstance(harvester.sync, types.ModuleType)
    assert callable(harvester.harvest) and callable(harvester.export_learners)


def test_settings_load_precedence_file_env_overrides(tmp_path: Path) -> None:
    """overrides > environment > file > defaults, with the CLI's dotted names."""
    cfg = tmp_path / "h.toml"
    cfg.write_text('[api]\nbase = "https://file.example"\nclient_id = "file-id"\n'
                   '[harvest]\npage_size = 50\n[learners]\n'
                   f'enterprises = ["{ENT.upper()}"]\npii = "drop"\n'
                   '[sync]\nkeep = 3\nmax_age = "2d"\n')
    s = Settings.load(cfg, environ={"EDX_CLIENT_ID": "env-id", "EDX_API_BASE": "https://env.example"},
                      overrides={"api.base": "https://flag.example", "harvest.page_size": 75})
    assert s.api.base == "https://flag.example"
    assert s.api.client_id == "env-id"
    assert s.harvest.page_size == 75
    assert s.learners.enterprises == (ENT,) and s.learners.pii is PiiMode.DROP
    assert s.sync.keep == 3 and s.sync.max_age == 2 * 86400
    assert LearnerOptions.from_settings(s).enterprises == (ENT,)
    assert "learners" not in s.public_dict() and "sync" not in s.public_dict()


@pytest.mark.parametrize(("overrides", "says"), [
    ({"harvest.page_size": 0}, "harvest.page_size"),
    ({"harvest.pagesize": 10}, "unknown setting 'harvest.pagesize'"),
    ({"learners.pii": "mask"}, "keep, hash or drop"),
    ({"learners.enterprises": ["../etc"]}, "not an enterprise customer UUID"),
    ({"sync.keep": 0}, "sync.keep"),
    ({"rates.lms": "fast"}, "rates.lms"),
])
def test_settings_load_rejects_what_the_cli_rejects(overrides: dict[str, object],
                                                     says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        Settings.load(environ={}, overrides=overrides)


def test_sync_without_a_store_is_a_config_error_before_anything_runs() -> None:
    settings = Settings.load(environ={}, overrides={"api.client_id": "i",
                                                    "api.client_secret": "s"})
    with pytest.raises(ConfigError, match="no store given"):
        harvester.sync(settings)


def test_learner_options_need_an_enterprise_only_for_the_learner_export() -> None:
    """Any command may load settings without [learners]; the export itself needs one."""
    settings = Settings.load(environ={})
    assert settings.learners.enterprises == ()
    with pytest.raises(ConfigError, match="no enterprise given"):
        harvester.export_learners(settings)
