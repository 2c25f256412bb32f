"""The plan file: render -> load round trips, edits reported by key path, hostile YAML, and a
reviewer's edit that would lose a chunk being rejected the way `compact apply` rejects it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from helpers.plan_scenarios import build_scenarios
from helpers.cli import compact

from nydus_compact.applier.apply import prepare
from nydus_compact.backends.config import BackendConfig
from nydus_compact.backends.localfs import LocalFsBackend
from nydus_compact.planner.config import CompactConfig, merge
from nydus_compact.planner.errors import PlanFileError
from nydus_compact.planner.flags import Flags
from nydus_compact.planner.pipeline import PlanInputs, make_plan
from nydus_compact.planner.plan import Plan
from nydus_compact.planner.planfile import load_plan, plan_from_data, render, write_plan
from nydus_compact.rafs.loader import load_bootstrap
from nydus_compact.store.db import open_store

PARTIAL = {"min_used_ratio": 60, "compact_blob_size": 40 * 1024}



@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("planfile")
    build_scenarios(path)
    return path


def make(root: Path, image: str, name: str, chunk_dict: str | None = None, config: dict | None = None) -> Path:
    """Plan ``root/image`` through the pipeline API and write ``root/name``; returns the plan path."""
    backend_cfg = {"dir": str(root / image / "blobs"), "alt_dirs": [str(root / "dict5/blobs")]}
    inputs = PlanInputs(
        bootstraps=[root / image / "image.boot"],
        chunk_dict=root / chunk_dict if chunk_dict else None,
        backend_config=BackendConfig("localfs", backend_cfg, "test"),
        config=merge(CompactConfig(), config or {}),
        flags=Flags.tool_default(),
    )
    backend = LocalFsBackend(dir=backend_cfg["dir"], alt_dirs=backend_cfg["alt_dirs"])
    with open_store(root / f"{name}.sqlite") as store:
        outcome = make_plan(inputs, backend, store)
    write_plan(outcome.plan, root / name)
    return root / name


@pytest.fixture(scope="module")
def v5_plan(root: Path) -> Path:
    return make(root, "v5", "v5.plan.yaml", config=PARTIAL)


# -- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image, chunk_dict, config",
    [("v5", None, PARTIAL), ("v5", "dict5/image.boot", None), ("v6", None, PARTIAL), ("one", None, None)],
    ids=["v5", "v5-chunk-dict", "v6", "no-changes"],
)
def test_round_trip(root: Path, image: str, chunk_dict: str | None, config: dict | None) -> None:
    path = make(root, image, f"rt-{image}-{bool(chunk_dict)}.yaml", chunk_dict, config)
    text = path.read_text()
    plan, recorded = load_plan(path)
    assert recorded == plan.digest
    assert render(plan, str(path)) == text
    again = root / "again.yaml"
    write_plan(plan, again)
    assert load_plan(again) == (plan, recorded)
    assert isinstance(plan, Plan) and (plan.chunk_dict is not None) == bool(chunk_dict)


def test_edit_changes_the_digest_and_show_says_so(root: Path, v5_plan: Path) -> None:
    plan, recorded = load_plan(v5_plan)
    edited = root / "edited-digest.yaml"
    edited.write_text(edit_blob(v5_plan.read_text(), 2, "decision", '"keep"'))
    plan2, recorded2 = load_plan(edited)
    assert recorded2 == recorded and plan2.digest != recorded
    r = compact("show", edited.name, cwd=root)
    assert r.rc == 0, r.err
    assert "note: the plan was edited after `compact plan` wrote it" in r.out


# -- edits reported by key path ----------------------------------------------------------------


def edit_blob(text: str, index: int, key: str, value: str) -> str:
    """Set ``key`` of blob block ``index`` to the YAML ``value``, touching only that line."""
    lines = text.split("\n")
    start = lines.index(f"  - index: {index}")
    k = next(i for i in range(start, len(lines)) if lines[i].startswith(f"    {key}:"))
    lines[k] = f"    {key}: {value}"
    return "\n".join(lines)


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# case -> (edit of the v5 plan's text, the message after "PATH: "; {line} is the edited line,
# {boot} the image's bootstrap)
EDITS = {
    "wrong-type": (
        lambda t: edit_blob(t, 1, "used_bytes", '"43008"'),
        'blobs[1].used_bytes: expected an integer, got "43008"',
    ),
    "wrong-type-in-union": (
        lambda t: re.sub(r"(?m)^  compact_blob_size: \d+$", "  compact_blob_size: [1]", t, count=1),
        "config.compact_blob_size: expected an integer or a string or null, got [1]",
    ),
    "wrong-type-in-dict": (
        lambda t: replace_once(t, '": 43008\n', '": true\n'),
        "blobs[1].referenced_by.{boot}: expected an integer, got true",
    ),
    "unknown-key": (
        lambda t: replace_once(t, "  blobs_after: 2\n", "  blobs_after: 2\n  blob_after: 2\n"),
        "summary.blob_after: unknown key",
    ),
    "missing-key": (lambda t: replace_once(t, "    read_requests: 2\n", ""), "groups[0].read_requests: missing"),
    "bad-decision": (
        lambda t: edit_blob(t, 1, "decision", '"drop"'),
        "blobs[1].decision: expected one of keep, delete, rebuild, merge, dict-keep, got 'drop'",
    ),
    "unknown-flag": (
        lambda t: replace_once(t, "  v6_key: \"offset\"", "  v6_key: \"offset\"\n  i9_magic: true"),
        "flags.i9_magic: unknown key",
    ),
    "invalid-flag": (
        lambda t: replace_once(t, "  v6_key: \"offset\"", "  v6_key: \"inode\""),
        "flags: v6_key: expected one of offset, digest, got 'inode'",
    ),
    "list-item-type": (
        lambda t: replace_once(t, '  - "new:g0"', "  - [1]"),
        "new_table[1]: expected a string, got [1]",
    ),
    "bad-yaml": (
        lambda t: edit_blob(t, 1, "decision", "keep: x"),
        "not valid YAML (line {line}, column 19): mapping values are not allowed here",
    ),
    "tab": (
        lambda t: edit_blob(t, 1, "decision", '"keep"').replace('    decision: "keep"', '\tdecision: "keep"'),
        "not valid YAML (line {line}, column 1): found character '\\t' that cannot start any token",
    ),
    "wrong-format": (
        lambda t: replace_once(t, 'format: "nydus-compact-plan/1"', 'format: "other/1"'),
        "format: expected 'nydus-compact-plan/1', got 'other/1'",
    ),
    "not-a-mapping": (lambda t: "- 1\n- 2\n", "not a nydus-compact plan (expected a mapping at the top)"),
}


@pytest.mark.parametrize("case", EDITS)
def test_edits_are_reported_with_their_key_path(root: Path, v5_plan: Path, case: str) -> None:
    change, expected = EDITS[case]
    original = v5_plan.read_text().split("\n")
    text = change(v5_plan.read_text())
    line = 1 + next(i for i, (a, b) in enumerate(zip(original, text.split("\n"))) if a != b)
    path = root / f"edit-{case}.yaml"
    path.write_text(text)
    with pytest.raises(PlanFileError) as err:
        load_plan(path)
    assert str(err.value) == f"{path}: {expected.format(line=line, boot=root / 'v5/image.boot')}"


def test_hostile_yaml_fails_fast_with_one_line(root: Path, v5_plan: Path) -> None:
    """An alias bomb (10^9 leaves once expanded) or deep nesting must not hang or crash `show`."""
    text = v5_plan.read_text()
    anchors = "merge_candidates: [&b0 [1,1,1,1,1,1,1,1,1,1], " + ", ".join(
        f"&b{i} [" + ",".join([f"*b{i - 1}"] * 10) + "]" for i in range(1, 9)
    ) + "]\n"  # the real merge_candidates further down replaces this key; the anchors stay
    (root / "bomb.yaml").write_text(anchors + replace_once(text, "config:\n", "config:\n  big: *b8\n"))
    (root / "deep.yaml").write_text("[" * 10000 + "]" * 10000)
    for name, expected in (("bomb.yaml", "line 1, column 20: YAML anchors and aliases (&name, *name) are not allowed"),
                           ("deep.yaml", "collections nested too deeply")):
        r = compact("show", name, cwd=root)
        assert r.rc == 1, r.out
        assert r.err.count("\n") == 1 and expected in r.err, r.err


@pytest.mark.parametrize("command", ["show", "apply", "report"])
def test_plan_with_aliases_is_refused_before_expansion(root: Path, v5_plan: Path, command: str) -> None:
    """Issue 13 item 6: a 1 MB plan whose findings repeat one aliased 300 KB string 3000 times
    expanded to ~2.9 GB in `show` and `apply` (MemoryError, exit 70). Refused up front, exit 1."""
    text = v5_plan.read_text()
    head = "x-big: &s " + json.dumps("A" * 300_000) + "\n"
    body = replace_once(text, "findings: []", "findings: [" + ", ".join(["*s"] * 3000) + "]")
    path = root / f"aliased-{command}.yaml"
    path.write_text(head + body)

    r = compact(command, path, cwd=root)

    assert r.rc == 1, r.err
    assert r.err.count("\n") == 1 and "YAML anchors and aliases" in r.err and str(path.name) in r.err, r.err
    assert "line 1" in r.err


def test_anchors_without_aliases_are_refused_too(root: Path, v5_plan: Path) -> None:
    path = root / "anchored.yaml"
    path.write_text(replace_once(v5_plan.read_text(), "findings: []", "findings: &f []"))
    with pytest.raises(PlanFileError, match="anchors and aliases"):
        load_plan(path)


# -- review: decisions a reviewer edits are re-validated ---------------------------------------


def test_edit_that_loses_a_chunk_is_rejected_naming_blob_and_file(root: Path, v5_plan: Path) -> None:
    raw = yaml.safe_load(v5_plan.read_text())
    kept = raw["blobs"][1]
    assert kept["decision"] == "keep"
    kept["decision"] = "delete"  # blob 1 holds the new /bin/app of layer 1
    plan, _ = plan_from_data(raw, "edited.yaml")
    src = load_bootstrap(plan.images[0].path)
    with pytest.raises(PlanFileError) as err:
        prepare(plan, "edited.yaml", [src])
    message = str(err.value)
    assert message.startswith(f"edited.yaml: rejected: blob {kept['blob_id']} would be gone, but /bin/app needs")


def test_edit_that_keeps_more_is_accepted(root: Path, v5_plan: Path) -> None:
    raw = yaml.safe_load(v5_plan.read_text())
    raw["blobs"][2]["decision"] = "keep"  # keeping an unreferenced blob loses nothing
    plan, _ = plan_from_data(raw, "edited.yaml")
    result = prepare(plan, "edited.yaml", [load_bootstrap(plan.images[0].path)]).layout
    assert [e.blob_id for e in result.table] == [raw["blobs"][1]["blob_id"], raw["blobs"][2]["blob_id"], None]


def test_apply_refuses_an_edit_that_loses_a_chunk(root: Path, v5_plan: Path) -> None:
    edited = root / "lossy.yaml"
    edited.write_text(edit_blob(v5_plan.read_text(), 1, "decision", '"delete"'))
    blob_id = load_plan(v5_plan)[0].blobs[1].blob_id
    blobs_before = sorted(os.listdir(root / "v5/blobs"))
    r = compact("apply", edited.name, "-O", "out.boot", cwd=root)
    assert r.rc == 1, r.out + r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert f"rejected: blob {blob_id} would be gone, but /bin/app needs" in r.err
    assert not (root / "out.boot").exists()
    assert sorted(os.listdir(root / "v5/blobs")) == blobs_before
