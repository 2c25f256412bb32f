"""`compact apply`: nothing is lost, the blob table is the planned one, real fixtures, idempotence,
determinism, and refusals.

Images are real builder output (the sample: an unreferenced blob, a mostly dead blob, tiny blobs,
cross-layer dedup, hard links, symlinks, xattrs) and the nydus-image fixtures; every new image
is read back through the new bootstrap from a directory holding only the blobs its table names.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FIXTURES
from helpers.compact_env import (
    MERGE_ALL,
    REBUILD_AND_MERGE,
    Image,
    build,
    build_with_dict,
    cli,
    compact,
    file_hashes,
    make_dict_layer,
    plan,
)
from helpers.erofs import check_v6_image
from test_mkimage import apply_layers

from nydus_compact.applier.apply import ApplyOptions, apply_plan
from nydus_compact.applier.errors import ApplyError
from nydus_compact.backends.config import BackendConfig
from nydus_compact.backends.localfs import LocalFsBackend
from nydus_compact.planner.planfile import load_plan
from nydus_compact.rafs.blob import ChunkSource
from nydus_compact.rafs.flags import SuperFlags
from nydus_compact.rafs.loader import load_bootstrap
from nydus_compact.rafs.model import Bootstrap
from nydus_compact.store.db import open_store

V5_FIXTURE = "sha256-nocompress-repeatable"
V5_BLOB = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"
V6_FIXTURE = "rafs-v6-2.2.boot"
V6_BLOB = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
REBUILT_FEATURES = 0x4000_0000  # CAP_TAR_TOC (compact.md §1.11); v6 adds ALIGNED
NODE_FIELDS = (
    "name", "path", "mode", "uid", "gid", "mtime", "mtime_nsec", "size", "rdev", "nlink", "symlink",
    "xattrs", "digest", "parent", "children", "link", "chunk_count", "v5_flags",
)  # fmt: skip
CHUNK_CONTENT_FIELDS = ("block_id", "flags", "compressed_size", "uncompressed_size", "file_offset")


@pytest.fixture(scope="module")
def dict_layer(layers, tmp_path_factory) -> Path:
    return make_dict_layer(layers, tmp_path_factory.mktemp("dict-layer"))


# -- comparing two images ---------------------------------------------------------------------


def serve_only_table(bs: Bootstrap, blobs_dir: Path, dest: Path) -> Path:
    """A directory with exactly the blobs ``bs`` names: proves deletable blobs are not needed."""
    dest.mkdir()
    for b in bs.blobs:
        shutil.copyfile(blobs_dir / b.blob_id, dest / b.blob_id)
    return dest


def assert_same_files(old: Bootstrap, old_blobs: Path, new: Bootstrap, new_blobs: Path) -> None:
    """Every node's metadata and every file's content, read through each image's own blobs, agree."""
    # v6 INLINED_CHUNK_DIGEST says whether every blob carries a digest array: derived from the table.
    same = ~int(SuperFlags.INLINED_CHUNK_DIGEST) if old.version == 6 else -1
    assert (new.version, new.flags & same, new.chunk_size) == (old.version, old.flags & same, old.chunk_size)
    assert new.prefetch == old.prefetch
    assert len(new.nodes) == len(old.nodes)
    old_src = ChunkSource(old, LocalFsBackend(dir=old_blobs))
    new_src = ChunkSource(new, LocalFsBackend(dir=new_blobs))
    for a, b in zip(old.nodes, new.nodes, strict=True):
        for name in NODE_FIELDS:
            assert getattr(b, name) == getattr(a, name), f"{a.path!r}: {name}"
        if a.is_reg:
            assert new_src.read_file(b) == old_src.read_file(a), a.path
    # Only a chunk's location may move; its content, sizes, flags and file offset never change.
    for name in CHUNK_CONTENT_FIELDS:
        assert np.array_equal(new.chunks[name], old.chunks[name]), name
    assert int(new.chunks["blob_index"].max(initial=0)) < len(new.blobs)


