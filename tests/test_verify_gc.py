"""`compact verify` (blobs present with their sizes, every chunk decodes to its digest, v6 blob meta
agrees with the bootstrap) and `compact gc` (blob files of dropped images no kept bootstrap references;
tests/test_gc.py has the rest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.compact_env import REBUILD_AND_MERGE, Image, build, cli, compact, plan

from nydus_compact.planner.planfile import load_plan
from nydus_compact.rafs.loader import load_bootstrap


def compacted(layers: list[Path], root: Path, version: int) -> Image:
    image = build(layers, root, version)
    plan(image, *REBUILD_AND_MERGE)
    r = cli("apply", image.plan)
    assert r.rc == 0, r.err
    return image


def blob_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if len(p.name) == 64)


# -- verify -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [5, 6])
def test_verify_passes_on_source_and_compacted_images(layers, tmp_path, version):
    image = compacted(layers, tmp_path / "image", version)
    for boot in (image.boot, image.new_boot):
        r = compact("verify", boot, "--blobs-dir", image.blobs)
        assert r.rc == 0 and r.err == "", r.err
        assert r.out.count("\n") == 1 and r.out.startswith(f"verify {boot}: OK: "), r.out


def _flip_first_chunk_byte(path: Path, blob) -> None:
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_ci_table_byte(path: Path, blob) -> None:
    data = bytearray(path.read_bytes())
    data[blob.ci_offset + 3] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, blob) -> None:
    path.write_bytes(path.read_bytes()[: blob.compressed_size // 2])


def _remove(path: Path, blob) -> None:
    path.unlink()


DAMAGE = {
    "corrupt-byte": (_flip_first_chunk_byte, "digest mismatch"),
    "truncated": (_truncate, "the blob table says"),
    "missing": (_remove, "not found"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("version", [5, 6])
def test_verify_reports_damaged_blobs(layers, tmp_path, version, damage):
    image = compacted(layers, tmp_path / "image", version)
    new = load_bootstrap(image.new_boot)
    blob = new.blobs[0]  # the rebuilt blob, used by /usr/bin/tool-a among others
    harm, words = DAMAGE[damage]
    harm(image.blobs / blob.blob_id, blob)

    r = cli("verify", image.new_boot, "--blobs-dir", image.blobs)

    assert r.rc == 1
    assert r.out.count("\n") == 1 and r.out.startswith(f"verify {image.new_boot}: FAILED ("), r.out
    problems = r.err.splitlines()
    assert problems and all(p.startswith("  ") for p in problems), r.err
    assert any(words in p and blob.blob_id in p for p in problems), r.err
    assert len(problems) == len(set(problems)), "a problem is listed twice"


def test_verify_checks_v6_blob_meta_against_the_bootstrap(layers, tmp_path):
    image = compacted(layers, tmp_path / "image", 6)
    blob = load_bootstrap(image.new_boot).blobs[0]
    _flip_ci_table_byte(image.blobs / blob.blob_id, blob)

    r = cli("verify", image.new_boot, "--blobs-dir", image.blobs)

    assert r.rc == 1 and "FAILED" in r.out, r.out
    assert "ci array" in r.err and blob.blob_id in r.err, r.err


def test_verify_lists_at_most_max_problems(layers, tmp_path):
    image = compacted(layers, tmp_path / "image", 5)
    blob = load_bootstrap(image.new_boot).blobs[0]
    (image.blobs / blob.blob_id).write_bytes(bytes(blob.compressed_size))  # every chunk is garbage

    r = cli("verify", image.new_boot, "--blobs-dir", image.blobs, "--max-problems", "2")

    assert r.rc == 1
    problems = r.err.splitlines()
    assert len(problems) == 3 and problems[-1].startswith("  ... and ") and "more problems" in problems[-1], r.err
    failed = int(r.out.split("FAILED (")[1].split(" ")[0])
    assert failed == blob.chunk_count > 2


def test_verify_of_an_unreadable_bootstrap_is_one_line(tmp_path):
    bad = tmp_path / "garbage.boot"
    bad.write_bytes(b"\0" * 100)
    r = cli("verify", bad, "--blobs-dir", tmp_path)
    assert r.rc == 1 and r.out == "" and r.err.count("\n") == 1 and r.err.startswith("compact: error: "), r.err


# -- gc ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [5, 6])
def test_gc_lists_then_deletes_exactly_the_deletable_blobs(layers, tmp_path, version):
    image = compacted(layers, tmp_path / "image", version)
    deletable = sorted(load_plan(image.plan)[0].deletable)
    new_ids = sorted(b.blob_id for b in load_bootstrap(image.new_boot).blobs)
    (image.blobs / "README").write_text("not a blob\n")
    everything = sorted(p.name for p in image.blobs.iterdir())

    dry = cli("gc", "--keep", image.new_boot, "--drop", image.boot, "--blobs-dir", image.blobs)

    assert dry.rc == 0, dry.err
    lines = dry.out.splitlines()
    assert lines[:-1] == [f"deletable {image.blobs / b}" for b in deletable] + [f"unknown, left alone {image.blobs / 'README'}"]
    assert lines[-1].startswith(f"{len(deletable)} blob{'' if len(deletable) == 1 else 's'}, ") and "dry run" in lines[-1]
    assert sorted(p.name for p in image.blobs.iterdir()) == everything  # nothing deleted

    as_json = json.loads(cli("gc", "--keep", image.new_boot, "--drop", image.boot, "--blobs-dir", image.blobs, "--json").out)
    assert as_json["deleted"] is False and as_json["blobs"] == deletable
    assert as_json["bytes"] == sum((image.blobs / b).stat().st_size for b in deletable)
    # Keeping the source image too protects every source blob; only nothing stays deletable.
    both = cli("gc", "--keep", image.new_boot, "--keep", image.boot, "--drop", image.boot, "--blobs-dir", image.blobs, "--json")
    assert json.loads(both.out)["blobs"] == []

    r = cli("gc", "--keep", image.new_boot, "--drop", image.boot, "--blobs-dir", image.blobs, "--delete")

    assert r.rc == 0, r.err
    assert r.out.splitlines()[: len(deletable)] == [f"deleted {image.blobs / b}" for b in deletable]
    assert blob_files(image.blobs) == new_ids
    assert (image.blobs / "README").exists() and (image.blobs / ".compact.lock").exists()
    v = cli("verify", image.new_boot, "--blobs-dir", image.blobs)
    assert v.rc == 0 and ": OK: " in v.out, v.out + v.err
