"""plan → apply runs against a remote backend (registry, s3, http-proxy), compared with localfs.

A remote run stages new blobs in ROOT/staging; a localfs run writes them beside the old ones.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nydus_compact.planner.planfile import load_plan
from nydus_compact.store.db import open_store
from nydus_compact.store.runs import find_run, steps

from .cli import Run, cli
from .compact_env import Image


@dataclass
class Outcome:
    """What one apply produced: the new bootstrap and the new blobs (id -> bytes)."""

    root: Path
    bootstrap: bytes
    blobs: dict[str, bytes]

    @property
    def plan(self) -> Path:
        return self.root / "plan.yaml"

    @property
    def new_boot(self) -> Path:
        return self.root / "new.boot"


def collect(root: Path, blobs_dir: Path) -> Outcome:
    """The apply outputs under ``root``; new blobs are the ones the output JSON lists."""
    doc = json.loads((root / "result.json").read_text())
    blobs = {b["blob_id"]: (blobs_dir / b["blob_id"]).read_bytes() for b in doc["new_blobs"]}
    return Outcome(root, (root / "new.boot").read_bytes(), blobs)


def plan_args(image: Image, root: Path, backend: list[str | Path], options: tuple[str, ...]) -> list[str | Path]:
    return ["plan", image.boot, *backend, *options, "-o", root / "plan.yaml", "-O", root / "new.boot"]


def apply_args(root: Path, backend: list[str | Path]) -> list[str | Path]:
    """A localfs run writes new blobs beside the old ones; a remote run stages them in root/staging."""
    staging = [] if "--blobs-dir" in backend else ["--blobs-dir", root / "staging"]
    return ["apply", root / "plan.yaml", *backend, *staging, "--output-json", root / "result.json"]


def run_localfs(image: Image, root: Path, options: tuple[str, ...]) -> tuple[Outcome, float]:
    """plan → apply on a copy of the blobs dir; also the apply's wall time."""
    blobs = root / "blobs"
    shutil.copytree(image.blobs, blobs)
    args = ["--blobs-dir", blobs]
    assert (r := cli(*plan_args(image, root, args, options))).rc == 0, r.err
    started = time.perf_counter()
    assert (r := cli(*apply_args(root, args))).rc == 0, r.err
    return collect(root, blobs), time.perf_counter() - started


def run_remote(image: Image, root: Path, backend: list[str | Path], options: tuple[str, ...]) -> tuple[Outcome, float]:
    root.mkdir()
    assert (r := cli(*plan_args(image, root, backend, options))).rc == 0, r.err
    started = time.perf_counter()
    r = cli(*apply_args(root, backend))
    assert r.rc == 0 and r.err.startswith("applied: "), r.out + r.err
    return collect(root, root / "staging"), time.perf_counter() - started


def assert_one_line_error(r: Run, *secrets: str) -> str:
    assert r.rc == 1, (r.rc, r.out, r.err)
    assert r.err.startswith("compact: error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err and r.out == ""
    for secret in secrets:
        assert secret not in r.err
    return r.err


def step_seconds(root: Path) -> dict[str, float]:
    """Wall time of the last apply's steps by kind ("blob": copying chunks, "upload"), from the state store."""
    plan, _ = load_plan(root / "plan.yaml")
    with open_store(root / "plan.state.sqlite", create=False) as store:
        run = find_run(store, plan.digest)
        assert run is not None
        done = steps(store, run.id).values()
    out: dict[str, float] = {}
    for step in done:
        kind = step.key.partition(":")[0]
        seconds = (datetime.fromisoformat(step.finished) - datetime.fromisoformat(step.started)).total_seconds()
        out[kind] = out.get(kind, 0.0) + seconds
    return {kind: max(seconds, 0.001) for kind, seconds in out.items()}  # the store keeps milliseconds


def assert_secrets_nowhere(root: Path, runs: list[Run], *secrets: str) -> None:
    """No secret in any run's output, in the plan's state store, or in any file under ``root``."""
    plan, _ = load_plan(root / "plan.yaml")
    assert plan.backend["authenticated"] is True
    with sqlite3.connect(root / "plan.state.sqlite") as db:
        dump = "\n".join(db.iterdump())
    assert plan.digest.removeprefix("sha256:") in dump  # the dump does hold the store's rows
    written = {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert root / "report.html" in written and root / "plan.yaml" in written
    for secret in secrets:
        for r in runs:
            assert secret not in r.out and secret not in r.err
        assert secret not in dump
        for path, data in written.items():
            assert secret.encode() not in data, path
