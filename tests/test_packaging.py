"""The wheel installs exactly one top-level import name, so no generic folder name (cli, templates,
store, ...) can collide with another distribution's in site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_one_top_level_package(tmp_path: Path) -> None:
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".git", "tests", "bench", "build", "dist", "*.egg-info", "__pycache__", ".*cache", ".hypothesis", ".venv", "demo")
    shutil.copytree(ROOT, src, ignore=skip)
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, src],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"nydus_compact"}
    assert "nydus_compact/templates/plan.yaml.j2" in names
    assert "nydus_compact/planner/policy.py" in names


def test_python_m_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "nydus_compact", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "Usage: compact" in done.stdout
