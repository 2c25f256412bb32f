"""Fleet compaction (issue 8): one plan over several images sharing a blob store.

The family: one base layer of ten 64 KiB files of incompressible bytes and five app versions;
image K is [base, app_K], where app_K replaces base files 2K and 2K+1 and adds /app/VERSION.
The builder is deterministic, so all five images share one base blob; every blob goes into one
shared blobs dir. Under the same options (min_used_ratio 90, tiny blobs merged two by two),
per-image compaction sees the base only 80 % used, rebuilds it into a private blob per image
and lists it deletable although the other four images still need it; one fleet plan sees it
fully used and keeps it, and merges the five tiny version blobs into new blobs shared by the
images that use them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.compact_env import cli, compact
from helpers.erofs import check_v6_image
from test_apply import assert_same_files
from test_mkimage import apply_layers

from nydus_compact.backends.config import localfs_config
from nydus_compact.backends.localfs import LocalFsBackend
from nydus_compact.mkimage.builder import BuildOptions, build_image
from nydus_compact.planner.config import CompactConfig, merge
from nydus_compact.planner.flags import Flags
from nydus_compact.planner.pipeline import PlanInputs, make_plan
from nydus_compact.planner.planfile import load_plan, write_plan
from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester, digest
from nydus_compact.rafs.loader import load_bootstrap
from nydus_compact.rafs.model import Bootstrap
from nydus_compact.safeio import TMP_PREFIX
from nydus_compact.store.db import open_store

CHUNK = 64 * 1024
N_IMAGES = 5
BASE_FILES = 10
OPTIONS = ("--min-used-ratio", "90", "--compact-blob-size", "600KiB", "--max-compact-size", "300KiB")
BUILD = {
    5: BuildOptions(fs_version=5, chunk_size=CHUNK, compressor=Compressor.LZ4_BLOCK, digester=Digester.SHA256,
                    repeatable=True),
    6: BuildOptions(fs_version=6, chunk_size=CHUNK, compressor=Compressor.ZSTD, digester=Digester.BLAKE3,
                    repeatable=True),
}  # fmt: skip


def version_text(k: int) -> bytes:
    return f"app version {k}\n".encode()


def overridden(k: int) -> tuple[int, int]:
    """The base files app_K replaces: every base file is replaced by exactly one version."""
    return 2 * k, 2 * k + 1


@dataclass
class Layers:
    base: Path
    apps: list[Path]
    base_data: list[bytes]  # content of base file i


@dataclass
class Family:
    root: Path  # image dirs img0..img4 and the shared blobs dir
    version: int
    layers: Layers

    @property
    def boots(self) -> list[Path]:
        return [self.root / f"img{k}" / "image.boot" for k in range(N_IMAGES)]

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def base_blob(self) -> str:
        return load_bootstrap(self.boots[0]).blobs[0].blob_id

    def app_blob(self, k: int) -> str:
        return load_bootstrap(self.boots[k]).blobs[1].blob_id


@pytest.fixture(scope="module")
def layers(tmp_path_factory) -> Layers:
    root = tmp_path_factory.mktemp("fleet-layers")
    rng = random.Random(8)
    base = root / "base"
    (base / "opt/base").mkdir(parents=True)
    base_data = [rng.randbytes(CHUNK) for _ in range(BASE_FILES)]
    for i, data in enumerate(base_data):
        (base / f"opt/base/f{i}.bin").write_bytes(data)
    apps = []
    for k in range(N_IMAGES):
        app = root / f"app{k}"
        (app / "opt/base").mkdir(parents=True)
        (app / "app").mkdir()
        for i in overridden(k):
            (app / f"opt/base/f{i}.bin").write_bytes(rng.randbytes(CHUNK))
        (app / "app/VERSION").write_bytes(version_text(k))
        apps.append(app)
    return Layers(base, apps, base_data)


def build_family(layers: Layers, root: Path, version: int) -> Family:
    family = Family(root, version, layers)
    family.blobs.mkdir(parents=True)
    for k, app in enumerate(layers.apps):
        built = build_image([layers.base, app], root / f"img{k}", BUILD[version])
        for blob in built.blob_paths:
            shutil.copyfile(blob, family.blobs / blob.name)
        shutil.rmtree(root / f"img{k}" / "blobs")  # one shared store only
    assert len({load_bootstrap(p).blobs[0].blob_id for p in family.boots}) == 1, "the base blob should be shared"
    return family


@dataclass
class Compacted:
    """A copy of the family, compacted per image and as a fleet."""

    pristine: Family
    per_image: Family
    fleet: Family

    def per_image_plan(self, k: int) -> Path:
        return self.per_image.root / f"plan{k}.yaml"

    def per_image_out(self, k: int) -> Path:
        return self.per_image.root / f"out{k}.boot"

    @property
    def fleet_plan(self) -> Path:
        return self.fleet.root / "fleet.yaml"

    @property
    def fleet_json(self) -> Path:
        return self.fleet.root / "fleet.json"

    def fleet_out(self, k: int) -> Path:
        return self.fleet.root / "out" / f"{k}-image.boot"  # the sources' names clash: prefixed


def copy_family(family: Family, root: Path) -> Family:
    shutil.copytree(family.root, root)
    return Family(root, family.version, family.layers)


def plan_fleet(family: Family, plan: Path, *extra: str) -> None:
    r = cli("plan", *family.boots, "--blobs-dir", family.blobs, "-o", plan, *OPTIONS, *extra)
    assert r.rc == 0, r.err


def apply_fleet(plan: Path, out_dir: Path, result_json: Path, fault: str | None = None):
    return compact("apply", plan, "--output-dir", out_dir, "--jobs", "1", "--output-json", result_json, fault=fault)


@pytest.fixture(scope="module", params=[6, 5], ids=["v6", "v5"])
def compacted(request, layers, tmp_path_factory) -> Compacted:
    base = tmp_path_factory.mktemp(f"fleet-v{request.param}")
    pristine = build_family(layers, base / "pristine", request.param)
    done = Compacted(pristine, copy_family(pristine, base / "per-image"), copy_family(pristine, base / "fleet"))

    fam = done.per_image
    for k, boot in enumerate(fam.boots):
        r = cli("plan", boot, "--blobs-dir", fam.blobs, "-o", done.per_image_plan(k), *OPTIONS)
        assert r.rc == 0, r.err
        r = cli("apply", done.per_image_plan(k), "-O", done.per_image_out(k))
        assert r.rc == 0, r.err

    plan_fleet(done.fleet, done.fleet_plan)
    r = cli("apply", done.fleet_plan, "--output-dir", done.fleet.root / "out", "--output-json", done.fleet_json)
    assert r.rc == 0, r.err
    return done


def new_blob_ids(boot: Path) -> list[str]:
    return [b.blob_id for b in load_bootstrap(boot).blobs]


def holders_of_base_file(boots: list[Path], data: bytes, digester: Digester) -> set[str]:
    """Blob ids holding a copy of ``data``'s chunk, over the given bootstraps."""
    block = digest(digester, data)
    out = set()
    for boot in boots:
        bs = load_bootstrap(boot)
        for row in bs.chunks[bs.chunks["block_id"] == np.void(block)]:
            out.add(bs.blobs[int(row["blob_index"])].blob_id)
    return out


