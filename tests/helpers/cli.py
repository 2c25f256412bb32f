"""The one way tests run `compact`: in this process (``cli``, fast) or as a separate process
(``compact``) where exit status, signals, stderr or the imports of a fresh interpreter matter."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nydus_compact.cli.main import main


@dataclass
class Run:
    rc: int
    out: str
    err: str


def cli(*args: str | Path, cwd: Path | None = None) -> Run:
    """`compact ARGS` in this process (in ``cwd`` if given); stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or "."), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return Run(rc, out.getvalue(), err.getvalue())


def compact(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    fault: str | None = None,
    python_flags: tuple[str, ...] = (),
    timeout: float = 120,
) -> Run:
    """`compact ARGS` as a separate process (``python -m nydus_compact``).

    ``env`` adds to this process's environment; ``fault`` sets COMPACT_FAULT (crash tests). Neither
    COMPACT_FAULT nor COMPACT_DEBUG is inherited: a test sees the behaviour a user gets."""
    full = {k: v for k, v in os.environ.items() if k not in ("COMPACT_FAULT", "COMPACT_DEBUG")}
    full.update(env or {})
    if fault is not None:
        full["COMPACT_FAULT"] = fault
    r = subprocess.run(
        [sys.executable, *python_flags, "-m", "nydus_compact", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=full, cwd=cwd,
    )
    return Run(r.returncode, r.stdout, r.stderr)