def assert_table_as_planned(plan_path: Path, old: Bootstrap, new: Bootstrap, blobs_dir: Path, doc: dict) -> None:
    plan, recorded = load_plan(plan_path)
    groups = {g.name: g for g in plan.groups}
    old_entries = {b.blob_id: b for b in old.blobs}
    new_by_group = {e["group"]: e for e in doc["new_blobs"]}
    assert len(new.blobs) == len(plan.new_table)
    assert set(new_by_group) == set(groups)
    kept = []
    for i, (planned, got) in enumerate(zip(plan.new_table, new.blobs)):
        if not planned.startswith("new:"):
            assert got.blob_id == planned
            if planned in old_entries:
                assert got == old_entries[planned], f"kept blob [{i}] entry changed"
            kept.append(planned)
            continue
        g = groups[planned.removeprefix("new:")]
        assert g.new_index == i
        data = (blobs_dir / got.blob_id).read_bytes()
        assert got.blob_id == hashlib.sha256(data).hexdigest()  # I2: named like a registry would
        assert new_by_group[g.name]["blob_id"] == got.blob_id
        assert new_by_group[g.name]["chunk_count"] == got.chunk_count == g.chunk_count
        assert got.uncompressed_size == g.uncompressed_size
        data_size = got.ci_offset if new.version == 6 else len(data)
        assert data_size == g.compressed_size
        assert got.features == REBUILT_FEATURES | (1 if new.version == 6 else 0)
        # A new blob holds no dead chunk: every index is used by some file.
        rows = new.chunks[new.chunks["blob_index"] == i]
        assert len(np.unique(rows["index"])) == got.chunk_count
    assert doc["blobs"] == [b.blob_id for b in new.blobs]
    assert doc["kept_blobs"] == kept
    assert sorted(doc["deletable_blobs"]) == sorted(plan.deletable)
    assert doc["plan_digest"] == recorded == plan.digest
    assert not set(plan.deletable) & set(doc["blobs"])


# -- 1. proof that nothing is lost ------------------------------------------------------------

SCENARIOS = {
    # keep + delete (unreferenced) + rebuild (23 % used) + merge of the two tiny blobs
    "rebuild-merge-delete": (REBUILD_AND_MERGE, False),
    # everything referenced merged into one blob (cross-layer dedup chunks included)
    "merge-all": (MERGE_ALL, False),
    # tool-a's chunks redirected into a kept chunk-dict blob
    "chunk-dict": (REBUILD_AND_MERGE, True),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("version", [5, 6])
def test_nothing_is_lost(layers, dict_layer, tmp_path, version, scenario):
    options, with_dict = SCENARIOS[scenario]
    if with_dict:
        image, dict_boot = build_with_dict(layers, dict_layer, tmp_path, version)
        options = (*options, "--chunk-dict", str(dict_boot))
    else:
        image = build(layers, tmp_path / "image", version)
    plan(image, *options)
    before = file_hashes(image.blobs) | {"boot": file_hashes(image.root)["image.boot"]}
    out_json = tmp_path / "result.json"

    r = cli("apply", image.plan, "--verify", "--output-json", out_json)

    assert r.rc == 0, r.err
    assert r.out == "" and r.err.startswith("applied: ") and f"verify {image.new_boot}: OK" in r.err
    old, new = load_bootstrap(image.boot), load_bootstrap(image.new_boot)
    served = serve_only_table(new, image.blobs, tmp_path / "served")
    assert_same_files(old, image.blobs, new, served)
    doc = json.loads(out_json.read_text())
    assert_table_as_planned(image.plan, old, new, image.blobs, doc)
    if with_dict:
        (dict_blob,) = load_bootstrap(dict_boot).blobs
        assert dict_blob.blob_id in doc["kept_blobs"]
        dict_index = doc["blobs"].index(dict_blob.blob_id)
        assert np.count_nonzero(new.chunks["blob_index"] == dict_index) > 0
    if version == 6:
        merged = apply_layers(layers, tmp_path / "merged")
        check_v6_image(image.new_boot, served, merged, tmp_path / "fsck")
    v = cli("verify", image.new_boot, "--blobs-dir", served)
    assert v.rc == 0 and v.out.count("\n") == 1 and ": OK: " in v.out, v.out + v.err
    # Source blobs and the source bootstrap are never written.
    after = file_hashes(image.blobs) | {"boot": file_hashes(image.root)["image.boot"]}
    assert {k: after[k] for k in before} == before


def test_v6_digest_keys_dedup_across_blobs(layers, tmp_path):
    """--v6-key digest (HEAD keying) folds the tool-a copy's occurrences into one stored chunk too."""
    image = build(layers, tmp_path / "image", 6)
    plan(image, *MERGE_ALL, "--v6-key", "digest")
    r = cli("apply", image.plan, "--verify")
    assert r.rc == 0, r.err
    old, new = load_bootstrap(image.boot), load_bootstrap(image.new_boot)
    served = serve_only_table(new, image.blobs, tmp_path / "served")
    assert_same_files(old, image.blobs, new, served)
    check_v6_image(image.new_boot, served, apply_layers(layers, tmp_path / "merged"), tmp_path / "fsck")


# -- 2. real nydus-image fixtures -------------------------------------------------------------


def copy_fixture(names: list[str], dest: Path) -> Path:
    dest.mkdir()
    for name in names:
        shutil.copyfile(FIXTURES / name, dest / name)
    return dest


@pytest.mark.parametrize("name", [V5_FIXTURE, "blake3-lz4_block-non_repeatable"])
def test_v5_fixture_forced_rebuild_is_a_fixed_point(tmp_path, name):
    """compact.md §2 E6: the rebuilt blob is byte-identical, so its id is the old one and the existing file stays."""
    src = load_bootstrap(FIXTURES / name)
    (blob,) = src.blobs
    d = copy_fixture([name, blob.blob_id], tmp_path / "fx")
    st = (d / blob.blob_id).stat()
    boot, out = d / name, d / f"{name}.compact"
    r = cli("plan", boot, "--blobs-dir", d, "--min-used-ratio", "101", "--layers-to-compact", "0", "-o", d / "plan.yaml")
    assert r.rc == 0, r.err

    r = cli("apply", d / "plan.yaml", "--verify")

    assert r.rc == 0, r.err
    new = load_bootstrap(out)
    if name == V5_FIXTURE:
        assert blob.blob_id == V5_BLOB
    (rebuilt,) = new.blobs
    assert rebuilt.blob_id == blob.blob_id
    assert (rebuilt.chunk_count, rebuilt.compressed_size) == (blob.chunk_count, blob.compressed_size)
    assert rebuilt.features == REBUILT_FEATURES
    assert np.array_equal(new.chunks, src.chunks)  # every chunk record unchanged
    now = (d / blob.blob_id).stat()
    assert (now.st_ino, now.st_mtime_ns, now.st_size) == (st.st_ino, st.st_mtime_ns, st.st_size)  # not rewritten
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".compact-tmp")) == []
    assert_same_files(src, d, new, d)


