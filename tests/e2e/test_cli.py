"""The ``oraculo`` command line, and the single-user launcher's start-up shortcut."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO

ORACULO = [sys.executable, "-m", "oraculo"]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_help_and_an_unknown_command(tmp_path: Path) -> None:
    ok = run([*ORACULO, "--help"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    for command in ("oraculo hub", "oraculo models", "oraculo singleuser"):
        assert command in ok.stdout
    bad = run([*ORACULO, "serve-everything"], tmp_path)
    assert bad.returncode == 2
    assert "unknown command 'serve-everything'" in bad.stderr


def test_hub_applies_the_workspace_defaults(tmp_path: Path) -> None:
    shown = run([*ORACULO, "hub", "--show-config"], tmp_path, ORACULO_DATA_DIR=str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "'oraculo-native'" in out
    assert "'oraculo.singleuser'" in out, out
    assert "--LabApp.extension_manager=readonly" in out, out


def test_models_help(tmp_path: Path) -> None:
    shown = run([*ORACULO, "models", "--help"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "model service" in shown.stdout


PROBE = """
import json, subprocess, sys
calls = []
real = subprocess.check_output
def record(args, *a, **k):
    calls.append([str(x) for x in args])
    return real(args, *a, **k)
subprocess.check_output = record
if sys.argv[1] == "launcher":
    from oraculo.singleuser import skip_yarn_config
    skip_yarn_config()
import jupyterlab.labapp
from jupyterlab.commands import AppOptions
print(json.dumps({"calls": calls, "registry": AppOptions().registry}))
"""


def test_the_launcher_starts_no_node_process(tmp_path: Path) -> None:
    """JupyterLab runs ``node yarn.js config`` at import; the launcher reads the registry
    from the environment instead (the plain import, the baseline, does run node)."""
    registry = "https://npm.example.org/"
    results = {}
    for how in ("plain", "launcher"):
        r = run([sys.executable, "-c", PROBE, how], REPO, ORACULO_NPM_REGISTRY=registry)
        assert r.returncode == 0, r.stderr
        results[how] = json.loads(r.stdout.strip().splitlines()[-1])
    assert any("yarn.js" in " ".join(c) for c in results["plain"]["calls"]), results
    assert results["launcher"]["calls"] == [], results
    assert results["launcher"]["registry"] == registry