def serve(bs: Bootstrap, blobs_dir: Path, dest: Path) -> Path:
    """A directory with exactly the blobs ``bs`` names: nothing else is needed to read it."""
    dest.mkdir()
    for b in bs.blobs:
        shutil.copyfile(blobs_dir / b.blob_id, dest / b.blob_id)
    return dest


def blob_bytes(dirs_and_boots: list[tuple[Path, Path]]) -> int:
    """Total size of the distinct blob files the bootstraps reference."""
    files = {blobs / b for blobs, boot in dirs_and_boots for b in new_blob_ids(boot)}
    return sum(f.stat().st_size for f in files)


# -- per-image compaction breaks the fleet, fleet compaction does not ---------------------------


def test_per_image_compaction_would_break_another_image_and_duplicates_the_base(compacted):
    c = compacted
    fam = c.per_image
    base_blob = fam.base_blob
    plan0, _ = load_plan(c.per_image_plan(0))
    assert base_blob in plan0.deletable
    # ... yet image 1's bootstrap still points its files at that blob.
    img1 = load_bootstrap(fam.boots[1])
    base_index = [b.blob_id for b in img1.blobs].index(base_blob)
    assert (img1.chunks["blob_index"] == base_index).any()
    # Each image rebuilt its own copy: every base file now lives in the four private blobs of the
    # images that did not replace it, and the shared base blob is gone from every new table.
    outs = [c.per_image_out(k) for k in range(N_IMAGES)]
    for i, data in enumerate(c.pristine.layers.base_data):
        holders = holders_of_base_file(outs, data, img1.digester)
        assert len(holders) == N_IMAGES - 1 and base_blob not in holders, i
    assert not any(base_blob in new_blob_ids(o) for o in outs)