def test_v6_fixture_forced_rebuild_passes_fsck(tmp_path):
    expected = json.loads((FIXTURES / "rafs-v6-2.2.expected.json").read_text())
    d = copy_fixture([V6_FIXTURE, V6_BLOB], tmp_path / "fx")
    r = cli("plan", d / V6_FIXTURE, "--blobs-dir", d, "--min-used-ratio", "101", "--layers-to-compact", "0",
            "-o", d / "plan.yaml")  # fmt: skip
    assert r.rc == 0, r.err

    r = cli("apply", d / "plan.yaml", "-O", d / "new.boot", "--verify")

    assert r.rc == 0, r.err
    src, new = load_bootstrap(d / V6_FIXTURE), load_bootstrap(d / "new.boot")
    (rebuilt,) = new.blobs
    assert rebuilt.blob_id != V6_BLOB and (d / rebuilt.blob_id).is_file()
    served = serve_only_table(new, d, tmp_path / "served")
    check_v6_image(d / "new.boot", served, None, tmp_path / "fsck")
    source = ChunkSource(new, LocalFsBackend(dir=served))
    want = {f["path"].encode(): f["sha256"] for f in expected["files"] if f["sha256"]}
    got = {n.path: hashlib.sha256(source.read_file(n)).hexdigest() for n in new.nodes if n.is_reg}
    assert len(want) == 2 and got == want
    # The new blob carries no digest array (compact.md §1.11), so the superblock must not claim one.
    assert src.flags & SuperFlags.INLINED_CHUNK_DIGEST and not new.flags & SuperFlags.INLINED_CHUNK_DIGEST
    assert_same_files(src, d, new, served)


# -- 3. idempotence and determinism -----------------------------------------------------------


