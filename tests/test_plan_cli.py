"""`compact plan` and `compact show` end to end, as a user runs them (subprocess, relative paths).

Every CLI run has its working directory in a tmp dir and names files relative to it, so a plan
that picked up an absolute path, a time or any other per-run value would break the snapshots
(tests/__snapshots__/test_plan_cli.ambr; `pytest --snapshot-update` rewrites them after a
deliberate change to the plan format).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FIXTURES
from helpers.plan_scenarios import build_scenarios
from helpers.cli import compact

from nydus_compact.planner.planfile import load_plan
from nydus_compact.store.db import open_store
from nydus_compact.store.index import find_image

REPO = Path(__file__).resolve().parents[1]
PLANS = REPO / "plans"
E6_BOOT = "tests/fixtures/nydus/sha256-nocompress-repeatable"
E6_BLOB = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"

# Layer 0 falls below 60 % and is small enough to merge; layer 1 is kept (too big to merge).
PARTIAL = ("--min-used-ratio", "60", "--compact-blob-size", "40KiB")
DICT_BACKEND = {
    "version": 2,
    "backend": {"type": "localfs", "localfs": {"dir": "v5/blobs", "alt_dirs": ["dict5/blobs"]}},
}
# scenario -> (exit status with --detailed-exitcode, plan arguments)
SCENARIOS: dict[str, tuple[int, tuple[str, ...]]] = {
    "v5": (2, ("v5/image.boot", "--blobs-dir", "v5/blobs", *PARTIAL)),
    "v6": (2, ("v6/image.boot", "--blobs-dir", "v6/blobs", *PARTIAL)),
    "v5-chunk-dict": (
        2,
        ("v5/image.boot", "--backend-config", "dict-backend.json", "--chunk-dict", "bootstrap=dict5/image.boot"),
    ),
    "tiny-layers": (2, ("tiny/image.boot", "--blobs-dir", "tiny/blobs")),
    "no-changes": (0, ("one/image.boot", "--blobs-dir", "one/blobs")),
    # R rebuilds the five blobs under 10 %; the limit folds them (free) and the three cheapest kept blobs.
    "tiny-max-blobs": (
        2,
        ("tiny/image.boot", "--blobs-dir", "tiny/blobs", "--min-used-ratio", "10", "--compact-blob-size", "0",
         "--max-blobs", "5"),
    ),
}



@dataclass
class Planned:
    rc: int
    out: str
    err: str
    text: str  # the plan file
    show: str  # `compact show` of it


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan-cli")
    build_scenarios(root)
    (root / "dict-backend.json").write_text(json.dumps(DICT_BACKEND))
    return root


@pytest.fixture(scope="module")
def planned(work: Path) -> dict[str, Planned]:
    out = {}
    for name, (_, args) in SCENARIOS.items():
        r = compact("plan", *args, "-o", f"{name}.plan.yaml", "--detailed-exitcode", cwd=work)
        assert r.rc in (0, 2), r.err
        show = compact("show", f"{name}.plan.yaml", cwd=work)
        assert show.rc == 0, show.err
        out[name] = Planned(r.rc, r.out, r.err, (work / f"{name}.plan.yaml").read_text(), show.out)
    return out


def plan_of(work: Path, name: str):
    return load_plan(work / f"{name}.plan.yaml")[0]


# -- snapshots and what they must show ---------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_plan_and_show_snapshots(planned: dict[str, Planned], name: str, snapshot) -> None:
    p = planned[name]
    assert p.rc == SCENARIOS[name][0], p.out + p.err
    assert p.out == "" and p.err.endswith(f"plan written to {name}.plan.yaml\n"), p.err  # status on stderr
    assert p.text == snapshot(name="plan")
    assert p.show == snapshot(name="show")


@pytest.mark.parametrize("name", ["v5", "v6"])
def test_whiteout_leaves_its_layer_blob_unreferenced(work: Path, planned: dict[str, Planned], name: str) -> None:
    plan = plan_of(work, name)
    scratch = plan.blobs[2]  # the layer whose only file, /tmp/scratch, layer 3 whites out
    assert (scratch.decision, scratch.reason, scratch.referenced_by) == ("delete", "UNREFERENCED", {})
    assert scratch.blob_id in plan.deletable
    assert f"# [2] {scratch.blob_id[:12]}: delete: no file references it" in planned[name].text
    assert [b.decision for b in plan.blobs] == ["merge", "keep", "delete", "merge"]
    assert plan.new_table == [plan.blobs[1].blob_id, "new:g0"]
    assert plan.images[0].rafs_version == int(name[1])


def test_chunk_dict_blob_is_kept_and_redirected_blob_deleted(work: Path, planned: dict[str, Planned]) -> None:
    plan = plan_of(work, "v5-chunk-dict")
    dict_blob = plan.blobs[-1]
    assert (dict_blob.origin, dict_blob.decision, dict_blob.reason) == ("chunk-dict", "dict-keep", "DICT_KEEP")
    # Every chunk the image still uses from layer 0 is in the dict: the source points into the
    # blob, yet the new image does not need it.
    base = plan.blobs[0]
    assert (base.decision, base.reason) == ("delete", "UNREFERENCED")
    assert base.referenced_by == {"v5/image.boot": (24 + 9) * 1024}
    assert "delete: every chunk files use from it is served by another blob" in planned["v5-chunk-dict"].text
    assert plan.findings == []  # the dict blob was found through the backend's alt_dirs
    assert plan.chunk_dict is not None and plan.chunk_dict.path == "dict5/image.boot"
    assert plan.chunk_dict.sha256 == hashlib.sha256((work / "dict5/image.boot").read_bytes()).hexdigest()
    assert plan.new_table[-1] == dict_blob.blob_id


def test_many_tiny_layers_merge_into_one_blob(work: Path) -> None:
    plan = plan_of(work, "tiny-layers")
    (group,) = plan.groups
    assert group.members == list(range(12))
    assert plan.new_table == ["new:g0"]
    assert plan.summary.blobs_before == 12 and plan.summary.blobs_after == 1
    assert sorted(plan.deletable) == sorted(b.blob_id for b in plan.blobs)


def test_no_changes_is_reported_as_such(work: Path, planned: dict[str, Planned]) -> None:
    plan = plan_of(work, "no-changes")
    assert not plan.summary.changes
    assert plan.groups == [] and plan.deletable == []
    assert planned["no-changes"].err.startswith("No changes: the compacted image would equal the source.\n")


# -- determinism -------------------------------------------------------------------------------


def test_same_inputs_give_byte_identical_plans(work: Path, planned: dict[str, Planned], tmp_path: Path) -> None:
    """Re-planning with the state reused, and with a fresh one, in a copy of the inputs elsewhere."""
    name = "v5-chunk-dict"
    copy = tmp_path / "elsewhere"
    shutil.copytree(work, copy)
    args = (*SCENARIOS[name][1], "-o", f"{name}.plan.yaml")
    for state in ([], ["--state", "fresh.sqlite"]):
        r = compact("plan", *args, *state, cwd=copy)
        assert r.rc == 0, r.err  # changes, but no --detailed-exitcode
        assert (copy / f"{name}.plan.yaml").read_text() == planned[name].text
    assert (copy / "fresh.sqlite").is_file()


# -- config, flags, --json, --state ------------------------------------------------------------


def test_config_file_forms_flags_and_sizes(work: Path) -> None:
    values = {"min_used_ratio": 60, "compact_blob_size": 40960, "max_compact_size": 1 << 20,
              "layers_to_compact": 2, "blobs_dir": "v5/blobs"}
    (work / "cfg-v2.json").write_text(json.dumps({"version": 2, **values}))  # the 2.2.0 workaround form
    (work / "cfg-plain.json").write_text(json.dumps(values))

    def plan_json(*args: str) -> dict:
        r = compact("plan", "v5/image.boot", "-o", "cfg.plan.yaml", "--json", *args, cwd=work)
        assert r.rc == 0, r.err
        return json.loads(r.out)

    v2 = plan_json("-C", "cfg-v2.json")  # the blobs come from the config's blobs_dir
    assert v2["config"] == values
    assert v2["backend"]["dir"] == "v5/blobs"
    assert plan_json("--config", "cfg-plain.json", "--blobs-dir", "v5/blobs")["plan_digest"] == v2["plan_digest"]

    flags = plan_json(
        "-C", "cfg-v2.json", "--min-used-ratio", "10", "--compact-blob-size", "10MiB",
        "--max-compact-size", "100MB", "--layers-to-compact", "0",
    )
    assert flags["config"] == {"min_used_ratio": 10, "compact_blob_size": 10 << 20, "max_compact_size": 100_000_000,
                               "layers_to_compact": 0, "blobs_dir": "v5/blobs"}
    assert plan_json("-C", "cfg-v2.json", "--compact-blob-size", "4096")["config"]["compact_blob_size"] == 4096


def test_json_output_carries_the_plan_digest(work: Path) -> None:
    r = compact("plan", *SCENARIOS["v5"][1], "-o", "json.plan.yaml", "--json", cwd=work)
    assert r.rc == 0, r.err
    doc = json.loads(r.out)
    plan, recorded = load_plan(work / "json.plan.yaml")
    assert doc["plan_digest"] == recorded == plan.digest
    assert doc == {**plan.body(), "plan_digest": plan.digest}
    show = compact("show", "json.plan.yaml", "--json", cwd=work)
    assert show.rc == 0, show.err
    assert json.loads(show.out) == doc


def test_state_defaults_next_to_the_plan_and_index_is_reused(work: Path) -> None:
    (work / "st").mkdir()
    args = SCENARIOS["v5"][1]
    assert compact("plan", *args, "-o", "st/p.yaml", cwd=work).rc == 0
    state = work / "st/p.state.sqlite"
    assert state.is_file()
    r = compact("plan", *args, "-o", "st/q.yaml", "--state", "st/p.state.sqlite", cwd=work)
    assert r.rc == 0, r.err
    assert not (work / "st/q.state.sqlite").exists()
    sha = hashlib.sha256((work / "v5/image.boot").read_bytes()).hexdigest()
    with open_store(state, create=False) as store:
        assert store.fetchall('SELECT count(*) FROM "images"') == [(1,)]
        assert find_image(store, sha) is not None


# -- errors ------------------------------------------------------------------------------------

def _copy_v5(work: Path, name: str) -> tuple[str, list[str]]:
    """A private copy of the v5 image; returns its directory and its blob ids in table order."""
    shutil.copytree(work / "v5", work / name)
    ids = [b.blob_id for b in plan_of(work, "v5").blobs]
    return name, ids


def _truncated(work: Path) -> tuple[list[str], str]:
    data = (work / "v5/image.boot").read_bytes()
    (work / "truncated.boot").write_bytes(data[: len(data) // 2])
    return ["truncated.boot", "--blobs-dir", "v5/blobs"], "truncated.boot: "


def _merged_blob_missing(work: Path) -> tuple[list[str], str]:
    d, ids = _copy_v5(work, "missing-merged")
    (work / d / "blobs" / ids[0]).unlink()
    return [f"{d}/image.boot", "--blobs-dir", f"{d}/blobs", *PARTIAL], f"blob {ids[0]} not found"


def _wrong_size(work: Path) -> tuple[list[str], str]:
    d, ids = _copy_v5(work, "wrong-size")
    with open(work / d / "blobs" / ids[0], "ab") as fp:
        fp.write(b"\0")
    return [f"{d}/image.boot", "--blobs-dir", f"{d}/blobs", *PARTIAL], f"blob {ids[0]}: backend size"


def _incompatible_dict(work: Path) -> tuple[list[str], str]:
    return (
        ["v6/image.boot", "--blobs-dir", "v6/blobs", "--chunk-dict", "bootstrap=dict5/image.boot"],
        "dict5/image.boot: chunk dict is incompatible with the image: RAFS v5, the image is v6",
    )


def _bad_config_value(work: Path) -> tuple[list[str], str]:
    (work / "bad-ratio.json").write_text('{"version": 2, "min_used_ratio": 300}')
    return ["v5/image.boot", "-D", "v5/blobs", "-C", "bad-ratio.json"], "bad-ratio.json: min_used_ratio: expected"


def _bad_size_flag(work: Path) -> tuple[list[str], str]:
    return ["v5/image.boot", "-D", "v5/blobs", "--compact-blob-size", "ten"], "--compact-blob-size: expected a size"


def _both_backends(work: Path) -> tuple[list[str], str]:
    return ["v5/image.boot", "-D", "v5/blobs", "--backend-config", "dict-backend.json"], "exclusive"


def _no_bootstrap(work: Path) -> tuple[list[str], str]:
    return ["absent.boot", "-D", "v5/blobs"], "absent.boot: No such file"


ERRORS = {
    "truncated-bootstrap": _truncated,
    "merged-blob-missing": _merged_blob_missing,
    "blob-with-wrong-size": _wrong_size,
    "incompatible-chunk-dict": _incompatible_dict,
    "bad-config-value": _bad_config_value,
    "bad-size-flag": _bad_size_flag,
    "blobs-dir-and-backend-config": _both_backends,
    "nonexistent-bootstrap": _no_bootstrap,
}
USAGE_ERRORS = {"bad-size-flag", "blobs-dir-and-backend-config"}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_are_one_line_and_write_no_plan(work: Path, planned: dict[str, Planned], case: str) -> None:
    args, expected = ERRORS[case](work)
    out = f"err-{case}.plan.yaml"
    r = compact("plan", *args, "-o", out, "--detailed-exitcode", cwd=work)
    usage = case in USAGE_ERRORS  # a bad option value or options that do not fit together
    assert r.rc == (64 if usage else 1), r.out + r.err
    assert r.out == ""
    assert r.err.startswith("compact plan: error: " if usage else "compact: error: "), r.err
    assert r.err.count("\n") == 1, r.err
    assert expected in r.err
    assert not (work / out).exists()


def test_missing_blob_that_is_only_kept_is_a_finding(work: Path, planned: dict[str, Planned]) -> None:
    d, ids = _copy_v5(work, "missing-kept")
    (work / d / "blobs" / ids[1]).unlink()  # blob 1 is kept under PARTIAL
    r = compact("plan", f"{d}/image.boot", "--blobs-dir", f"{d}/blobs", *PARTIAL, "-o", "kept.plan.yaml", cwd=work)
    assert r.rc == 0, r.err
    plan = load_plan(work / "kept.plan.yaml")[0]
    assert plan.blobs[1].decision == "keep" and plan.blobs[1].observed_size is None
    (finding,) = plan.findings
    assert finding.startswith(f"blob {ids[1]} is not available from the backend")
    show = compact("show", "kept.plan.yaml", cwd=work)
    assert f"finding: blob {ids[1]} is not available" in show.out


# -- compact.md E6 through the CLI -------------------------------------------------------------


def test_e6_fixed_point_in_upstream_oracle_mode(tmp_path: Path) -> None:
    def plan_json(*options: str) -> dict:
        r = compact("plan", E6_BOOT, "--blobs-dir", "tests/fixtures/nydus", "--upstream-oracle", *options,
            "-o", tmp_path / "e6.yaml", "--state", tmp_path / "e6.sqlite", "--json", cwd=REPO)
        assert r.rc == 0, r.err
        return json.loads(r.out)

    nydusify = plan_json("--min-used-ratio", "5", "--layers-to-compact", "32")
    assert not nydusify["summary"]["changes"]
    assert "layers_to_compact 32" in nydusify["summary"]["noop_reason"]

    # R: ratio 100 and a single merge candidate, so N = [7334a2…] with every record unchanged.
    same = plan_json("--min-used-ratio", "0")
    assert same["new_table"] == [E6_BLOB]
    assert same["groups"] == [] and same["deletable"] == []
    assert same["blobs"][0]["ratio"] == 100 and same["blobs"][0]["decision"] == "keep"
    assert same["merge_candidates"] == [[0, 3508766]]
    assert same["summary"]["occurrences_remapped"] == 0 and same["summary"]["bytes_to_write"] == 0
    # R counts the rewritten, equivalent bootstrap as output; the tool's own mode (I3) says so plainly.
    assert same["summary"]["changes"]
    tool = compact("plan", E6_BOOT, "--blobs-dir", "tests/fixtures/nydus", "-o", tmp_path / "i3.yaml",
                   "--detailed-exitcode", cwd=REPO)
    assert tool.rc == 0, tool.err
    assert tool.out == "" and tool.err.startswith("No changes: the compacted image would equal the source.")

    forced = plan_json("--min-used-ratio", "101")
    (group,) = forced["groups"]
    assert (group["members"], group["chunk_count"], group["compressed_size"]) == ([0], 23, 3508766)
    assert group["uncompressed_size"] == 3508766
    assert (forced["blobs"][0]["decision"], forced["blobs"][0]["reason"]) == ("rebuild", "REBUILD_RATIO")
    assert forced["new_table"] == ["new:g0"]


# -- the committed example plan ----------------------------------------------------------------


def readme_commands() -> list[list[str]]:
    """The `compact ...` lines of the shell block in plans/README.md, in order."""
    block = re.search(r"```(?:sh|bash)\n(.*?)```", (PLANS / "README.md").read_text(), re.S)
    assert block, "plans/README.md lost its command block"
    return [shlex.split(line)[1:] for line in block.group(1).splitlines() if line.startswith("compact ")]


def test_committed_sample_plan_is_in_sync(tmp_path: Path) -> None:
    commands = readme_commands()
    assert [c[0] for c in commands] == ["mkimage", "plan"]
    for args in commands:
        r = compact(*args, cwd=tmp_path)
        assert r.rc == 0, r.err
    fresh = (tmp_path / "sample.plan.yaml").read_text()
    committed = PLANS / "sample.plan.yaml"
    if os.environ.get("UPDATE_PLANS") == "1":
        committed.write_text(fresh)
    assert committed.is_file() and committed.read_text() == fresh, (
        "plans/sample.plan.yaml is out of date: regenerate it with "
        "`UPDATE_PLANS=1 python3 -m pytest tests/test_plan_cli.py -k sample_plan` and review the diff"
    )


def test_image_without_blobs_plans_no_changes_and_the_plan_loads(tmp_path: Path) -> None:
    """An image with no file data has an empty blob table: the plan must still be a valid plan file."""
    (tmp_path / "layer" / "empty-dir").mkdir(parents=True)
    for version in ("5", "6"):
        out = f"img{version}"
        assert compact("mkimage", "layer", "-o", out, "--fs-version", version, cwd=tmp_path).rc == 0
        r = compact("plan", f"{out}/image.boot", "--blobs-dir", f"{out}/blobs", "-o", f"p{version}.yaml",
                    "--detailed-exitcode", cwd=tmp_path)  # fmt: skip
        assert r.rc == 0, r.err
        plan, _ = load_plan(tmp_path / f"p{version}.yaml")
        assert plan.blobs == [] and not plan.summary.changes
        applied = compact("apply", f"p{version}.yaml", cwd=tmp_path)
        assert applied.rc == 0 and "nothing to do" in applied.err


def test_a_failed_plan_leaves_no_new_state_store(tmp_path: Path) -> None:
    """Nothing is left behind by a plan that fails, the state store included (unless it existed)."""
    (tmp_path / "trunc.boot").write_bytes((FIXTURES / "rafs-v6-2.2.boot").read_bytes()[:9000])
    r = compact("plan", "trunc.boot", "--blobs-dir", str(FIXTURES), "-o", "p.yaml", cwd=tmp_path)
    assert r.rc == 1 and len(r.err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trunc.boot"]