def test_fleet_keeps_the_shared_base_and_merges_the_version_blobs(compacted):
    c = compacted
    fam = c.fleet
    base_blob = fam.base_blob
    apps = [fam.app_blob(k) for k in range(N_IMAGES)]
    plan, _ = load_plan(c.fleet_plan)
    doc = json.loads(c.fleet_json.read_text())
    outs = [c.fleet_out(k) for k in range(N_IMAGES)]
    tables = [new_blob_ids(o) for o in outs]

    assert [im["bootstrap"] for im in doc["images"]] == [str(o.resolve()) for o in outs]
    assert [im["blobs"] for im in doc["images"]] == tables
    # The base is kept, once, and each base file lives in exactly that one blob.
    assert base_blob not in plan.deletable
    for data in c.pristine.layers.base_data:
        assert holders_of_base_file(outs, data, load_bootstrap(outs[0]).digester) == {base_blob}
    # Version blobs merge two by two (max_compact_size 300 KiB); the fifth stays as it is.
    new = {g["group"]: g["blob_id"] for g in doc["new_blobs"]}
    assert sorted(new) == ["g0", "g1"]
    assert tables == [
        [base_blob, new["g0"]], [base_blob, new["g0"]], [base_blob, new["g1"]], [base_blob, new["g1"]],
        [base_blob, apps[4]],
    ]  # fmt: skip
    # Deletable: exactly the merged blobs, which no new bootstrap references any more.
    assert sorted(plan.deletable) == sorted(apps[:4]) == sorted(doc["deletable_blobs"])
    assert not set(plan.deletable) & {b for t in tables for b in t}
    # Tables are the plan's new table, restricted to what each image uses, in that order.
    planned = [new[e.removeprefix("new:")] if e.startswith("new:") else e for e in plan.new_table]
    for table in tables:
        assert table == [b for b in planned if b in table]


def test_every_image_reads_back_identical(compacted, tmp_path):
    c = compacted
    for k, (src_boot, out) in enumerate(zip(c.pristine.boots, (c.fleet_out(k) for k in range(N_IMAGES)))):
        old, new = load_bootstrap(src_boot), load_bootstrap(out)
        # Exactly the blobs its chunks reference, and no other blob is needed to read it.
        assert sorted(set(np.unique(new.chunks["blob_index"]).tolist())) == list(range(len(new.blobs)))
        served = serve(new, c.fleet.blobs, tmp_path / f"served{k}")
        assert_same_files(old, c.pristine.blobs, new, served)
        r = cli("verify", out, "--blobs-dir", served)
        assert r.rc == 0, r.out + r.err
        if c.fleet.version == 6:
            tree = apply_layers([c.pristine.layers.base, c.pristine.layers.apps[k]], tmp_path / f"tree{k}")
            check_v6_image(out, served, tree, tmp_path)