@pytest.mark.parametrize("version", [5, 6])
def test_rerun_is_a_noop_and_repairs_a_deleted_blob(layers, tmp_path, version):
    image = build(layers, tmp_path / "image", version)
    plan(image, *REBUILD_AND_MERGE)
    out_json = tmp_path / "result.json"
    assert cli("apply", image.plan, "--output-json", out_json).rc == 0
    outputs = {p: p.stat() for p in [image.new_boot, out_json]}
    new = load_bootstrap(image.new_boot)
    new_ids = [e["blob_id"] for e in json.loads(out_json.read_text())["new_blobs"]]
    blob_bytes = {i: (image.blobs / i).read_bytes() for i in new_ids}
    outputs |= {image.blobs / i: (image.blobs / i).stat() for i in new_ids}

    r = cli("apply", image.plan, "--output-json", out_json)

    assert r.rc == 0, r.err
    assert r.err.startswith("already applied") and "intact" in r.err
    for path, st in outputs.items():  # nothing rewritten
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns), path

    doc = out_json.read_bytes()
    out_json.unlink()
    r = cli("apply", image.plan, "--output-json", out_json)

    assert r.rc == 0 and r.err.startswith("already applied"), r.out + r.err
    assert out_json.read_bytes() == doc  # a requested output is there again, identical

    (image.blobs / new_ids[-1]).unlink()
    r = cli("apply", image.plan, "--output-json", out_json)

    assert r.rc == 0, r.err
    assert not r.err.startswith("already applied")
    assert (image.blobs / new_ids[-1]).read_bytes() == blob_bytes[new_ids[-1]]
    assert load_bootstrap(image.new_boot).blobs == new.blobs
    assert cli("verify", image.new_boot, "--blobs-dir", image.blobs).rc == 0


def test_rerun_rewrites_a_damaged_bootstrap(layers, tmp_path):
    image = build(layers, tmp_path / "image", 6)
    plan(image, *REBUILD_AND_MERGE)
    assert cli("apply", image.plan).rc == 0
    good = image.new_boot.read_bytes()
    image.new_boot.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))

    r = cli("apply", image.plan)

    assert r.rc == 0, r.err
    assert not r.err.startswith("already applied")
    assert image.new_boot.read_bytes() == good


@pytest.mark.parametrize("version", [5, 6])
def test_two_applies_are_byte_identical(layers, tmp_path, version):
    results = []
    for name, jobs in (("a", "1"), ("b", "2")):
        image = build(layers, tmp_path / name, version)
        plan(image, *REBUILD_AND_MERGE)
        r = cli("apply", image.plan, "--jobs", jobs)
        assert r.rc == 0, r.err
        new = load_bootstrap(image.new_boot)
        results.append((image.new_boot.read_bytes(), {b.blob_id: (image.blobs / b.blob_id).read_bytes() for b in new.blobs}))
    assert results[0] == results[1]


def test_plan_without_changes_writes_nothing(tmp_path):
    """compact.md §2 E6 with ratio 0: one blob, fully used, nothing to merge (I3: no changes)."""
    d = copy_fixture([V5_FIXTURE, V5_BLOB], tmp_path / "fx")
    r = cli("plan", d / V5_FIXTURE, "--blobs-dir", d, "--min-used-ratio", "0", "--layers-to-compact", "0",
            "-o", d / "plan.yaml")  # fmt: skip
    assert r.rc == 0, r.err
    before = sorted(p.name for p in d.iterdir())

    r = cli("apply", d / "plan.yaml", "--output-json", tmp_path / "result.json")

    assert r.rc == 0, r.err
    assert r.err.startswith("nothing to do")
    assert sorted(p.name for p in d.iterdir()) == before
    assert not (tmp_path / "result.json").exists()


def test_new_blobs_can_go_to_another_dir(layers, tmp_path):
    """--blobs-dir names where new blobs go; sources are read from the plan's backend and left alone."""
    image = build(layers, tmp_path / "image", 6)
    plan(image, *REBUILD_AND_MERGE)
    sources = file_hashes(image.blobs)
    out = tmp_path / "out-blobs"

    r = cli("apply", image.plan, "--blobs-dir", out, "--verify", "-J", tmp_path / "result.json")

    assert r.rc == 0 and ": OK: " in r.err, r.out + r.err
    doc = json.loads((tmp_path / "result.json").read_text())
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        b["blob_id"] for b in doc["new_blobs"]
    )
    # The sources are untouched; apply only adds the lock that keeps gc out while it reads them.
    assert file_hashes(image.blobs) == sources | {".compact.lock": hashlib.sha256(b"").hexdigest()}


