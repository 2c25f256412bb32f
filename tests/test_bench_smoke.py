"""The benchmark at its tiny size: it runs, reports every figure, and measures real images.

Timings are not asserted (this is no timed test); what is asserted is that the harness produces
the figures issue 6 asks for and that the synthetic images are what the benchmark claims.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.compact_env import cli
from helpers.erofs import check_v6_image

BENCH = Path(__file__).parents[1] / "bench"


@pytest.fixture
def images(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import images as module

    return module


def test_quick_run_reports_every_figure(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--reps", "2", "--cache-dir", str(tmp_path / "cache"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pl/pa" in proc.stdout and "ap/cp" in proc.stdout and "ap/pd" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["machine"]["cpus"] >= 1 and doc["reps"] == 2
    rows = doc["results"]
    assert sorted((r["image"], r["version"]) for r in rows) == [
        ("bulk-quick", 5), ("bulk-quick", 6), ("many-quick", 5), ("many-quick", 6)
    ]
    for r in rows:
        for kind in ("parse", "dump", "plan", "apply", "cp"):
            assert len(r[kind]["seconds"]["samples"]) == 2
            assert 0 < r[kind]["seconds"]["min"] <= r[kind]["seconds"]["median"] <= r[kind]["seconds"]["max"]
        for kind in ("parse", "dump", "plan", "apply"):
            assert r[kind]["peak_rss"] >= r[kind]["import_rss"] > 0
            assert r[kind]["process_seconds"]["median"] > r[kind]["seconds"]["median"]
        assert r["plan_vs_parse"] == pytest.approx(r["plan"]["seconds"]["median"] / r["parse"]["seconds"]["median"])
        assert r["apply_vs_cp"] == pytest.approx(r["apply"]["seconds"]["median"] / r["cp"]["seconds"]["median"])
        parse_dump = r["parse"]["seconds"]["median"] + r["dump"]["seconds"]["median"]
        assert r["apply_vs_parse_dump"] == pytest.approx(r["apply"]["seconds"]["median"] / parse_dump)
        assert r["blobs_after"] < r["blobs_before"] == r["blobs"]
        assert r["bytes_written"] > r["bytes_to_read"] > 0
        # Fully used tiny blobs are contiguous, so ranges must carry more than one chunk each.
        assert r["chunks_copied"] > r["requests"] >= r["planned_ranges"] > 0
        assert set(r["targets"]) == {"apply_vs_cp", "plan_vs_parse"}  # quick images are far below 1M occurrences


@pytest.mark.parametrize("version", [5, 6])
def test_generated_image_is_valid_and_has_the_intended_blob_classes(images, tmp_path, version):
    shape = images.shapes("quick")[0]
    image, generated = images.cached_image(shape, version, tmp_path)
    assert generated
    again, generated = images.cached_image(shape, version, tmp_path)
    assert not generated and again.dir == image.dir
    meta = image.meta
    assert meta["occurrences"] == shape.occurrences and meta["blobs"] == shape.blob_count

    verify = cli("verify", image.bootstrap, "--blobs-dir", image.blobs_dir)
    assert verify.rc == 0, verify.out + verify.err
    if version == 6:
        check_v6_image(image.bootstrap, image.blobs_dir, None, tmp_path)

    plan = cli("plan", image.bootstrap, "--blobs-dir", image.blobs_dir, "--json", "-o", tmp_path / "plan.yaml",
               *shape.plan_flags())
    assert plan.rc == 0, plan.err
    decisions = [b["decision"] for b in json.loads(plan.out)["blobs"]]
    expected = {"kept": {"keep"}, "unused": {"delete"}, "sparse": {"rebuild", "merge"}, "tiny": {"rebuild", "merge"}}
    assert len(decisions) == len(meta["blob_classes"])
    for cls, decision in zip(meta["blob_classes"], decisions):
        assert decision in expected[cls], (cls, decision)


def test_max_blobs_quick_run_compares_with_the_cheapest_threshold_configuration(tmp_path):
    out = tmp_path / "max_blobs.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "max_blobs.py"), "--quick", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "load average" in proc.stdout and "thresholds (sizes_and_ratio)" in proc.stdout
    doc = json.loads(out.read_text())
    assert [r["limit"] for r in doc["rows"]] == [8, 4]
    for r in doc["rows"]:
        assert r["max_blobs"]["blobs"] <= r["limit"]
        for name in ("sizes", "sizes_and_ratio"):
            t = r[name]
            assert t["blobs"] <= r["limit"] and t["max_blobs_same_cap"]["blobs"] <= r["limit"]
            # No threshold configuration reaching the count rewrites less than the limit at its cap.
            assert t["max_blobs_same_cap"]["bytes_written"] <= t["bytes_written"]


def test_apply_speed_quick_run_reports_every_phase(tmp_path):
    out = tmp_path / "apply.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "apply_speed.py"), "--quick", "--reps", "1", "--load-wait", "0",
         "--version", "6", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x cp+sync" in proc.stdout and "load (1 min)" in proc.stdout
    (row,) = json.loads(out.read_text())["results"]
    assert (row["image"], row["version"], row["blobs"]) == ("merge-quick", 6, 16)
    assert row["new_blob_bytes"] >= 16 << 20  # every source blob merged: all chunk data written again
    for phase in ("apply", "apply-nv", "cp+sync", "sha256", "copy-floor", "start-up"):
        assert row[phase]["seconds"]["median"] > 0 and len(row[phase]["load"]) == 1
    assert row["apply_vs_cp"] == pytest.approx(row["apply"]["seconds"]["median"] / row["cp+sync"]["seconds"]["median"])