def test_fleet_stores_fewer_bytes_than_per_image_compaction(compacted):
    c = compacted
    before = sum(p.stat().st_size for p in c.pristine.blobs.iterdir())
    per_image = blob_bytes([(c.per_image.blobs, c.per_image_out(k)) for k in range(N_IMAGES)])
    fleet = blob_bytes([(c.fleet.blobs, c.fleet_out(k)) for k in range(N_IMAGES)])
    print(f"v{c.fleet.version} blob bytes: before {before}, per-image {per_image}, fleet {fleet}")
    assert fleet < per_image
    assert fleet <= before + 2 * 4096  # two new blobs, each with its own meta at most a few KiB


def test_plan_shows_which_images_use_each_blob(compacted):
    c = compacted
    body = yaml.safe_load(c.fleet_plan.read_text())
    rows = {b["blob_id"]: b for b in body["blobs"]}
    # The plan names its images relative to its own directory.
    boots = [os.path.relpath(p, c.fleet_plan.parent) for p in c.fleet.boots]
    # Incompressible chunks are stored as is: each image uses 8 of the 10 base files.
    assert rows[c.fleet.base_blob]["referenced_by"] == {p: 8 * CHUNK for p in boots}
    for k in range(N_IMAGES):
        app = rows[c.fleet.app_blob(k)]
        # The version file is too small to shrink, so it is stored as is too.
        assert app["referenced_by"] == {boots[k]: 2 * CHUNK + len(version_text(k))}


# -- single image: the fleet path with one image is today's plan ---------------------------------


def test_one_image_plan_through_the_api_equals_the_cli(compacted, tmp_path):
    fam = compacted.pristine
    boot = fam.boots[0]
    plan = tmp_path / "plan.yaml"  # the plan names its own path in its apply hint
    r = cli("plan", boot, "--blobs-dir", fam.blobs, "-o", plan, *OPTIONS)
    assert r.rc == 0, r.err
    from_cli = plan.read_bytes()
    plan.unlink()
    cfg = merge(CompactConfig(), {"min_used_ratio": 90, "compact_blob_size": "600KiB", "max_compact_size": "300KiB"})
    inputs = PlanInputs(bootstraps=[boot], chunk_dict=None, backend_config=localfs_config(fam.blobs),
                        config=cfg, flags=Flags.tool_default())  # fmt: skip
    with open_store(tmp_path / "api.state.sqlite") as store:
        outcome = make_plan(inputs, LocalFsBackend(dir=fam.blobs), store)
    write_plan(outcome.plan, plan)
    assert plan.read_bytes() == from_cli
    assert [im.output for im in outcome.plan.images] == [str(boot) + ".compact"]


# -- refusals ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family6(layers, tmp_path_factory) -> Family:
    return build_family(layers, tmp_path_factory.mktemp("fleet-refusals") / "family", 6)


def variant(layers: Layers, dest: Path, **changes) -> Path:
    """Image 0 built with other options (into its own dir: the refusal comes before any blob is read)."""
    return build_image([layers.base, layers.apps[0]], dest, replace(BUILD[6], **changes)).bootstrap_path


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"fs_version": 5, "compressor": Compressor.LZ4_BLOCK}, "RAFS version 5 differs from"),
        ({"chunk_size": 2 * CHUNK}, f"chunk size {2 * CHUNK} differs from"),
        ({"digester": Digester.SHA256}, "digester sha256 differs from"),
    ],
    ids=["version", "chunk-size", "digester"],
)
def test_plan_refuses_images_that_cannot_share_a_plan(family6, tmp_path, changes, words):
    fam = family6
    other = variant(fam.layers, tmp_path / "other", **changes)
    plan = tmp_path / "fleet.yaml"
    r = cli("plan", fam.boots[0], fam.boots[1], other, "--blobs-dir", fam.blobs, "-o", plan, *OPTIONS)
    assert r.rc == 1 and r.out == ""
    assert r.err.startswith(f"compact: error: {other}: {words} {fam.boots[0]}'s ") and r.err.count("\n") == 1, r.err
    assert not plan.exists()


