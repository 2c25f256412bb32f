"""`compact plan --max-blobs N` end to end: builder-made v5 and v6 images, plan, apply, verify,
fsck.erofs for v6; usage errors; the config key; what a plan says when N cannot be reached."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers.cli import cli
from helpers.erofs import check_v6_image
from helpers.plan_scenarios import V5, V6, write_layer
from test_apply import assert_same_files, serve_only_table
from test_mkimage import apply_layers

from nydus_compact.mkimage.builder import build_image
from nydus_compact.planner.planfile import load_plan
from nydus_compact.rafs.loader import load_bootstrap

# One file per layer; layer i's file is SIZES[i] bytes of random data (stored uncompressed in v5,
# lz4 in v6, where random data does not shrink). With limit 4 the 7 cheapest of 10 fold.
SIZES = [9000, 700, 5000, 300, 12000, 300, 2500, 8000, 1500, 6000]
CHEAPEST_7 = [1, 2, 3, 5, 6, 8, 9]  # 700, 5000, 300, 300, 2500, 1500, 6000


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("max-blobs-layers")
    return [
        write_layer(root / f"l{i}", {f"d{i}/f": random.Random(i).randbytes(size)}) for i, size in enumerate(SIZES)
    ]


def build(layers: list[Path], root: Path, version: int) -> Path:
    build_image(layers, root, V5 if version == 5 else V6)
    return root


@pytest.mark.parametrize("version", [5, 6])
def test_plan_apply_verify_under_the_limit(layers: list[Path], tmp_path: Path, version: int) -> None:
    root = build(layers, tmp_path / "image", version)
    boot, blobs, plan_path = root / "image.boot", root / "blobs", tmp_path / "plan.yaml"
    r = cli("plan", boot, "--blobs-dir", blobs, "--compact-blob-size", "0", "--max-blobs", "4", "-o", plan_path,
            "--detailed-exitcode")  # fmt: skip
    assert r.rc == 2, r.err
    assert "max-blobs 4: 10 blobs after the size rules -> 4" in r.err  # plan's status lines are on stderr
    assert "merged to bring the image under 4 blobs; this was the cheapest choice" in r.err  # plan's status lines are on stderr
    plan = load_plan(plan_path)[0]
    assert [b.index for b in plan.blobs if b.reason == "MERGE_FOR_COUNT"] == CHEAPEST_7
    m = plan.max_blobs
    assert (m.limit, m.reached, m.exact, m.blobs_before, m.blobs_after) == (4, True, True, [10], [4])
    assert m.extra_bytes == sum(plan.blobs[i].used_bytes for i in CHEAPEST_7)
    assert plan.config["max_blobs"] == 4
    assert len(plan.new_table) == 4
    sentence = "merged to bring the image under 4 blobs; this was the cheapest choice"
    assert sentence in plan_path.read_text()  # the comment above each folded blob
    show = cli("show", plan_path)
    assert sentence in show.out and "MERGE_FOR_COUNT -> g0" in show.out
    explain = cli("explain", plan.blobs[CHEAPEST_7[0]].blob_id, "--plan", plan_path)
    assert explain.rc == 0 and "decision    merge (MERGE_FOR_COUNT) -> g0" in explain.out and sentence in explain.out
    report = cli("report", plan_path, "-o", tmp_path / "report.md")
    assert report.rc == 0 and sentence in (tmp_path / "report.md").read_text()

    a = cli("apply", plan_path, "--verify")
    assert a.rc == 0, a.err
    new_boot = root / "image.boot.compact"
    old, new = load_bootstrap(boot), load_bootstrap(new_boot)
    assert len(new.blobs) == 4
    served = serve_only_table(new, blobs, tmp_path / "served")
    assert_same_files(old, blobs, new, served)
    v = cli("verify", new_boot, "--blobs-dir", served)
    assert v.rc == 0 and ": OK: " in v.out, v.out + v.err
    if version == 6:
        check_v6_image(new_boot, served, apply_layers(layers, tmp_path / "merged"), tmp_path / "fsck")


@pytest.mark.parametrize("version", [5, 6])
def test_a_limit_already_met_plans_what_r_plans(layers: list[Path], tmp_path: Path, version: int) -> None:
    root = build(layers, tmp_path / "image", version)
    args = ("plan", root / "image.boot", "--blobs-dir", root / "blobs", "--compact-blob-size", "1000")
    cli(*args, "-o", tmp_path / "r.yaml")
    r = cli(*args, "--max-blobs", "10", "-o", tmp_path / "limited.yaml")
    assert r.rc == 0, r.err
    assert "already met" in r.err  # plan's status lines are on stderr
    plain, limited = load_plan(tmp_path / "r.yaml")[0], load_plan(tmp_path / "limited.yaml")[0]
    assert [(b.decision, b.reason, b.group) for b in limited.blobs] == [(b.decision, b.reason, b.group) for b in plain.blobs]
    assert limited.new_table == plain.new_table
    assert limited.max_blobs.extra_bytes == 0


def test_no_grouping_reaches_the_limit_a_finding_says_so(layers: list[Path], tmp_path: Path) -> None:
    root = build(layers, tmp_path / "image", 5)
    plan_path = tmp_path / "plan.yaml"
    # A 2 KiB cap: only the four blobs of 300, 300, 700 and 1500 bytes can share new blobs.
    r = cli("plan", root / "image.boot", "--blobs-dir", root / "blobs", "--compact-blob-size", "0",
            "--max-compact-size", "2KiB", "--max-blobs", "3", "-o", plan_path, "--detailed-exitcode")  # fmt: skip
    assert r.rc == 2, r.err
    plan = load_plan(plan_path)[0]
    assert (plan.max_blobs.reached, plan.max_blobs.blobs_after) == (False, [8])
    assert any("no grouping of compatible blobs within max_compact_size brings" in f and "reaches 8" in f for f in plan.findings)
    assert "no grouping reaches 3; this is the nearest count" in r.err  # plan's status lines are on stderr
    show = cli("show", plan_path)
    assert "finding: max_blobs 3: no grouping" in show.out


def test_config_file_key_and_json_output(layers: list[Path], tmp_path: Path) -> None:
    root = build(layers, tmp_path / "image", 5)
    config = tmp_path / "compact.json"
    config.write_text(json.dumps({"version": 2, "compact_blob_size": 0, "max_blobs": 9}))
    r = cli("plan", root / "image.boot", "--blobs-dir", root / "blobs", "-C", config, "-o", tmp_path / "p.yaml", "--json")
    assert r.rc == 0, r.err
    doc = json.loads(r.out)
    assert doc["config"]["max_blobs"] == 9
    assert doc["max_blobs"]["blobs_after"] == [9]
    assert [b["index"] for b in doc["blobs"] if b["reason"] == "MERGE_FOR_COUNT"] == [3, 5]  # 300 + 300, lower index first


def test_plans_without_the_limit_carry_no_trace_of_it(layers: list[Path], tmp_path: Path) -> None:
    root = build(layers, tmp_path / "image", 5)
    r = cli("plan", root / "image.boot", "--blobs-dir", root / "blobs", "-o", tmp_path / "p.yaml", "--json")
    doc = json.loads(r.out)
    assert "max_blobs" not in doc and "max_blobs" not in doc["config"]
    assert "max_blobs" not in (tmp_path / "p.yaml").read_text()


@pytest.mark.parametrize(
    ("version", "extra", "message"),
    [
        (6, ("--max-blobs", "256"), "--max-blobs 256: a RAFS v6 blob table holds at most 255 blobs"),
        (5, ("--max-blobs", "257"), "--max-blobs 257: a RAFS v5 blob table holds at most 256 blobs"),
        (5, ("--max-blobs", "3", "--upstream-oracle"), "cannot be combined with --upstream-oracle"),
        (5, ("--max-blobs", "0"), "Invalid value for '--max-blobs'"),
    ],
)
def test_usage_errors_exit_64(layers, tmp_path: Path, version: int, extra: tuple[str, ...], message: str) -> None:
    root = build(layers, tmp_path / "image", version)
    plan_path = tmp_path / "plan.yaml"
    r = cli("plan", root / "image.boot", "--blobs-dir", root / "blobs", "-o", plan_path, *extra)
    assert r.rc == 64, r.out + r.err
    assert message in r.err and r.err.count("\n") == 1
    assert not plan_path.exists() and not (tmp_path / "plan.state.sqlite").exists()


def test_config_file_limit_with_upstream_oracle_is_a_usage_error(layers, tmp_path: Path) -> None:
    root = build(layers, tmp_path / "image", 5)
    config = tmp_path / "compact.json"
    config.write_text(json.dumps({"max_blobs": 3}))
    r = cli("plan", root / "image.boot", "--blobs-dir", root / "blobs", "-C", config, "--upstream-oracle", "-o", tmp_path / "p.yaml")
    assert r.rc == 64 and "--upstream-oracle" in r.err


def test_v5_accepts_256(layers, tmp_path: Path) -> None:
    root = build(layers, tmp_path / "image", 5)
    r = cli("plan", root / "image.boot", "--blobs-dir", root / "blobs", "--max-blobs", "256", "-o", tmp_path / "p.yaml")
    assert r.rc == 0, r.err


@pytest.mark.parametrize("version", [5, 6])
def test_fleet_every_image_within_the_limit_folding_shared_blobs_once(layers, tmp_path: Path, version: int) -> None:
    # Image a = layers 0 1 3 5, image b = layers 3 5 4 7 (the builder is deterministic: layers 3
    # and 5, 300 bytes each, are one blob in the shared store). Limit 3: folding the two shared
    # blobs brings both images from 4 to 3 blobs for 600 bytes.
    store = tmp_path / "blobs"
    store.mkdir()
    boots = []
    for name, picks in (("a", [0, 1, 3, 5]), ("b", [3, 5, 4, 7])):
        built = build_image([layers[i] for i in picks], tmp_path / name, V5 if version == 5 else V6)
        for blob in built.blob_paths:
            (store / blob.name).write_bytes(blob.read_bytes())
        boots.append(tmp_path / name / "image.boot")
    plan_path = tmp_path / "fleet.yaml"
    r = cli("plan", *boots, "--blobs-dir", store, "--compact-blob-size", "0", "--max-blobs", "3", "-o", plan_path)
    assert r.rc == 0, r.err
    plan = load_plan(plan_path)[0]
    assert (plan.max_blobs.blobs_before, plan.max_blobs.blobs_after, plan.max_blobs.exact) == ([4, 4], [3, 3], True)
    shared = [b for b in plan.blobs if len(b.referenced_by) == 2]
    assert sorted(b.index for b in plan.blobs if b.reason == "MERGE_FOR_COUNT") == sorted(b.index for b in shared)
    assert plan.max_blobs.extra_bytes == sum(b.used_bytes for b in shared)

    a = cli("apply", plan_path, "--verify")
    assert a.rc == 0, a.err
    for boot, picks in zip(boots, ([0, 1, 3, 5], [3, 5, 4, 7])):
        new_boot = boot.with_name("image.boot.compact")
        new = load_bootstrap(new_boot)
        assert len(new.blobs) == 3
        v = cli("verify", new_boot, "--blobs-dir", store)
        assert v.rc == 0 and ": OK: " in v.out, v.out + v.err
        if version == 6:
            served = serve_only_table(new, store, tmp_path / f"served-{boot.parent.name}")
            merged = apply_layers([layers[i] for i in picks], tmp_path / f"merged-{boot.parent.name}")
            check_v6_image(new_boot, served, merged, tmp_path / f"fsck-{boot.parent.name}")
