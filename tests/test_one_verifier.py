"""`compact verify` and `compact inspect --verify` are one verifier: a blob file may be longer
than its blob-table entry says only by the metadata the format appends after it (blob-v6.md
§1, §8, §10), never by anything else, and both commands say so alike."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES
from helpers.compact_env import cli, make_layers

from nydus_compact.mkimage.builder import BuildOptions, build_image
from nydus_compact.rafs import v6
from nydus_compact.rafs.blob_meta import compressed_data_size
from nydus_compact.rafs.loader import load_bootstrap

V6_FIXTURE = "rafs-v6-2.2.boot"
V6_BLOB = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"


def record_data_size_only(boot: Path, out: Path) -> list[int]:
    """``boot`` with every blob-table entry recording the data size only, as the 2.2 compactor
    writes it (the blob files keep the meta, digests and ToC appended after the data)."""
    bs = load_bootstrap(boot)
    bs.blobs = [dataclasses.replace(b, compressed_size=compressed_data_size(b)) for b in bs.blobs]
    out.write_bytes(v6.dump(bs))
    return [b.compressed_size for b in bs.blobs]


def both_verifiers(boot: Path, blobs: Path) -> tuple[tuple[int, str], tuple[int, str]]:
    verify = cli("verify", boot, "--blobs-dir", blobs)
    inspect = cli("inspect", boot, "--blobs-dir", blobs, "--verify")
    return (verify.rc, verify.out + verify.err), (inspect.rc, inspect.out + inspect.err)


@pytest.fixture
def fixture_image(tmp_path: Path) -> tuple[Path, Path]:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    shutil.copyfile(FIXTURES / V6_BLOB, blobs / V6_BLOB)
    boot = tmp_path / "data-size.boot"
    assert record_data_size_only(FIXTURES / V6_FIXTURE, boot) == [7802]  # blob-v6.md §1: data 0..7802
    return boot, blobs


def test_real_blob_with_appended_meta_passes_both(fixture_image):
    boot, blobs = fixture_image
    (v_rc, v_out), (i_rc, i_out) = both_verifiers(boot, blobs)
    assert v_rc == 0 and ": OK: " in v_out, v_out
    assert i_rc == 0 and "verify: OK: " in i_out, i_out


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda b: b + b"\0" * 512, "are not blob metadata"),  # garbage after the ToC
        (lambda b: b[:7802] + b"x" * 512 + b[8314:], "are not blob metadata"),  # the data's tar header overwritten
        (lambda b: b[:7000], "truncated"),
    ],
    ids=["garbage-appended", "tar-header-garbled", "truncated"],
)
def test_anything_else_past_the_data_fails_both(fixture_image, damage, says):
    boot, blobs = fixture_image
    blob = blobs / V6_BLOB
    blob.write_bytes(damage(blob.read_bytes()))
    (v_rc, v_out), (i_rc, i_out) = both_verifiers(boot, blobs)
    assert v_rc == 1 and says in v_out, v_out
    assert i_rc == 1 and says in i_out, i_out


@pytest.mark.parametrize("toc", [False, True], ids=["layout-a", "blob-toc"])
def test_builder_made_blobs_with_appended_meta(tmp_path, toc):
    layers = make_layers(tmp_path / "src")
    built = build_image(layers[:2], tmp_path / "img", BuildOptions(fs_version=6, chunk_size=64 << 10, blob_toc=toc))
    blobs = built.bootstrap_path.parent / "blobs"
    boot = tmp_path / "data-size.boot"
    sizes = record_data_size_only(built.bootstrap_path, boot)
    assert all(size < (blobs / b.blob_id).stat().st_size for size, b in zip(sizes, built.bootstrap.blobs))
    for rc, out in both_verifiers(boot, blobs):
        assert rc == 0 and "OK: " in out, out
    victim = blobs / built.bootstrap.blobs[0].blob_id
    victim.write_bytes(victim.read_bytes() + b"trailing garbage")
    for rc, out in both_verifiers(boot, blobs):
        assert rc == 1 and "are not blob metadata" in out, out