def test_plan_refuses_the_same_bootstrap_twice(compacted, tmp_path):
    fam = compacted.pristine
    again = fam.boots[0].parent / ".." / fam.boots[0].parent.name / fam.boots[0].name  # another spelling
    plan = tmp_path / "fleet.yaml"
    r = cli("plan", fam.boots[0], fam.boots[1], again, "--blobs-dir", fam.blobs, "-o", plan)
    assert (r.rc, r.err) == (1, "compact: error: the same bootstrap is given twice\n")
    assert not plan.exists()


def test_one_output_bootstrap_for_a_fleet_is_refused(compacted, tmp_path):
    c = compacted
    r = cli("apply", c.fleet_plan, "-O", tmp_path / "one.boot")
    assert r.rc == 1 and r.err.count("\n") == 1 and "use --output-dir" in r.err, r.err
    assert not (tmp_path / "one.boot").exists()
    r = cli("plan", *c.pristine.boots[:2], "--blobs-dir", c.pristine.blobs, "-o", tmp_path / "p.yaml",
            "-O", tmp_path / "one.boot")  # fmt: skip
    assert r.rc == 1 and "-O names the output of one image" in r.err and not (tmp_path / "p.yaml").exists()


# -- crash and resume ----------------------------------------------------------------------------


@dataclass
class Workspace:
    """A fleet with its plan; every run happens at ``family.root`` (plans name absolute paths)."""

    family: Family
    pristine: Path

    @property
    def plan(self) -> Path:
        return self.family.root / "fleet.yaml"

    @property
    def out(self) -> Path:
        return self.family.root / "out"

    @property
    def result_json(self) -> Path:
        return self.family.root / "result.json"

    def reset(self) -> None:
        shutil.rmtree(self.family.root)
        shutil.copytree(self.pristine, self.family.root)

    def apply(self, fault: str | None = None):
        return apply_fleet(self.plan, self.out, self.result_json, fault)

    def outputs(self) -> dict[str, bytes]:
        """Every file apply writes: new blobs, the five bootstraps, the output JSON."""
        files = {p.name: p.read_bytes() for p in sorted(self.out.iterdir())}
        for boot in self.out.iterdir():
            for b in new_blob_ids(boot):
                files[b] = (self.family.blobs / b).read_bytes()
        files["json"] = self.result_json.read_bytes()
        return files


@pytest.fixture(scope="module")
def workspace(layers, tmp_path_factory) -> Workspace:
    base = tmp_path_factory.mktemp("fleet-crash")
    family = build_family(layers, base / "work", 6)
    plan_fleet(family, family.root / "fleet.yaml")
    shutil.copytree(family.root, base / "pristine")
    return Workspace(family, base / "pristine")


@pytest.fixture(scope="module")
def uninterrupted(workspace) -> dict[str, bytes]:
    workspace.reset()
    r = workspace.apply()
    assert r.rc == 0 and r.err.startswith("applied: 2 new blobs"), r.out + r.err
    return workspace.outputs()


@pytest.mark.parametrize("fault", ["bootstrap-done", "blob-mid:g0"])
def test_killed_fleet_apply_resumes_to_identical_outputs(workspace, uninterrupted, fault):
    workspace.reset()
    killed = workspace.apply(fault)
    assert killed.rc == -signal.SIGKILL, (killed.rc, killed.err)
    written = sorted(p.name for p in workspace.out.iterdir() if not p.name.startswith(TMP_PREFIX))
    # Killed after the first image's bootstrap, or before any bootstrap.
    assert written == (["0-image.boot"] if fault == "bootstrap-done" else [])

    resumed = workspace.apply()

    assert resumed.rc == 0 and resumed.err.startswith("resumed and applied: "), resumed.out + resumed.err
    assert resumed.err.rstrip().endswith(f"{N_IMAGES} bootstraps")
    assert sorted(workspace.family.root.rglob(TMP_PREFIX + "*")) == []
    assert workspace.outputs() == uninterrupted


