"""The rough edges a new user hits (issue 13, "Everyday use"): words, streams, exit codes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers.compact_env import MERGE_ALL, REBUILD_AND_MERGE, build, cli, plan

from nydus_compact.walkthrough.demo import run_demo


@pytest.fixture(scope="module")
def applied(layers, tmp_path_factory):
    """The v6 sample planned with REBUILD_AND_MERGE and applied; (image, apply JSON)."""
    image = build(layers, tmp_path_factory.mktemp("applied") / "image", 6)
    plan(image, *REBUILD_AND_MERGE)
    out = image.root / "result.json"
    r = cli("apply", image.plan, "-J", out)
    assert r.rc == 0, r.err
    return image, json.loads(out.read_text())


def test_one_new_blob_is_singular(layers, tmp_path):
    image = build(layers, tmp_path / "image", 6)
    planned = plan(image, *MERGE_ALL)
    r = cli("apply", image.plan, "--verify")
    assert r.rc == 0, r.err
    assert r.err.startswith("applied: 1 new blob, 0 kept, 5 deletable; ") and ": OK: 1 blob, " in r.err, r.err
    shown = cli("show", image.plan).out
    text = planned.err + r.err + shown
    assert "1 new blobs" not in text and "1 blobs" not in text and "(s)" not in text


def test_status_lines_go_to_stderr_data_to_stdout(layers, tmp_path):
    image = build(layers, tmp_path / "image", 6)
    r = plan(image, *REBUILD_AND_MERGE)
    assert r.out == "" and f"plan written to {image.plan}" in r.err
    as_json = cli("plan", image.boot, "--blobs-dir", image.blobs, "-o", tmp_path / "j.yaml", "--json")
    assert as_json.rc == 0 and json.loads(as_json.out)["format"] == "nydus-compact-plan/1"
    applied = cli("apply", image.plan, "--verify")
    assert applied.rc == 0 and applied.out == "" and applied.err.startswith("applied: "), applied.out + applied.err
    report = cli("report", image.plan, "-o", tmp_path / "r.md")
    assert report.rc == 0 and report.out == "" and "report written" in report.err
    to_stdout = cli("report", image.plan)
    assert to_stdout.rc == 0 and to_stdout.out.startswith("# nydus-compact report") and to_stdout.err == ""


BAD_VALUES = [
    ("plan", "--compact-blob-size", "abc"),
    ("plan", "--max-compact-size", "-5"),
    ("plan", "--min-used-ratio", "300"),
    ("plan", "--min-used-ratio", "abc"),
    ("plan", "--layers-to-compact", "-3"),
    ("plan", "--v6-key", "foo"),
    ("plan", "--chunk-dict", "foo=bar"),
    ("plan", "--backend-type", "localfs"),  # without --backend-config
    ("report", "--format", "pdf"),
    ("report", "--run", "0"),
    ("explain", "--top", "0"),
    ("mkimage", "--chunk-size", "3"),
    ("mkimage", "--fs-version", "7"),
    ("mkimage", "--compressor", "foo"),
    ("mkimage", "--digester", "foo"),
    ("apply", "--jobs", "0"),
    ("verify", "--max-problems", "0"),
]


@pytest.mark.parametrize(("command", "option", "value"), BAD_VALUES, ids=[f"{c}{o}={v}" for c, o, v in BAD_VALUES])
def test_bad_option_values_are_usage_errors(applied, tmp_path, command, option, value):
    image, _ = applied
    head = {
        "plan": ["plan", image.boot, "--blobs-dir", image.blobs, "-o", tmp_path / "p.yaml"],
        "report": ["report", image.plan],
        "explain": ["explain", "g0", "--plan", image.plan],
        "mkimage": ["mkimage", "--sample", "-o", tmp_path / "out"],
        "apply": ["apply", image.plan],
        "verify": ["verify", image.new_boot, "--blobs-dir", image.blobs],
    }[command]
    if (command, option) == ("plan", "--backend-type"):
        head = ["plan", image.boot, "-o", tmp_path / "p.yaml"]
    r = cli(*head, option, value)
    assert r.rc == 64, r.err
    assert r.out == "" and r.err.count("\n") == 1 and f"compact {command}: error: " in r.err, r.err
    assert not (tmp_path / "p.yaml").exists() and not (tmp_path / "out").exists()


def test_unknown_config_keys_are_named_in_a_warning(applied, tmp_path):
    image, _ = applied
    config = tmp_path / "compact.json"
    config.write_text('{"version": 2, "min_used_ratio": 50, "min_used_ration": 9, "compact_blob_sise": 1}')
    r = cli("plan", image.boot, "--blobs-dir", image.blobs, "-o", tmp_path / "p.yaml", "--config", config)
    assert r.rc == 0, r.err
    warnings = [line for line in r.err.splitlines() if line.startswith("compact: warning: ")]
    assert len(warnings) == 2, r.err  # "version" is the v2 form's marker, expected there
    assert "'min_used_ration'" in warnings[0] and "'compact_blob_sise'" in warnings[1] and str(config) in warnings[0]


def test_inspect_takes_dash_d_like_the_other_commands(applied):
    image, _ = applied
    r = cli("inspect", image.boot, "-D", image.blobs, "--verify")
    assert r.rc == 0, r.err
    assert r.out.splitlines()[-1].startswith("verify: OK")


def test_apply_of_a_bootstrap_says_it_is_not_a_plan(applied):
    image, _ = applied
    r = cli("apply", image.boot)
    assert r.rc == 1 and r.err.startswith(f"compact: error: {image.boot}: not a plan"), r.err
    assert "UTF-8" not in r.err


def test_explain_a_new_blob_names_its_sources(applied):
    image, doc = applied
    for new in doc["new_blobs"]:
        for query in (new["blob_id"], new["blob_id"][:12], new["group"]):
            r = cli("explain", query, "--plan", image.plan)
            assert r.rc == 0, r.err
            lines = r.out.splitlines()
            assert lines[0] == f"blob {new['blob_id']}"
            assert f"new blob    {new['group']}, made by the plan" in r.out
            assert "written by apply run 1" in r.out
            made = lines.index(next(line for line in lines if line.startswith("made from the used chunks of")))
            plan_doc = json.loads(cli("show", image.plan, "--json").out)
            group = next(g for g in plan_doc["groups"] if g["name"] == new["group"])
            sources = [plan_doc["blobs"][m]["blob_id"] for m in group["members"]]
            assert [line.split()[1] for line in lines[made + 1 : made + 1 + len(sources)]] == sources


def test_demo_force_starts_over(tmp_path):
    first = run_demo(tmp_path / "demo")
    assert first.applied.status == "applied"
    again = run_demo(tmp_path / "demo", force=True)
    assert again.applied.status == "applied", again.applied.message
    with sqlite3.connect(tmp_path / "demo" / "plan.state.sqlite") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1


# -- a hand-edited plan is shown, reported and explained as apply carries it out -------------------


def _keep_the_merged_blobs(plan_path: Path) -> list[int]:
    """A reviewer turns the merge of the two tiny blobs into keeps and removes their group, but
    leaves their reasons as they were (MERGE_TARGET / MERGED_INTO). Returns their indexes."""
    import yaml

    data = yaml.safe_load(plan_path.read_text())
    (merge,) = [g for g in data["groups"] if len(g["members"]) > 1]
    data["groups"].remove(merge)
    for i in merge["members"]:
        data["blobs"][i].update(decision="keep", group=None)
    plan_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return merge["members"]


def test_edited_plan_is_shown_reported_and_explained_as_apply_sees_it(layers, tmp_path):
    image = build(layers, tmp_path / "image", 6)
    plan(image, *REBUILD_AND_MERGE)
    before = json.loads(cli("show", image.plan, "--json").out)
    kept = _keep_the_merged_blobs(image.plan)
    kept_ids = [before["blobs"][i]["blob_id"] for i in kept]

    show_json = cli("show", image.plan, "--json")
    show = cli("show", image.plan)
    report = cli("report", image.plan)
    explained = cli("explain", kept_ids[1], "--plan", image.plan)
    assert show_json.rc == show.rc == report.rc == explained.rc == 0, show.err + report.err + explained.err

    out = tmp_path / "result.json"
    applied = cli("apply", image.plan, "-J", out)
    assert applied.rc == 0, applied.err
    doc = json.loads(out.read_text())

    shown = json.loads(show_json.out)
    assert shown["plan_digest"] == doc["plan_digest"]  # the file's digest, as apply records it
    assert sorted(shown["deletable"]) == sorted(doc["deletable_blobs"])
    assert not set(kept_ids) & set(shown["deletable"])
    assert shown["summary"]["blobs_after"] == len(doc["blobs"]) and shown["summary"]["new_blobs"] == len(doc["new_blobs"])
    assert [g["name"] for g in shown["groups"]] == [b["group"] for b in doc["new_blobs"]]
    assert [b for b in shown["new_table"] if not b.startswith("new:")] == doc["kept_blobs"]

    s = shown["summary"]
    assert f"5 blobs -> {s['blobs_after']} ({s['new_blobs']} new)" in show.out
    assert f"5 blobs -> {before['summary']['blobs_after']} ({before['summary']['new_blobs']} new)" not in show.out
    assert "numbers below are recomputed from its decisions" in show.out
    deletable_line = next(line for line in show.out.splitlines() if line.startswith("deletable after apply"))
    assert not any(i[:12] in deletable_line for i in kept_ids)

    assert "merged into new blob None" not in report.out and "None" not in report.out
    deletable_section = report.out.split("### Deletable blobs")[1].split("###")[0]
    assert not any(i in deletable_section for i in kept_ids)
    assert "set by a reviewer" in report.out

    assert "stays in the blob table" in explained.out and "deletable" not in explained.out.split("after apply")[1]
