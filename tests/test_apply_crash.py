"""`compact apply` killed for real (SIGKILL at every fault point), then resumed.

The plan has two new blobs (a rebuild, g0, and a merge, g1) and is applied with --jobs 1, so
each fault point is reached exactly once. Every run happens in the same workspace path (the
plan and the output JSON name absolute paths): a pristine copy is restored before each run, and
the resumed run's outputs must be byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.compact_env import REBUILD_AND_MERGE, Image, build, cli, compact, file_hashes, make_layers, plan

from nydus_compact.rafs.loader import load_bootstrap
from nydus_compact.safeio import TMP_PREFIX

FAULTS = [
    "blob-mid:g0",
    "blob-written:g0",
    "blob-done:g0",
    "blob-mid:g1",
    "blob-written:g1",
    "blob-done:g1",
    "bootstrap-mid",
    "bootstrap-done",
    "json-done",
]


@dataclass
class Workspace:
    root: Path  # where every run happens
    pristine: Path  # the image, its blobs and the plan (with its state store) before any apply
    version: int

    @property
    def image(self) -> Image:
        return Image(self.root / "image")

    @property
    def result_json(self) -> Path:
        return self.root / "result.json"

    def reset(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        shutil.copytree(self.pristine, self.root)

    def apply(self, fault: str | None = None):
        return compact("apply", self.image.plan, "--jobs", "1", "--output-json", self.result_json, fault=fault)

    def outputs(self) -> dict[str, bytes]:
        """Every file apply writes: the new blobs, the new bootstrap, the output JSON."""
        new = load_bootstrap(self.image.new_boot)
        files = {b.blob_id: (self.image.blobs / b.blob_id).read_bytes() for b in new.blobs}
        files["bootstrap"] = self.image.new_boot.read_bytes()
        files["json"] = self.result_json.read_bytes()
        return files


@pytest.fixture(scope="module", params=[5, 6])
def workspace(request, tmp_path_factory) -> Workspace:
    base = tmp_path_factory.mktemp(f"crash-v{request.param}")
    ws = Workspace(base / "work", base / "pristine", request.param)
    layers = make_layers(base / "src")
    image = build(layers, ws.image.root, ws.version)
    plan(image, *REBUILD_AND_MERGE)
    shutil.copytree(ws.root, ws.pristine)
    return ws


@pytest.fixture(scope="module")
def uninterrupted(workspace) -> dict[str, bytes]:
    workspace.reset()
    r = workspace.apply()
    assert r.rc == 0, r.err
    doc = json.loads(workspace.result_json.read_text())
    assert [b["group"] for b in doc["new_blobs"]] == ["g0", "g1"]  # the fault points below exist
    return workspace.outputs()


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(TMP_PREFIX + "*"))


@pytest.mark.parametrize("fault", FAULTS)
def test_killed_apply_resumes_to_identical_outputs(workspace, uninterrupted, fault):
    workspace.reset()
    ws = workspace.image
    sources = file_hashes(ws.blobs)

    killed = workspace.apply(fault)

    assert killed.rc == -signal.SIGKILL, (killed.rc, killed.err)
    if fault.startswith("blob-mid"):
        assert leftovers(ws.root), "the fault point should leave a half-written temp blob"
    if fault.startswith("blob") or fault == "bootstrap-mid":
        assert not ws.new_boot.exists()

    resumed = workspace.apply()

    assert resumed.rc == 0, resumed.err
    assert resumed.err.startswith("resumed and applied: "), resumed.err
    assert leftovers(workspace.root) == []
    assert workspace.outputs() == uninterrupted
    after = file_hashes(ws.blobs)
    assert {k: after[k] for k in sources} == sources  # source blobs never touched
    # The store now records a finished run: a third run is a no-op.
    again = cli("apply", ws.plan, "--jobs", "1", "--output-json", workspace.result_json)
    assert again.rc == 0 and again.err.startswith("already applied"), again.out + again.err


def test_killed_twice_still_resumes(workspace, uninterrupted):
    workspace.reset()
    assert workspace.apply("blob-mid:g1").rc == -signal.SIGKILL
    assert workspace.apply("bootstrap-mid").rc == -signal.SIGKILL

    resumed = workspace.apply()

    assert resumed.rc == 0 and resumed.err.startswith("resumed and applied: "), resumed.out + resumed.err
    assert leftovers(workspace.root) == []
    assert workspace.outputs() == uninterrupted


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


@pytest.mark.parametrize(
    "sig, rc, line",
    [(signal.SIGINT, 130, "compact: interrupted"), (signal.SIGTERM, 143, "compact: terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_interrupted_apply_stops_at_once_cleans_up_and_resumes(workspace, uninterrupted, sig, rc, line):
    """A real Ctrl-C / SIGTERM in the middle of a blob: apply stops there instead of finishing the
    blob, removes its temp files, publishes nothing, says so in one line and exits 130 / 143."""
    workspace.reset()
    ws = workspace.image
    before = set(os.listdir(ws.blobs))
    env = {k: v for k, v in os.environ.items() if k != "COMPACT_FAULT"}
    env |= {"COMPACT_FAULT": "blob-mid:g0", "COMPACT_FAULT_SIGNAL": "STOP"}
    cmd = [sys.executable, "-m", "nydus_compact", "apply", ws.plan, "--jobs", "1", "--output-json", workspace.result_json]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _stopped(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        assert leftovers(workspace.root), "stopped half-way through g0: its temp file exists"
        os.kill(proc.pid, sig)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()

    assert proc.returncode == rc, (proc.returncode, out, err)
    assert err.strip() == line and out == "", (out, err)
    assert leftovers(workspace.root) == []
    assert set(os.listdir(ws.blobs)) - before <= {".compact.lock"}  # g0 was not finished and published
    assert not ws.new_boot.exists() and not workspace.result_json.exists()

    resumed = workspace.apply()

    assert resumed.rc == 0 and resumed.err.startswith("resumed and applied: "), resumed.out + resumed.err
    assert workspace.outputs() == uninterrupted