def test_an_edited_plan_that_keeps_every_chunk_applies(layers, tmp_path):
    """A reviewer drops the merge of the two tiny blobs: apply re-validates and keeps them instead."""
    image = build(layers, tmp_path / "image", 6)
    plan(image, *REBUILD_AND_MERGE)
    src = load_bootstrap(image.boot)

    def keep_tiny_blobs(d: dict) -> None:
        (merge,) = [g for g in d["groups"] if len(g["members"]) > 1]
        d["groups"].remove(merge)
        for i in merge["members"]:
            d["blobs"][i].update(decision="keep", reason="KEEP", group=None)

    edit_plan(image.plan, keep_tiny_blobs)

    r = cli("apply", image.plan, "--verify", "-J", tmp_path / "result.json")

    assert r.rc == 0, r.err
    assert "the plan was edited after `compact plan`; its decisions were re-validated" in r.err
    doc = json.loads((tmp_path / "result.json").read_text())
    assert [b["group"] for b in doc["new_blobs"]] == ["g0"]
    assert doc["kept_blobs"] == [src.blobs[i].blob_id for i in (1, 3, 4)]
    new = load_bootstrap(image.new_boot)
    assert_same_files(src, image.blobs, new, serve_only_table(new, image.blobs, tmp_path / "served"))


def _flip_a_byte(blob: Path, offset: int) -> None:
    data = bytearray(blob.read_bytes())
    data[offset + 5] ^= 0xFF
    blob.write_bytes(bytes(data))


def _replace_with_random_bytes(blob: Path, offset: int) -> None:
    blob.write_bytes(np.random.default_rng(1).bytes(blob.stat().st_size))


@pytest.mark.parametrize("corrupt", [_flip_a_byte, _replace_with_random_bytes], ids=["flipped-byte", "random-blob"])
@pytest.mark.parametrize("version", [5, 6])
def test_a_corrupt_source_chunk_publishes_nothing(layers, tmp_path, corrupt, version):
    image = build(layers, tmp_path / "image", version)
    plan(image, *REBUILD_AND_MERGE)
    src = load_bootstrap(image.boot)
    rebuilt = src.blobs[0]  # g0 copies tool-a's chunks from it
    (tool_a,) = [n for n in src.nodes if n.path == b"/usr/bin/tool-a"]
    offset = int(src.node_chunks(tool_a)["compressed_offset"][0])
    corrupt(image.blobs / rebuilt.blob_id, offset)
    users = {n.path.decode() for n in src.nodes if 0 in src.node_chunks(n)["blob_index"]}
    listing = sorted(p.name for p in image.blobs.iterdir())

    r = compact("apply", image.plan, "--output-json", tmp_path / "result.json")

    assert r.rc == 1 and r.err.count("\n") == 1 and r.err.startswith("compact: error: "), r.err
    assert f"blob {rebuilt.blob_id}: chunk at compressed offset " in r.err, r.err
    if corrupt is _flip_a_byte:
        assert f"compressed offset {offset} " in r.err, r.err
    assert any(f"(used by {path} in {image.boot})" in r.err for path in users), r.err
    assert "does not decompress" in r.err or "does not match its digest" in r.err, r.err
    # Nothing published: no bootstrap, no JSON, no new blob, no temp file.
    assert not image.new_boot.exists() and not (tmp_path / "result.json").exists()
    assert sorted(p.name for p in image.blobs.iterdir() if p.name != ".compact.lock") == listing
    assert not list(tmp_path.rglob(".compact-tmp.*"))

    # Without the check, the same plan applies (the user asked to copy the bytes as they are).
    unchecked = cli("apply", image.plan, "--no-verify-sources")
    assert unchecked.rc == 0 and unchecked.err.startswith("resumed and applied:"), unchecked.out + unchecked.err


# -- 5. refusals: one line on stderr, exit 1, nothing written ---------------------------------


