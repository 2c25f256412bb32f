"""Start-up of `compact` (issue 11): commands import their libraries lazily, `--version`, shell
completion. How fast is measured by bench/startup.py, not here; here: what gets imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import compact

from nydus_compact import version

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PLAN = ROOT / "plans" / "sample.plan.yaml"
# Each is what a command pays for only when it runs (plan, apply, report, inspect, mkimage).
HEAVY = ("numpy", "sqlite_utils", "jinja2", "httpx", "zstandard", "lz4", "blake3")
# No command needs it: typer 0.29 coerces every parameter through it, 0.1 s more for each run
# (pyproject pins typer below 0.29).
NEVER = ("pydantic",)


def imported_by(*args: str) -> set[str]:
    """Top-level modules a fresh `compact ARGS` process imported (python -X importtime)."""
    r = compact(*args, python_flags=("-X", "importtime"))
    assert r.rc == 0, r.err
    return modules(r.err)


def modules(importtime: str) -> set[str]:
    return {line.split("|")[2].strip() for line in importtime.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize(
    "args",
    [("--help",), ("show", str(SAMPLE_PLAN)), ("--version",), ("plan", "--help"), ("apply", "--help")],
    ids=["help", "show", "version", "plan-help", "apply-help"],
)
def test_light_commands_import_no_heavy_library(args):
    loaded = imported_by(*args)
    assert "nydus_compact.cli.main" in loaded  # the measurement sees our own imports
    assert not {m for m in HEAVY + NEVER if m in loaded}, sorted(m for m in HEAVY + NEVER if m in loaded)


def test_a_command_imports_its_library_when_it_runs(tmp_path):
    r = compact("mkimage", "--sample", "-o", tmp_path / "img", python_flags=("-X", "importtime"))
    assert r.rc == 0, r.err
    assert "nydus_compact.mkimage.builder" in r.err and "numpy" in r.err
    assert not set(NEVER) & modules(r.err)


def test_version():
    r = compact("--version")
    assert r.rc == 0
    assert r.out == f"compact (nydus-compact) {version()}\n"
    assert version() != "0+unknown"  # read from the installed distribution's metadata


def test_errors_are_still_one_line_with_lazy_imports(tmp_path):
    bad = tmp_path / "plan.yaml"
    bad.write_text("format: nope\n")
    r = compact("show", bad)
    assert r.rc == 1
    assert r.err.startswith("compact: error: ") and len(r.err.splitlines()) == 1 and str(bad) in r.err


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"_COMPACT_COMPLETE": "complete_bash", "COMP_WORDS": "compact sh", "COMP_CWORD": "1"}, ["show"]),
        ({"_COMPACT_COMPLETE": "complete_bash", "COMP_WORDS": "compact plan --min", "COMP_CWORD": "2"},
         ["--min-used-ratio"]),
        ({"_COMPACT_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "compact ap"}, ['"apply"']),
        ({"_COMPACT_COMPLETE": "complete_fish", "_TYPER_COMPLETE_ARGS": "compact ex",
          "_TYPER_COMPLETE_FISH_ACTION": "get-args"}, ["explain"]),
    ],
    ids=["bash-command", "bash-option", "zsh", "fish"],
)
def test_shell_completion_completes_commands_and_options(env, expected):
    r = compact(env=env)
    assert r.rc == 0, r.err
    for word in expected:
        assert word in r.out


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_completion_prints_a_script_for_the_shell(shell):
    r = compact("--show-completion", shell)
    assert r.rc == 0, r.err
    assert "_COMPACT_COMPLETE" in r.out


def test_startup_benchmark_runs_and_prints_ratios(tmp_path):
    out = tmp_path / "startup.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "startup.py"), "--reps", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "load average (1 min)" in proc.stdout
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"baseline", "help", "show"}
    assert doc["results"]["baseline"]["ratio"] == 1.0
