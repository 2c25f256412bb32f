"""Every writer refuses an output that is an input, another output or a special file (issue 13,
items 1, 2, 3 and 8), and writes files with the umask's mode like other tools."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from helpers.compact_env import REBUILD_AND_MERGE, Image, build, cli, compact, file_hashes, plan

from nydus_compact.rafs import v5
from nydus_compact.rafs.loader import load_bootstrap


@pytest.fixture
def image(layers, tmp_path) -> Image:
    im = build(layers, tmp_path / "image", 5)
    plan(im, *REBUILD_AND_MERGE)
    return im


def everything(image: Image) -> dict[str, str]:
    """Every file of the image's tree (bootstraps, plan, state, blobs) by path -> sha256."""
    return file_hashes(image.root) | {f"blobs/{k}": v for k, v in file_hashes(image.blobs).items()}


def refused(r, *words: str) -> None:
    assert r.rc == 1 and r.out == "" and r.err.count("\n") == 1, r
    assert r.err.startswith("compact: error: ") and all(w in r.err for w in words), r.err


def a_blob(image: Image) -> Path:
    return image.blobs / load_bootstrap(image.boot).blobs[0].blob_id


# -- item 1: plan -o / report -o / --state never replace an input ------------------------------


PLAN_CLASHES = {
    "-o the bootstrap": (lambda im: ["-o", im.boot], "is a source bootstrap"),
    "-o a source blob": (lambda im: ["-o", a_blob(im)], "is a source blob"),
    "-o a blob-like name": (lambda im: ["-o", im.blobs / ("ab" * 32)], "is named like a blob"),
    "-o the state": (lambda im: ["-o", im.root / "s.sqlite", "--state", im.root / "s.sqlite"], "is the state store"),
    "--state the bootstrap": (lambda im: ["--state", im.boot], "is a source bootstrap"),
    "-O the bootstrap": (lambda im: ["-O", im.boot], "is a source bootstrap"),
    "-o through a symlinked dir": (lambda im: ["-o", im.root / "link" / a_blob(im).name], "is a source blob"),
    "-o a hard link of the bootstrap": (lambda im: ["-o", im.root / "hard"], "is a source bootstrap"),
    "-o a symlink to a blob": (lambda im: ["-o", im.root / "sym"], "is a source blob"),
}


@pytest.mark.parametrize("case", sorted(PLAN_CLASHES))
def test_plan_refuses_outputs_that_are_inputs(image, case):
    (image.root / "link").symlink_to(image.blobs)
    os.link(image.boot, image.root / "hard")
    (image.root / "sym").symlink_to(a_blob(image))
    args, words = PLAN_CLASHES[case]
    before = everything(image)

    r = cli("plan", image.boot, "--blobs-dir", image.blobs, *args(image))

    refused(r, words)
    assert everything(image) == before


def test_plan_refuses_to_overwrite_a_blob_with_a_name_that_is_not_hex(layers, tmp_path):
    """Blob ids need not be 64-hex (`layerA.blob`): every file of the source backend is protected."""
    im = build(layers, tmp_path / "image", 5)
    bs = load_bootstrap(im.boot)
    names = [f"layer{chr(65 + i)}.blob" for i in range(len(bs.blobs))]
    for info, name in zip(bs.blobs, names):
        (im.blobs / info.blob_id).rename(im.blobs / name)
    im.boot.write_bytes(bytes(v5.dump(replace(bs, blobs=[replace(b, blob_id=n) for b, n in zip(bs.blobs, names)]))))
    before = everything(im)

    r = cli("plan", im.boot, "--blobs-dir", im.blobs, "-o", im.blobs / "layerA.blob")

    refused(r, "layerA.blob: is a source blob")
    assert everything(im) == before
    assert not (im.root / "plan.state.sqlite").exists() and not (im.blobs / "layerA.state.sqlite").exists()


def test_plan_protects_blobs_of_alt_dirs_and_blob_file(image, tmp_path):
    alt = tmp_path / "alt"
    alt.mkdir()
    victim = a_blob(image)
    victim.rename(alt / victim.name)
    cfg = tmp_path / "backend.json"
    cfg.write_text(json.dumps({"version": 2, "backend": {"type": "localfs", "localfs": {"dir": str(image.blobs), "alt_dirs": [str(alt)]}}}))
    before = file_hashes(alt)

    r = cli("plan", image.boot, "--backend-config", cfg, "-o", alt / victim.name)

    refused(r, "is a source blob")
    assert file_hashes(alt) == before
    r = cli("plan", image.boot, "--backend-config", cfg, "-o", cfg)
    refused(r, "is a config file")


REPORT_CLASHES = {
    "the plan": (lambda im: im.plan, "is the plan"),
    "the bootstrap": (lambda im: im.boot, "is the source bootstrap"),
    "a source blob": (lambda im: a_blob(im), "is the source blob"),
    "the state": (lambda im: im.root / "plan.state.sqlite", "is the state store"),
}


