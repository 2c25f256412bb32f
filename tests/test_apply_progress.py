"""Progress is drawn only on a terminal: scripts reading apply's output get plain lines."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMPACT = [sys.executable, "-m", "nydus_compact"]
REPO = Path(__file__).resolve().parents[1]


def _plan(tmp_path: Path) -> Path:
    for args in (
        ["mkimage", "--sample", "-o", "img", "--chunk-size", "64KiB", "--repeatable"],
        ["plan", "img/image.boot", "--blobs-dir", "img/blobs", "--min-used-ratio", "50", "-o", "p.yaml"],
    ):
        subprocess.run([*COMPACT, *args], cwd=tmp_path, capture_output=True, text=True, check=True)
    return tmp_path


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` is needed to run apply on a pty")
def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    work = _plan(tmp_path)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TERM": "xterm"}
    cmd = " ".join([sys.executable, "-m", "nydus_compact", "apply", "p.yaml"])
    on_tty = subprocess.run(["script", "-qec", cmd, "/dev/null"], cwd=work, capture_output=True, text=True, env=env)
    assert on_tty.returncode == 0, on_tty.stdout
    assert "\x1b[" in on_tty.stdout and "applied:" in on_tty.stdout  # a bar was drawn, then the result
    # Every phase is named (no "0/? bytes" while inputs are checked, no bar stuck at 100 % while the
    # bootstrap is written), and sizes are in binary units.
    for phase in ("checking the plan's inputs", "copying chunks", "writing bootstrap image.boot.compact"):
        assert phase in on_tty.stdout, on_tty.stdout
    assert re.search(r"B/\d+\.\d KiB", on_tty.stdout) and "/?" not in on_tty.stdout, on_tty.stdout
    assert not re.search(r"\d ?(kB|MB|GB)\b", on_tty.stdout), on_tty.stdout

    (work / "img" / "image.boot.compact").unlink()
    plain = subprocess.run([*COMPACT, "apply", "p.yaml"], cwd=work, capture_output=True, text=True, env=env)
    assert plain.returncode == 0, plain.stderr
    assert "\x1b[" not in plain.stdout + plain.stderr
    assert plain.stdout == "" and plain.stderr.splitlines()[-1].startswith("applied:")