# -- compact explain, per image ------------------------------------------------------------------


def test_explain_answers_per_image(compacted):
    c = compacted
    fam = c.fleet
    r = cli("explain", fam.base_blob[:12], "--plan", c.fleet_plan, "--top", "2")
    assert r.rc == 0, r.err
    head, images = r.out.split("images using its chunks (5 of 5; top 2 files of each by bytes):\n")
    assert f"of a fleet of {N_IMAGES} images" in head and "  decision    keep (KEEP)\n" in head
    lines = images.splitlines()
    for k, boot in enumerate(fam.boots):
        # Each image's top files in the base blob are the first two base files it did not replace.
        first_two = [i for i in range(BASE_FILES) if i not in overridden(k)][:2]
        assert lines[3 * k] == f"  {boot}: uses 512.0 KiB ({8 * CHUNK} bytes)"
        assert [line.split() for line in lines[3 * k + 1 : 3 * k + 3]] == [
            ["64.0", "KiB", f"/opt/base/f{i}.bin"] for i in first_two
        ]
    assert len(lines) == 3 * N_IMAGES

    app3 = fam.app_blob(3)
    r = cli("explain", app3, "--plan", c.fleet_plan)
    assert r.rc == 0, r.err
    tail = r.out.split("images using its chunks (1 of 5; top 10 files of each by bytes):\n")[1].splitlines()
    used = 2 * CHUNK + len(version_text(3))
    assert tail[0] == f"  {fam.boots[3]}: uses 128.0 KiB ({used} bytes)"
    assert [line.split()[-1] for line in tail[1:]] == ["/opt/base/f6.bin", "/opt/base/f7.bin", "/app/VERSION"]
    assert "  decision    merge (MERGED_INTO) -> g1\n" in r.out


def test_explain_per_image_from_the_state_store_alone(compacted):
    c = compacted
    r = cli("explain", c.fleet.base_blob, "--state", c.fleet_plan.with_name("fleet.state.sqlite"), "--top", "1")
    assert r.rc == 0, r.err
    lines = r.out.split("images using its chunks (5 of 5; top 1 file of each by bytes):\n")[1].splitlines()
    assert lines[0::2] == [f"  {b}: uses its chunks (bytes per image: see the plan file)" for b in c.fleet.boots]
    assert all(line.split()[-1].startswith("/opt/base/") for line in lines[1::2])


@pytest.mark.parametrize("base_offset", [0, 1 << 41])
def test_referenced_bytes_counts_each_location_once(base_offset: int) -> None:
    """Both the packed-key path and the lexsort path (offsets beyond 2^40) count distinct locations."""
    from nydus_compact.planner.facts import Facts, SourceBlob
    from nydus_compact.planner.fleet import referenced_bytes
    from nydus_compact.rafs.compression import Compressor
    from nydus_compact.rafs.digest import Digester
    from nydus_compact.rafs.model import CHUNK_DTYPE

    ch = np.zeros(5, dtype=CHUNK_DTYPE)
    ch["blob_index"] = [0, 1, 0, 1, 1]
    ch["compressed_offset"] = [base_offset + x for x in (0, 0, 0, 100, 0)]
    ch["compressed_size"] = [10, 20, 10, 30, 20]
    blobs = [SourceBlob(f"{i}" * 64, 1000, None, 0, Compressor.NONE, Digester.SHA256, 2, 1000) for i in range(3)]
    facts = Facts(version=5, blobs=blobs, chunks=ch)
    assert referenced_bytes(facts, 3).tolist() == [10, 50, 0]
    assert referenced_bytes(facts, 3, 1, 4).tolist() == [10, 50, 0]
