"""The deploy examples in deploy/ cannot rot: every harvester command line in them goes
through the real argument parser and settings loader, and every Python API call in the
Airflow DAG is checked against the real functions, so a renamed flag, a bad value or a
wrong keyword fails here, not at 2 a.m. Airflow and Docker are not needed: the DAG is
read with ``ast`` and the manifests with PyYAML."""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_type_hints

import pytest
import yaml

import harvester
from harvester import cli
from harvester.cli.options import cli_layer, sync_options
from harvester.config import SCHEMA, Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROOT = DEPLOY.parent
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
DAG = DEPLOY / "airflow" / "edx_harvester_dag.py"


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec", {})
    template = (spec.get("jobTemplate", {}).get("spec", {}).get("template")
                or spec.get("template") or {})
    yield from template.get("spec", {}).get("containers", [])


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args, from the container's own env."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def check_command(argv: list[str], *, environ: dict[str, str],
                  files: dict[str, str], tmp: Path) -> Settings:
    """Parse ``argv`` as the ``harvester`` entrypoint would, and load its settings."""
    assert all(isinstance(a, str) for a in argv), f"a non-string argument (YAML?): {argv}"
    parser = cli.build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"harvester rejects the command line: {argv}")
    config = getattr(ns, "config", None)
    if config is not None:  # the file a ConfigMap mounts there, else an empty one
        local = tmp / f"cfg{len(list(tmp.iterdir()))}.toml"
        local.write_text(files.get(str(config), ""))
        ns.config = local
    settings, _ = load_settings(cli=cli_layer(ns), environ=environ,
                                config_file=ns.config if config is not None else None)
    if ns.command == "sync":
        sync_options(ns, settings)
    return settings


