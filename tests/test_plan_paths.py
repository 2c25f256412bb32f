"""Paths in a plan are stored relative to the plan file (or absolute) and resolved from there, so
`compact apply dir/plan.yaml` works from any directory (issue 13, everyday use)."""

from __future__ import annotations

import shutil

import yaml
from helpers.compact_env import REBUILD_AND_MERGE, build, cli


def test_plan_made_in_one_directory_applies_from_another(layers, tmp_path, monkeypatch):
    im = build(layers, tmp_path / "work" / "image", 6)
    monkeypatch.chdir(tmp_path / "work")
    r = cli("plan", "image/image.boot", "--blobs-dir", "image/blobs", "-o", "image/plan.yaml", *REBUILD_AND_MERGE)
    assert r.rc == 0, r.err
    raw = yaml.safe_load(im.plan.read_text())
    assert raw["images"][0]["path"] == "image.boot" and raw["images"][0]["output"] == "image.boot.compact"
    assert raw["backend"]["dir"] == "blobs"

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    r = cli("apply", "../work/image/plan.yaml")

    assert r.rc == 0, r.err
    assert im.new_boot.is_file() and not (tmp_path / "elsewhere" / "image.boot.compact").exists()
    assert cli("verify", im.new_boot, "--blobs-dir", im.blobs).rc == 0
    assert cli("show", "../work/image/plan.yaml").rc == 0
    assert cli("report", "../work/image/plan.yaml").rc == 0


def test_a_plan_moved_with_its_inputs_still_applies(layers, tmp_path, monkeypatch):
    im = build(layers, tmp_path / "a" / "image", 5)
    r = cli("plan", im.boot, "--blobs-dir", im.blobs, "-o", im.plan, *REBUILD_AND_MERGE)
    assert r.rc == 0, r.err
    shutil.move(tmp_path / "a", tmp_path / "b")
    monkeypatch.chdir(tmp_path)

    r = cli("apply", "b/image/plan.yaml")

    assert r.rc == 0, r.err
    assert (tmp_path / "b/image/image.boot.compact").is_file()


def test_paths_outside_the_plan_directory_are_stored_absolute(layers, tmp_path, monkeypatch):
    im = build(layers, tmp_path / "image", 5)
    (tmp_path / "plans").mkdir()
    monkeypatch.chdir(tmp_path)
    r = cli("plan", "image/image.boot", "--blobs-dir", "image/blobs", "-o", "plans/plan.yaml", *REBUILD_AND_MERGE)
    assert r.rc == 0, r.err
    raw = yaml.safe_load((tmp_path / "plans/plan.yaml").read_text())
    assert raw["images"][0]["path"] == str(im.boot) and raw["backend"]["dir"] == str(im.blobs)
    monkeypatch.chdir(tmp_path / "plans")
    assert cli("apply", "plan.yaml").rc == 0
    assert im.new_boot.is_file()