@pytest.mark.parametrize("case", sorted(REPORT_CLASHES))
def test_report_refuses_outputs_that_are_inputs(image, case):
    target, words = REPORT_CLASHES[case]
    before = everything(image)

    r = cli("report", image.plan, "-o", target(image))

    refused(r, words)
    assert everything(image) == before


def test_report_from_a_state_refuses_to_overwrite_the_state(image):
    assert cli("apply", image.plan).rc == 0
    state = image.root / "plan.state.sqlite"
    before = state.read_bytes()
    refused(cli("report", "--state", state, "-o", state), "is the state store")
    assert state.read_bytes() == before


# -- item 2: special files are never replaced; - is stdout ----------------------------------------


@pytest.mark.parametrize("command", ["plan -o", "report -o", "apply -J", "apply -O"])
def test_outputs_never_replace_special_files(image, command):
    fifo = image.root / "fifo"
    os.mkfifo(fifo)
    dev = image.root / "devnull"  # a symlink: if the guard failed, only the link would be replaced
    dev.symlink_to("/dev/null")
    name, flag = command.split()
    base = {
        "plan": ["plan", image.boot, "--blobs-dir", image.blobs],
        "report": ["report", image.plan],
        "apply": ["apply", image.plan],
    }[name]
    for target, kind in ((fifo, "a FIFO"), (dev, "a device node"), (image.blobs, "a directory")):
        before = everything(image)
        r = cli(*base, flag, target)
        refused(r, str(target), kind)
        assert everything(image) == before
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and dev.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not image.new_boot.exists()


@pytest.mark.parametrize("command", ["plan", "apply", "report"])
def test_state_on_a_fifo_is_refused_without_hanging(image, command):
    fifo = image.root / "state.fifo"
    os.mkfifo(fifo)
    args = {
        "plan": ["plan", image.boot, "--blobs-dir", image.blobs, "-o", image.root / "p2.yaml"],
        "apply": ["apply", image.plan],
        "report": ["report"],
    }[command]

    r = compact(*args, "--state", fifo, timeout=30)  # a subprocess: a hang fails the test instead of the suite

    refused(r, str(fifo), "not a state database" if command != "plan" else "a FIFO")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_dash_means_stdout_for_text_outputs(image, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("plan", image.boot, "--blobs-dir", image.blobs, "-o", "-", "--state", image.root / "s.sqlite")
    assert r.rc == 0, r.err
    assert r.out.startswith("# nydus-compact plan") and "blobs ->" in r.err
    assert yaml.safe_load(r.out)["format"] == "nydus-compact-plan/1"
    r = cli("report", image.plan, "-o", "-")
    assert r.rc == 0 and r.out.startswith("#"), r.err
    r = cli("apply", image.plan, "-J", "-")
    assert r.rc == 0, r.err
    assert json.loads(r.out)["bootstrap"] == str(image.new_boot) and "applied" in r.err
    assert not (tmp_path / "-").exists()


# -- items 3 and 8: apply's outputs never land on a source blob or the state -----------------------


@pytest.mark.parametrize("flag", ["-O", "--output-json"])
def test_apply_with_another_blobs_dir_still_protects_source_blobs(image, tmp_path, flag):
    kept = a_blob(image)
    before = everything(image)

    r = cli("apply", image.plan, "--blobs-dir", tmp_path / "new", flag, kept)

    refused(r, str(kept), "is the source blob")
    assert everything(image) == before


@pytest.mark.parametrize("field", ["state", "bootstrap", "plan", "blob"])
def test_apply_refuses_a_hand_edited_output_that_is_an_input(image, field):
    state = image.root / "plan.state.sqlite"
    target = {"state": state, "bootstrap": image.boot, "plan": image.plan, "blob": a_blob(image)}[field]
    text, n = re.subn(r"(?m)^    output: .*$", f"    output: {json.dumps(str(target))}", image.plan.read_text())
    assert n == 1
    image.plan.write_text(text)
    before = everything(image)

    r = cli("apply", image.plan)

    refused(r, str(target), "images[].output")
    assert everything(image) == before


# -- file modes follow the umask ------------------------------------------------------------------


def test_every_writer_creates_files_with_the_umask_mode(layers, tmp_path):
    old = os.umask(0o027)
    try:
        im = build(layers, tmp_path / "image", 6)
        plan(im, *REBUILD_AND_MERGE)
        assert cli("apply", im.plan, "-J", im.root / "result.json").rc == 0
        assert cli("report", im.plan, "-o", im.root / "report.md").rc == 0
    finally:
        os.umask(old)
    written = [im.boot, im.plan, im.new_boot, im.root / "result.json", im.root / "report.md"]
    written += [p for p in im.blobs.iterdir() if len(p.name) == 64]
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert set(modes.values()) == {oct(0o640)}, modes