def snapshot(image: Image) -> dict[str, str]:
    """Every file under the image dir (the state store aside) with its sha256."""
    return {
        str(p.relative_to(image.root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(image.root.rglob("*"))
        if p.is_file() and ".state.sqlite" not in p.name
    }


def edit_plan(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _touch_bootstrap(image: Image) -> None:
    with open(image.boot, "ab") as fp:
        fp.write(b"\0")


def _remove_bootstrap(image: Image) -> None:
    image.boot.unlink()


def _garble_bootstrap(image: Image) -> None:
    image.boot.write_bytes(bytes(image.boot.stat().st_size))  # same size, no longer a bootstrap


def _grow_kept_blob(image: Image) -> None:
    with open(image.blobs / load_bootstrap(image.boot).blobs[1].blob_id, "ab") as fp:
        fp.write(b"x")


def _edit_config(image: Image) -> None:
    edit_plan(image.plan, lambda d: d["config"].update(min_used_ratio=60))


def _lose_a_chunk(image: Image) -> None:
    def edit(d: dict) -> None:
        assert d["blobs"][1]["decision"] == "keep"
        d["blobs"][1]["decision"] = "delete"

    edit_plan(image.plan, edit)


REFUSALS = {
    "bootstrap-changed": (_touch_bootstrap, ["plan is stale", "image.boot changed"]),
    "bootstrap-gone": (_remove_bootstrap, ["plan is stale", "image.boot is gone"]),
    "bootstrap-garbled": (_garble_bootstrap, ["plan is stale", "image.boot changed"]),
    "blob-size-changed": (_grow_kept_blob, ["plan is stale", "bytes, the plan saw"]),
    "config-edited": (_edit_config, ["plan is stale", "config section was edited"]),
    "chunk-lost": (_lose_a_chunk, ["rejected", "would be gone"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refuses_stale_or_lossy_plans(layers, tmp_path, case):
    image = build(layers, tmp_path / "image", 6)
    plan(image, *REBUILD_AND_MERGE)
    change, words = REFUSALS[case]
    change(image)
    before = snapshot(image)

    r = compact("apply", image.plan, "--output-json", tmp_path / "result.json")

    assert r.rc == 1
    assert r.out == "" and r.err.count("\n") == 1 and r.err.startswith("compact: error: "), r.err
    for w in words:
        assert w in r.err, r.err
    if case == "chunk-lost":
        src = load_bootstrap(image.boot)
        assert f"blob {src.blobs[1].blob_id} would be gone" in r.err
        users = {n.path.decode() for n in src.nodes if 1 in src.node_chunks(n)["blob_index"]}
        assert any(f"but {path} needs" in r.err for path in users), r.err
    if case.startswith(("bootstrap", "blob", "config")):
        assert "run `compact plan` again" in r.err
    assert snapshot(image) == before
    assert not (tmp_path / "result.json").exists()


def test_refuses_when_the_chunk_dict_changed(layers, dict_layer, tmp_path):
    image, dict_boot = build_with_dict(layers, dict_layer, tmp_path, 5)
    plan(image, *REBUILD_AND_MERGE, "--chunk-dict", dict_boot)
    with open(dict_boot, "ab") as fp:
        fp.write(b"\0")
    before = snapshot(image)

    r = cli("apply", image.plan)

    assert r.rc == 1 and r.err.count("\n") == 1, r.err
    assert f"plan is stale: chunk dict {dict_boot} changed" in r.err, r.err
    assert snapshot(image) == before


OUTPUT_CLASHES = {
    "-O is the source bootstrap": (lambda im: ["-O", im.boot], "is the source bootstrap"),
    "-J is the source bootstrap": (lambda im: ["-J", im.boot], "is the source bootstrap"),
    "-J is the plan": (lambda im: ["-J", im.plan], "is the plan; refusing to overwrite it"),
    "-J is -O": (lambda im: ["-O", im.root / "x", "-J", im.root / "x"], "is the new bootstrap (-O)"),
    "-J is a blob name": (lambda im: ["-J", im.blobs / ("0" * 64)], "is named like a blob"),
    "-O is a source blob": (
        lambda im: ["-O", im.blobs / load_bootstrap(im.boot).blobs[0].blob_id],
        "is the source blob",
    ),
}


@pytest.mark.parametrize("case", sorted(OUTPUT_CLASHES))
def test_refuses_outputs_that_clobber_inputs(layers, tmp_path, case):
    image = build(layers, tmp_path / "image", 5)
    plan(image, *REBUILD_AND_MERGE)
    args, words = OUTPUT_CLASHES[case]
    before = snapshot(image)

    r = cli("apply", image.plan, *args(image))

    assert r.rc == 1 and r.err.count("\n") == 1 and words in r.err, r.err
    assert snapshot(image) == before


def test_refuses_while_another_apply_holds_the_lock(layers, tmp_path):
    image = build(layers, tmp_path / "image", 6)
    plan(image, *REBUILD_AND_MERGE)
    fd = os.open(image.blobs / ".compact.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = snapshot(image)
        r = compact("apply", image.plan)
        assert snapshot(image) == before
    finally:
        os.close(fd)
    assert r.rc == 1 and r.err.count("\n") == 1 and "another compact process (apply or gc)" in r.err, r.err
    assert not image.new_boot.exists()
    # Released, the same plan applies.
    assert cli("apply", image.plan).rc == 0


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "cannot read plan"),
        (b"format: [unclosed\n", "not valid YAML"),
        (b"- just\n- a list\n", "not a nydus-compact plan"),
        (b"\xff\xfe\x00garbage", "not a plan: binary data"),
        (b"format: nydus-compact-plan/1\nimages: 3\n", "plan"),
    ],
)
def test_refuses_missing_or_garbage_plan_files(tmp_path, content, words):
    path = tmp_path / "plan.yaml"
    if content is not None:
        path.write_bytes(content)

    r = compact("apply", path, "--blobs-dir", tmp_path / "blobs")

    assert r.rc == 1 and r.out == "", r.out
    assert r.err.count("\n") == 1 and r.err.startswith("compact: error: ") and words in r.err, r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["plan.yaml"] if content is not None else [])


def test_reading_from_a_locked_source_dir_is_refused(layers, tmp_path):
    """New blobs go elsewhere, but a gc holding the source dir's lock would delete what apply reads."""
    image = build(layers, tmp_path / "image", 5)
    plan(image, *REBUILD_AND_MERGE)
    fd = os.open(image.blobs / ".compact.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = cli("apply", image.plan, "--blobs-dir", tmp_path / "new")
    finally:
        os.close(fd)
    assert r.rc == 1 and f"{image.blobs.resolve()}: another compact process" in r.err, r.err
    assert not image.new_boot.exists() and not [p for p in (tmp_path / "new").iterdir() if p.name != ".compact.lock"]
    # Two applies reading one source dir share its lock.
    fd = os.open(image.blobs / ".compact.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert cli("apply", image.plan, "--blobs-dir", tmp_path / "new").rc == 0
    finally:
        os.close(fd)


def test_a_blob_deleted_before_the_bootstrap_is_written_is_caught(layers, tmp_path):
    image = build(layers, tmp_path / "image", 6)
    plan(image, *REBUILD_AND_MERGE)
    loaded, recorded = load_plan(image.plan)
    gone: list[str] = []

    def delete_a_new_blob(label: str, done: int, total: int) -> None:
        # Another process removes a blob just as apply turns to the bootstrap.
        if label.startswith("writing bootstrap") and not gone:
            new = sorted(set(os.listdir(image.blobs)) - before - {".compact.lock"})
            gone.append(new[0])
            (image.blobs / new[0]).unlink()

    before = set(os.listdir(image.blobs))
    opts = ApplyOptions(image.plan, image.blobs)
    bcfg = BackendConfig("localfs", {"dir": str(image.blobs)}, "test")
    with LocalFsBackend(image.blobs) as backend, open_store(tmp_path / "state.sqlite") as store:
        with pytest.raises(ApplyError, match="is gone") as caught:
            apply_plan(loaded, recorded, opts, backend, bcfg, store, delete_a_new_blob)
    assert gone and f"{image.blobs / gone[0]} is gone" in str(caught.value)
    assert not image.new_boot.exists()


def test_a_kept_blob_shorter_than_its_table_entry_is_a_finding(layers, tmp_path):
    image = build(layers, tmp_path / "image", 5)
    kept = load_bootstrap(image.boot).blobs[1]  # kept by REBUILD_AND_MERGE
    path = image.blobs / kept.blob_id
    os.truncate(path, kept.compressed_size - 100)

    plan(image, *REBUILD_AND_MERGE)

    loaded, _ = load_plan(image.plan)
    assert loaded.blobs[1].decision == "keep"
    assert any(
        f"blob {kept.blob_id} is {kept.compressed_size - 100} bytes, shorter than the {kept.compressed_size}" in f
        for f in loaded.findings
    ), loaded.findings
