"""Progress on a terminal (issue 13): `plan` names its phases, sizes are binary units everywhere."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nydus_compact.planner.pipeline import PLAN_PHASES

COMPACT = [sys.executable, "-m", "nydus_compact"]
REPO = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TERM": "xterm"}
DECIMAL = re.compile(r"\d (kB|MB|GB)\b")

needs_script = pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` runs a command on a pty")


def on_a_terminal(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = " ".join([sys.executable, "-m", "nydus_compact", *args])
    return subprocess.run(["script", "-qec", cmd, "/dev/null"], cwd=cwd, capture_output=True, text=True, env=ENV)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    subprocess.run([*COMPACT, "mkimage", "--sample", "-o", "img", "--chunk-size", "64KiB", "--repeatable"],
                   cwd=tmp_path, capture_output=True, text=True, check=True, env=ENV)  # fmt: skip
    return tmp_path


@needs_script
def test_plan_names_its_phases_on_a_terminal_only(sample: Path) -> None:
    args = ["plan", "img/image.boot", "--blobs-dir", "img/blobs", "--min-used-ratio", "50", "-o", "p.yaml"]
    tty = on_a_terminal(args, sample)
    assert tty.returncode == 0, tty.stdout
    for phase in PLAN_PHASES:
        assert re.search(rf"plan: {phase} done in \d+\.\d\d s", tty.stdout), (phase, tty.stdout)
    assert PLAN_PHASES == ("parse", "index", "decide", "write")

    plain = subprocess.run([*COMPACT, *args], cwd=sample, capture_output=True, text=True, env=ENV)
    assert plain.returncode == 0 and plain.stdout == "", plain.stderr
    assert "done in" not in plain.stderr and "\x1b[" not in plain.stderr


@needs_script
def test_apply_progress_counts_in_binary_units(sample: Path) -> None:
    subprocess.run([*COMPACT, "plan", "img/image.boot", "--blobs-dir", "img/blobs", "--min-used-ratio", "50",
                    "-o", "p.yaml"], cwd=sample, capture_output=True, text=True, check=True, env=ENV)  # fmt: skip
    tty = on_a_terminal(["apply", "p.yaml", "--verify"], sample)
    assert tty.returncode == 0, tty.stdout
    assert "\x1b[" in tty.stdout and "iB" in tty.stdout, tty.stdout
    assert not DECIMAL.search(tty.stdout), DECIMAL.search(tty.stdout)
