"""plan → apply end to end against a real OCI registry (issue 7), compared with the same run on localfs.

Images are real builder output whose blobs are pushed to Debian's ``docker-registry`` on
127.0.0.1. ``compact plan`` reads blob sizes from the registry, ``compact apply`` reads chunks
from it, writes the new blobs to a staging dir and uploads them; the result must be
byte-identical to a localfs run of the same plan. Faults: the registry dies mid-apply, wrong
credentials, a blob the plan must read is missing. Apply throughput from the registry relative
to localfs is measured, not asserted (printed; run with ``-s``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.compact_env import MERGE_ALL, REBUILD_AND_MERGE, Image, build, cli, compact
from helpers.remote import (
    Outcome,
    apply_args,
    assert_one_line_error,
    assert_secrets_nowhere,
    collect,
    plan_args,
    run_localfs,
    run_remote,
    step_seconds,
)
from registry_server import REGISTRY_BIN, RegistryServer, basic_auth, serve

from nydus_compact.backends.registry import RegistryBackend
from nydus_compact.mkimage.sample import make_sample_layers
from nydus_compact.planner.planfile import load_plan
from nydus_compact.rafs.loader import load_bootstrap
from nydus_compact.safeio import TMP_PREFIX

pytestmark = pytest.mark.skipif(REGISTRY_BIN is None, reason="docker-registry is not installed (.ci/run installs it)")

USER, PASSWORD = "carol", "e2e-Pa55word!"
AUTH = basic_auth(USER, PASSWORD)
BIG_SCALE = 16  # the sample at 16x: ~28 MiB of blobs, ~12 MiB copied by MERGE_ALL


def push(host: str, repo: str, blobs_dir: Path, auth: str | None = None, skip: str | None = None) -> None:
    with RegistryBackend("http", host, repo, auth=auth) as be:
        for path in sorted(blobs_dir.iterdir()):
            if path.name != skip:
                assert be.upload_blob(path.name, path) is True


def backend_args(path: Path, shape: str, host: str, repo: str, **fields: object) -> list[str | Path]:
    """Writes a registry config in one of the shapes of compact.md §5.1; the CLI arguments naming it."""
    cfg = {"scheme": "http", "host": host, "repo": repo, **fields}
    doc = {
        "v2": {"version": 2, "backend": {"type": "registry", "registry": cfg}},
        "v1": {"device": {"backend": {"type": "registry", "config": cfg}}, "mode": "direct"},
        "raw": cfg,
    }[shape]
    path.write_text(json.dumps(doc))
    return ["--backend-config", path, *(["--backend-type", "registry"] if shape == "raw" else [])]


def assert_served(host: str, repo: str, blobs: dict[str, bytes], auth: str | None = None) -> None:
    with RegistryBackend("http", host, repo, auth=auth) as be:
        for blob_id, data in blobs.items():
            assert be.blob_size(blob_id) == len(data)
            assert be.read_exact(blob_id, len(data) - 100, 100) == data[-100:]


def server(tmp_path_factory: pytest.TempPathFactory, auth: str | None) -> Iterator[RegistryServer]:
    yield from serve(tmp_path_factory, auth, {USER: PASSWORD})


@pytest.fixture(scope="module")
def anon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from server(tmp_path_factory, None)


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from server(tmp_path_factory, "htpasswd")


@pytest.fixture(scope="module")
def v5_image(layers: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(layers, tmp_path_factory.mktemp("v5") / "image", 5)


# ---- 1. the same result as localfs ----------------------------------------------------------


@pytest.mark.parametrize(("version", "shape"), [(5, "raw"), (6, "v2")])
def test_apply_from_registry_matches_localfs(layers, anon, tmp_path, version, shape):
    image = build(layers, tmp_path / "image", version)
    repo = f"e2e/v{version}"
    push(anon.host, repo, image.blobs)
    backend = backend_args(tmp_path / "registry.json", shape, anon.host, repo)
    local, _ = run_localfs(image, tmp_path / "local", REBUILD_AND_MERGE)

    remote, _ = run_remote(image, tmp_path / "registry", backend, REBUILD_AND_MERGE)

    plan, _ = load_plan(remote.plan)
    assert {b.decision for b in plan.blobs} == {"keep", "delete", "rebuild", "merge"}
    assert plan.backend == {"type": "registry", "scheme": "http", "host": anon.host, "repo": repo, "authenticated": False}
    assert len(remote.blobs) == 2
    assert remote.bootstrap == local.bootstrap
    assert remote.blobs == local.blobs
    assert_served(anon.host, repo, remote.blobs)
    v = cli("verify", remote.new_boot, *backend)
    assert v.rc == 0 and f"verify {remote.new_boot}: OK: 3 blobs" in v.out, v.out + v.err
    # A second apply finds the finished run; nothing is uploaded again.
    again = cli(*apply_args(remote.root, backend))
    assert again.rc == 0 and again.err.startswith("already applied"), again.out + again.err


# ---- 2. basic auth: the same, and no secret anywhere ----------------------------------------


def test_basic_auth_run_keeps_every_secret_out(v5_image, basic, tmp_path):
    push(basic.host, "e2e/auth", v5_image.blobs, auth=AUTH)
    backend = backend_args(tmp_path / "registry.json", "v1", basic.host, "e2e/auth", auth=AUTH)
    local, _ = run_localfs(v5_image, tmp_path / "local", REBUILD_AND_MERGE)
    root = tmp_path / "registry"
    root.mkdir()

    runs = [
        compact(*plan_args(v5_image, root, backend, REBUILD_AND_MERGE)),
        compact(*apply_args(root, backend), "--verify"),
        compact("verify", root / "new.boot", *backend),
        compact("report", root / "plan.yaml"),
        compact("report", root / "plan.yaml", "-o", root / "report.html"),
        compact("show", root / "plan.yaml"),
    ]

    for r in runs:
        assert r.rc == 0, r.out + r.err
    assert runs[1].err.startswith("applied: ") and ": OK: " in runs[2].out
    remote = collect(root, root / "staging")
    assert (remote.bootstrap, remote.blobs) == (local.bootstrap, local.blobs)
    assert_served(basic.host, "e2e/auth", remote.blobs, auth=AUTH)
    assert_secrets_nowhere(root, runs, PASSWORD, AUTH)


# ---- 3. faults ------------------------------------------------------------------------------


def test_wrong_credentials_are_one_line(v5_image, basic, tmp_path):
    push(basic.host, "e2e/creds", v5_image.blobs, auth=AUTH)
    wrong = basic_auth(USER, "not-the-password")
    good = backend_args(tmp_path / "good.json", "raw", basic.host, "e2e/creds", auth=AUTH)
    bad = backend_args(tmp_path / "bad.json", "raw", basic.host, "e2e/creds", auth=wrong)
    expected = f"compact: error: registry {basic.host}: authentication failed (401) for e2e/creds"

    r = compact(*plan_args(v5_image, tmp_path, bad, REBUILD_AND_MERGE))

    assert assert_one_line_error(r, wrong, "not-the-password").startswith(expected)
    assert not (tmp_path / "plan.yaml").exists()
    assert cli(*plan_args(v5_image, tmp_path, good, REBUILD_AND_MERGE)).rc == 0

    r = compact(*apply_args(tmp_path, bad))

    # Not "the plan is stale": the backend refused us, the blobs are still there.
    assert assert_one_line_error(r, wrong, "not-the-password") == expected + "\n"
    assert not (tmp_path / "new.boot").exists() and not (tmp_path / "staging").exists()


def test_blob_missing_on_the_registry_is_reported_by_plan(v5_image, anon, tmp_path):
    plan_reads = load_bootstrap(v5_image.boot).blobs[0].blob_id  # rebuilt by REBUILD_AND_MERGE
    push(anon.host, "e2e/missing", v5_image.blobs, skip=plan_reads)
    backend = backend_args(tmp_path / "registry.json", "v2", anon.host, "e2e/missing")

    r = compact(*plan_args(v5_image, tmp_path, backend, REBUILD_AND_MERGE))

    err = assert_one_line_error(r)
    assert f"blob {plan_reads} not found in registry {anon.host}/e2e/missing" in err
    assert not (tmp_path / "plan.yaml").exists() and not (tmp_path / "new.boot").exists()


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    root = tmp_path_factory.mktemp("big")
    return build(make_sample_layers(root / "layers", scale=BIG_SCALE), root / "image", 6)


@pytest.fixture(scope="module")
def big_local(big_image: Image, tmp_path_factory: pytest.TempPathFactory) -> tuple[Outcome, float]:
    return run_localfs(big_image, tmp_path_factory.mktemp("big-local"), MERGE_ALL)


def kill_when_copying(srv: RegistryServer, staging: Path, fired: threading.Event, apply_ended: threading.Event) -> None:
    """SIGKILLs the registry as soon as apply has a new blob half written in ``staging``."""
    while not apply_ended.is_set():
        if staging.is_dir() and any(p.name.startswith(TMP_PREFIX) for p in staging.iterdir()):
            assert srv.proc is not None
            srv.proc.kill()
            fired.set()
            return
        time.sleep(0.001)


def test_registry_dies_mid_apply_then_resumes(big_image, big_local, tmp_path):
    srv = RegistryServer(tmp_path / "registry").start()
    try:
        push(srv.host, "e2e/big", big_image.blobs)
        backend = backend_args(tmp_path / "registry.json", "v2", srv.host, "e2e/big", timeout=2)
        root = tmp_path / "run"
        root.mkdir()
        assert cli(*plan_args(big_image, root, backend, MERGE_ALL)).rc == 0
        fired, apply_ended = threading.Event(), threading.Event()
        killer = threading.Thread(target=kill_when_copying, args=(srv, root / "staging", fired, apply_ended))
        killer.start()
        try:
            killed = compact(*apply_args(root, backend))
        finally:
            apply_ended.set()
            killer.join()
        assert fired.is_set()
        assert f"registry {srv.host}/e2e/big: " in assert_one_line_error(killed)
        assert not (root / "new.boot").exists()
        srv.stop()

        down = compact(*apply_args(root, backend))

        err = assert_one_line_error(down)
        assert f"registry {srv.host}/e2e/big: HEAD blob " in err and "stale" not in err

        srv.start()  # same storage dir, same port
        resumed = compact(*apply_args(root, backend))

        assert resumed.rc == 0 and resumed.err.startswith("resumed and applied: "), resumed.out + resumed.err
        remote = collect(root, root / "staging")
        local, _ = big_local
        assert (remote.bootstrap, remote.blobs) == (local.bootstrap, local.blobs)
        assert [p.name for p in (root / "staging").iterdir() if p.name.startswith(TMP_PREFIX)] == []
        assert_served(srv.host, "e2e/big", remote.blobs)
    finally:
        srv.stop()


# ---- 4. throughput (measured, not asserted) -------------------------------------------------


def test_apply_throughput_registry_vs_localfs(big_image, big_local, anon, tmp_path):
    push(anon.host, "e2e/throughput", big_image.blobs)
    backend = backend_args(tmp_path / "registry.json", "v2", anon.host, "e2e/throughput")
    local, local_s = big_local

    remote, remote_s = run_remote(big_image, tmp_path / "registry", backend, MERGE_ALL)

    assert (remote.bootstrap, remote.blobs) == (local.bootstrap, local.blobs)
    mib = sum(len(b) for b in remote.blobs.values()) / (1 << 20)
    local_copy, remote_steps = step_seconds(local.root)["blob"], step_seconds(remote.root)
    print(
        f"\napply of {mib:.1f} MiB copied into {len(remote.blobs)} new blob(s):\n"
        f"  localfs : whole apply {mib / local_s:6.1f} MiB/s ({local_s:.3f} s), copying {mib / local_copy:6.1f} MiB/s\n"
        f"  registry: whole apply {mib / remote_s:6.1f} MiB/s ({remote_s:.3f} s), copying "
        f"{mib / remote_steps['blob']:6.1f} MiB/s, upload {mib / remote_steps['upload']:6.1f} MiB/s\n"
        f"  registry / localfs: whole apply {local_s / remote_s:.2f}x, copying {local_copy / remote_steps['blob']:.2f}x"
    )
