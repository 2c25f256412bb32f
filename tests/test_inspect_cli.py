"""`compact inspect` end to end, as a user runs it (subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES
from helpers.cli import compact

V5 = "sha256-nocompress-repeatable"
V6 = "rafs-v6-2.2.boot"
V5_BLOB = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"



@pytest.mark.parametrize("name", [V5, V6])
def test_text_output(name: str) -> None:
    r = compact("inspect", FIXTURES / name)
    assert r.rc == 0, r.err
    assert r.err == ""
    out = r.out
    if name == V5:
        assert "RAFS v5" in out and "sha256" in out and "COMPRESSION_NONE | HASH_SHA256" in out
        assert V5_BLOB in out
        assert "/hardlink-test/test.sh (hard link of /hardlink-test/foo)" in out
        assert "/symlink-test/root -> /" in out
    else:
        assert "RAFS v6" in out and "zstd" in out and "blake3" in out
        assert "v6_mapped_blkaddr" in out
        assert "0x70000021" in out and "HAS_TOC" in out
        assert "/sync_io.rs" in out
    assert " file_offset " not in out  # chunks only with --chunks


def test_chunks_listing() -> None:
    r = compact("inspect", FIXTURES / V6, "--chunks")
    assert r.rc == 0, r.err
    assert "blob 0 index 1 flags 0x1 compressed 4828+2974 uncompressed 20480+13400" in r.out
    assert "812465bcc9e88393598311dc5fc93abaeccef0185bcd99f9701d17ebdf9adc3f" in r.out


def test_json_document() -> None:
    r = compact("inspect", FIXTURES / V6, "--json", "--chunks", "--blobs-dir", FIXTURES)
    assert r.rc == 0, r.err
    doc = json.loads(r.out)
    expected = json.loads((FIXTURES / "rafs-v6-2.2.expected.json").read_text())
    assert doc["format"] == "nydus-compact.inspect/1"
    assert doc["bootstrap"]["sha256"] == expected["bootstrap"]["sha256"]
    assert doc["superblock"]["version"] == 6
    assert doc["superblock"]["flags"] == "0x194"
    (blob,) = doc["blobs"]
    (exp_blob,) = expected["blob_table"]
    for key in ("blob_id", "chunk_count", "compressed_size", "uncompressed_size", "ci_offset", "blob_toc_size"):
        assert blob[key] == exp_blob[key], key
    assert blob["blob_toc_digest"] == exp_blob["blob_toc_digest"]
    assert blob["file_size"] == 14554
    files = {f["path"]: f for f in doc["files"]}
    for f in expected["files"]:
        assert files[f["path"]]["size"] == f["size"]
        assert files[f["path"]]["mode"] == oct(f["mode"])
        assert [c["digest"] for c in files[f["path"]]["chunks"]] == [c["digest"] for c in f["chunks"]]
    # stable: the same document twice
    assert compact("inspect", FIXTURES / V6, "--json", "--chunks", "--blobs-dir", FIXTURES).out == r.out


@pytest.mark.parametrize("name", [V5, V6, "blake3-lz4_block-non_repeatable"])
def test_verify_ok(name: str) -> None:
    r = compact("inspect", FIXTURES / name, "--blobs-dir", FIXTURES, "--verify")
    assert r.rc == 0, r.out + r.err
    assert r.out.splitlines()[-1].startswith("verify: OK: ")


def test_verify_fails_on_damaged_blob(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    data = bytearray((FIXTURES / V5_BLOB).read_bytes())
    data[3000] ^= 1
    (blobs / V5_BLOB).write_bytes(bytes(data))
    r = compact("inspect", FIXTURES / V5, "--blobs-dir", blobs, "--verify")
    assert r.rc == 1
    lines = r.out.splitlines()
    assert lines[-1].startswith("verify: FAILED, 1 problem:")
    assert any(line.startswith("problem: ") and "digest mismatch" in line for line in lines)
    r = compact("inspect", FIXTURES / V5, "--blobs-dir", blobs, "--verify", "--json")
    assert r.rc == 1
    doc = json.loads(r.out)
    assert doc["verify"]["ok"] is False and doc["verify"]["problem_count"] == 1


def test_verify_needs_blobs_dir() -> None:
    r = compact("inspect", FIXTURES / V5, "--verify")
    assert r.rc == 64
    assert len(r.err.splitlines()) == 1
    assert "--blobs-dir" in r.err and "Traceback" not in r.err


def test_truncated_bootstrap_is_one_line_error(tmp_path: Path) -> None:
    boot = tmp_path / "trunc.boot"
    boot.write_bytes((FIXTURES / V5).read_bytes()[:10000])
    r = compact("inspect", boot)
    assert r.rc == 1
    assert r.out == ""
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("compact: error: ") and str(boot) in lines[0]
    assert "Traceback" not in r.err


def test_missing_bootstrap(tmp_path: Path) -> None:
    r = compact("inspect", tmp_path / "none.boot")
    assert r.rc == 1
    assert r.err.splitlines() == [f"compact: error: {tmp_path / 'none.boot'}: No such file or directory"]


def test_missing_blob_reported_in_table(tmp_path: Path) -> None:
    r = compact("inspect", FIXTURES / V5, "--blobs-dir", tmp_path, "--json")
    assert r.rc == 0
    (blob,) = json.loads(r.out)["blobs"]
    assert blob["file"] is None and "not found" in blob["error"]
    r = compact("inspect", FIXTURES / V5, "--blobs-dir", tmp_path, "--verify")
    assert r.rc == 1
    assert f"problem: blob {V5_BLOB} not found in {tmp_path}" in r.out


def test_help_has_example() -> None:
    r = compact("inspect", "--help")
    assert r.rc == 0
    assert "compact inspect image.boot --blobs-dir" in r.out


def test_console_script(tmp_path: Path) -> None:
    exe = shutil.which("compact")
    if exe is None:
        pytest.skip("console script not installed")
    r = subprocess.run([exe, "inspect", FIXTURES / V5], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "RAFS v5" in r.stdout