def mounted_files(docs: list[dict[str, Any]]) -> dict[str, str]:
    """``{path in the pod: content}`` for every ConfigMap key a container mounts."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    out: dict[str, str] = {}
    for doc in docs:
        template = doc.get("spec", {}).get("jobTemplate", {}).get("spec", doc.get("spec", {}))
        volumes = template.get("template", {}).get("spec", {}).get("volumes", [])
        by_volume = {v["name"]: maps[v["configMap"]["name"]] for v in volumes if "configMap" in v}
        for c in containers(doc):
            for m in c.get("volumeMounts", []):
                for key, text in by_volume.get(m["name"], {}).items():
                    out[f"{m['mountPath']}/{key}"] = text
    return out


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_run_real_harvester_command_lines(manifest: Path,
                                                               tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    files = mounted_files(docs)
    for text in files.values():
        tomllib.loads(text)  # a ConfigMap's TOML must at least be TOML
    checked = 0
    for doc in docs:
        for c in containers(doc):
            env = {e["name"]: e.get("value", "0") for e in c.get("env", [])}
            if doc.get("spec", {}).get("completionMode") == "Indexed":
                env["JOB_COMPLETION_INDEX"] = "0"  # the Job controller sets it per pod
            argv = [expand(a, env) for a in c.get("command", [])[1:] + c.get("args", [])]
            settings = check_command(argv, environ=env, files=files, tmp=tmp_path)
            assert settings.publish.url, f"{manifest.name}: the example should publish"
            assert "$(" not in settings.publish.url, "an env var the pod does not define"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            checked += 1
    assert checked, f"{manifest.name} has no harvester container"
    kinds = {d["kind"] for d in docs}
    assert kinds & {"CronJob", "Job"}


def test_the_indexed_job_shards_by_completion_index() -> None:
    job = next(yaml.safe_load_all((DEPLOY / "kubernetes" / "job-shards.yaml").read_text()))
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    shard = args[args.index("--shard") + 1]
    assert shard == f"auto/{job['spec']['completions']}", "N must equal the Job's completions"


def test_dockerfile_is_slim_non_root_with_harvester_as_entrypoint() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert froms and all("-slim" in ln for ln in froms)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert lines[[i for i, ln in enumerate(lines) if ln.startswith("ENTRYPOINT")][-1]] == \
        'ENTRYPOINT ["harvester"]'
    for ln in lines:  # what it copies from the build context exists
        if ln.startswith("COPY ") and "--from" not in ln:
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies a missing {src}"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    for wanted in re.findall(r"\[([a-z0-9,]+)\]'", text):
        assert set(wanted.split(",")) <= extras, f"Dockerfile installs unknown extras {wanted}"
    assert pyproject["project"]["scripts"]["harvester"]


# --- the Airflow DAG, read with ast -------------------------------------------------------


def _constants(tree: ast.Module) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def _value(node: ast.expr, consts: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name) and node.id in consts:
        return consts[node.id]
    if isinstance(node, ast.Dict):
        return {_value(k, consts): _value(v, consts) for k, v in zip(node.keys, node.values,
                                                                      strict=True) if k}
    return ast.literal_eval(node)


def _api_target(func: ast.expr) -> Any:
    """The harvester object a call like ``harvester.sync`` or
    ``harvester.Settings.load`` names, or None for other calls."""
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.insert(0, func.attr)
        func = func.value
    if not (isinstance(func, ast.Name) and func.id == "harvester" and parts):
        return None
    obj: Any = harvester
    for name in parts:
        assert hasattr(obj, name), f"the DAG calls harvester.{'.'.join(parts)}: no such name"
        obj = getattr(obj, name)
    return obj


def test_airflow_dag_calls_the_real_api_and_command_lines(tmp_path: Path) -> None:
    tree = ast.parse(DAG.read_text())
    consts = _constants(tree)
    api_calls, commands = 0, 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = _api_target(node.func)
        if target is not None:
            sig = inspect.signature(target)
            args = [_value(a, consts) if not isinstance(a, ast.Name) or a.id in consts
                    else None for a in node.args]
            kwargs = {k.arg: _value(k.value, consts) if not isinstance(k.value, ast.Name)
                      or k.value.id in consts else None for k in node.keywords if k.arg}
            sig.bind(*args, **kwargs)  # TypeError: a wrong name or too many arguments
            if target == Settings.load:
                overrides = kwargs.get("overrides") or {}
                assert set(overrides) <= set(SCHEMA), set(overrides) - set(SCHEMA)
                Settings.load(None, environ={}, overrides=overrides)  # values are valid
            api_calls += 1
        for kw in node.keywords:
            if kw.arg == "bash_command":
                argv = shlex.split(_value(kw.value, consts))
                assert argv[0] == "harvester", argv
                check_command(argv[1:], environ={}, files={}, tmp=tmp_path)
                commands += 1
    assert api_calls >= 2 and commands >= 1, (api_calls, commands)
    _check_result_attributes(tree)


def _check_result_attributes(tree: ast.Module) -> None:
    """``night = harvester.sync(...)`` then ``night.promoted``: every attribute the DAG
    reads from a result exists on the type the API returns."""
    returns: dict[str, type] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = _api_target(node.value.func)
            if target is not None:
                hint = get_type_hints(target).get("return")
                if isinstance(hint, type):
                    returns[node.targets[0].id] = hint
    assert returns, "the DAG keeps no result of the Python API"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in returns:
            kind = returns[node.value.id]
            assert hasattr(kind, node.attr), f"{kind.__name__} has no {node.attr!r}"


def test_a_wrong_flag_or_keyword_would_fail_these_checks(tmp_path: Path) -> None:
    """The checks above can fail: a made-up flag and a made-up keyword are caught."""
    with pytest.raises(pytest.fail.Exception):
        check_command(["sync", "--store", "/s", "--publsh", "s3://b/x"], environ={},
                      files={}, tmp=tmp_path)
    call = ast.parse("harvester.sync(settings, stor='/s')").body[0].value  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        inspect.signature(_api_target(call.func)).bind(None, stor="/s")
