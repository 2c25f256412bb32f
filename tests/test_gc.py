"""`compact gc` deletes only blobs it can attribute, under the blobs dir's lock (issue 13, items 4
and 5), and lists what it leaves alone: unknown files and stale temp files."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers.compact_env import REBUILD_AND_MERGE, Image, build, cli, file_hashes, plan

from nydus_compact.planner.planfile import load_plan
from nydus_compact.rafs.loader import load_bootstrap


@pytest.fixture
def image(layers, tmp_path) -> Image:
    """An applied image whose blobs dir also holds an OCI layout's manifest and config (named by
    their sha256, like blobs), a README and the temp file of an interrupted write."""
    im = build(layers, tmp_path / "image", 6)
    plan(im, *REBUILD_AND_MERGE)
    assert cli("apply", im.plan).rc == 0
    for doc in (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}', b'{"architecture": "amd64"}'):
        (im.blobs / hashlib.sha256(doc).hexdigest()).write_bytes(doc)
    (im.blobs / "README").write_text("not a blob\n")
    (im.blobs / ".compact-tmp.0123abcd.g0").write_bytes(b"half a blob")
    return im


def deletable(im: Image) -> list[str]:
    ids = sorted(load_plan(im.plan)[0].deletable)
    assert ids
    return ids


def gc(im: Image, *args: str | Path):
    return cli("gc", "--keep", im.new_boot, "--blobs-dir", im.blobs, *args)


def test_without_drop_or_plan_gc_lists_and_deletes_nothing(image):
    before = file_hashes(image.blobs)
    new_ids = {b.blob_id for b in load_bootstrap(image.new_boot).blobs}

    dry = gc(image, "--json")
    r = gc(image, "--delete")

    assert dry.rc == 0, dry.err
    doc = json.loads(dry.out)
    assert doc["blobs"] == [] and doc["deleted"] is False
    others = sorted(p.name for p in image.blobs.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in new_ids)
    assert doc["unknown"] == others  # the old blobs, the manifest, the config, README
    assert r.rc == 64 and "--drop" in r.err and "--plan" in r.err, r
    assert file_hashes(image.blobs) == before


@pytest.mark.parametrize("how", ["drop", "plan"])
def test_gc_deletes_only_attributed_blobs_and_leaves_unknown_files_alone(image, how):
    retired = ["--drop", image.boot] if how == "drop" else ["--plan", image.plan]
    ids = deletable(image)
    before = file_hashes(image.blobs)

    dry = gc(image, *retired)
    assert dry.rc == 0, dry.err
    assert file_hashes(image.blobs) == before
    r = gc(image, *retired, "--delete")

    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert [l for l in lines if l.startswith("deleted ")] == [f"deleted {image.blobs / b}" for b in ids]
    assert f"unknown, left alone {image.blobs / 'README'}" in lines
    assert f"stale temp file, left alone {image.blobs / '.compact-tmp.0123abcd.g0'}" in lines
    after = file_hashes(image.blobs)
    assert sorted(set(before) - set(after)) == ids
    assert all(after[name] == before[name] for name in after)  # manifest, config, README, temp untouched
    v = cli("verify", image.new_boot, "--blobs-dir", image.blobs)
    assert v.rc == 0, v.out + v.err


def test_a_dropped_blob_that_a_kept_bootstrap_uses_stays(image):
    before = file_hashes(image.blobs)
    r = cli("gc", "--keep", image.new_boot, "--keep", image.boot, "--drop", image.boot,
            "--blobs-dir", image.blobs, "--delete", "--json")
    assert r.rc == 0, r.err
    doc = json.loads(r.out)
    assert doc["blobs"] == [] and sorted(doc["still_referenced"]) == sorted({b.blob_id for b in load_bootstrap(image.boot).blobs})
    assert file_hashes(image.blobs) == before


def test_gc_refuses_the_deletable_list_of_a_plan_that_was_not_applied(layers, tmp_path):
    im = build(layers, tmp_path / "image", 6)
    plan(im, *REBUILD_AND_MERGE)
    before = file_hashes(im.blobs)
    r = cli("gc", "--keep", im.boot, "--blobs-dir", im.blobs, "--plan", im.plan, "--delete")
    assert r.rc == 1 and "not applied" in r.err and r.err.count("\n") == 1, r
    assert file_hashes(im.blobs) == before


@pytest.mark.parametrize("holder", ["apply writing (exclusive)", "apply reading (shared)"])
def test_gc_delete_waits_for_no_one_and_deletes_nothing_under_an_apply(image, holder):
    before = file_hashes(image.blobs)
    fd = os.open(image.blobs / ".compact.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if "exclusive" in holder else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        r = gc(image, "--drop", image.boot, "--delete")
    finally:
        os.close(fd)
    assert r.rc == 1 and r.err.count("\n") == 1 and "lock" in r.err, r
    assert file_hashes(image.blobs) == before
    assert gc(image, "--drop", image.boot, "--delete").rc == 0  # released, it deletes


def test_gc_lists_stale_temp_files(image):
    doc = json.loads(gc(image, "--json").out)
    assert doc["stale_temps"] == [".compact-tmp.0123abcd.g0"]
