"""Image references end to end (issue 12): images built by `compact mkimage --output-image`,
pushed to a real docker-registry with skopeo, compacted with `compact plan docker://…` and
`compact apply`, and judged by skopeo (`inspect --raw`, `copy` into a fresh layout) plus
`compact verify` and, for RAFS v6, fsck.erofs on the pulled bootstrap and blobs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.compact_env import REBUILD_AND_MERGE, cli, compact
from helpers.erofs import check_v6_image
from helpers.oci import SKOPEO, config, inspect_fails, layout_bootstrap, pull, push, raw
from registry_server import REGISTRY_BIN, serve

pytestmark = pytest.mark.skipif(
    REGISTRY_BIN is None or SKOPEO is None, reason="docker-registry and skopeo are needed (.ci/run installs them)"
)

BUILD = {5: ["--fs-version", "5", "--compressor", "lz4_block", "--digester", "sha256"],
         6: ["--fs-version", "6", "--compressor", "zstd", "--digester", "blake3"]}
ANN = "containerd.io/snapshot/"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    yield from serve(tmp_path_factory, None, {})


@pytest.fixture(scope="module")
def built(layers, tmp_path_factory) -> dict[int, Path]:
    """Per RAFS version: a mkimage output dir (image.boot, blobs/) and layout/ holding tag `v1`."""
    out = {}
    for version in (5, 6):
        root = tmp_path_factory.mktemp(f"built-v{version}")
        r = cli("mkimage", *layers, "-o", root / "files", "--chunk-size", "64KiB", *BUILD[version],
                "--output-image", f"oci:{root / 'layout'}:v1")
        assert r.rc == 0, r.err
        out[version] = root
    return out


def publish_source(built_root: Path, registry, repo: str) -> str:
    ref = f"docker://{registry.host}/{repo}"
    push(f"oci:{built_root / 'layout'}:v1", ref)
    return ref


def plan_apply(source: str, root: Path, *options: str | Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    r = cli("plan", source, *REBUILD_AND_MERGE, "-o", root / "plan.yaml", *options)
    assert r.rc == 0, r.err
    r = cli("apply", root / "plan.yaml", "-J", root / "out.json")
    assert r.rc == 0, r.err
    return json.loads((root / "out.json").read_text())


def judge(target: str, tmp: Path, version: int, doc: dict) -> dict:
    """skopeo reads the result and copies it into a fresh layout; the pulled image verifies."""
    manifest = raw(target)
    assert manifest["layers"][-1]["annotations"][ANN + "nydus-bootstrap"] == "true"
    assert manifest["layers"][-1]["annotations"][ANN + "nydus-fs-version"] == str(version)
    assert [d["digest"].split(":")[1] for d in manifest["layers"][:-1]] == doc["blobs"]
    layout = tmp / f"pulled-{len(list(tmp.iterdir()))}"
    pulled = pull(target, layout)
    assert cli("verify", pulled).rc == 0
    if version == 6:
        boot = layout_bootstrap(layout, manifest, tmp / "pulled.boot")
        check_v6_image(boot, layout / "blobs" / "sha256", None, tmp)
    return manifest


@pytest.mark.parametrize("version", [5, 6])
def test_same_repository_default_target_matches_file_flow(built, registry, tmp_path, version):
    source = publish_source(built[version], registry, f"same/v{version}:v1")
    doc = plan_apply(source, tmp_path / "img")
    [pub] = doc["published"]
    assert pub["target"] == f"docker://{registry.host}/same/v{version}:v1-compact"
    statuses = {b["blob_id"]: b["status"] for b in pub["blobs"]}
    new = {b["blob_id"] for b in doc["new_blobs"]}
    assert statuses == {b: ("uploaded" if b in new else "present") for b in doc["blobs"]}
    manifest = judge(pub["target"], tmp_path, version, doc)
    diff_id = manifest["layers"][-1]["annotations"]["containerd.io/uncompressed"]
    assert config(pub["target"])["rootfs"]["diff_ids"] == [f"sha256:{b}" for b in doc["blobs"]] + [diff_id]

    # The file-based flow on the same image: the same bootstrap bytes, the same blob ids.
    files = built[version] / "files"
    blobs = tmp_path / "file-blobs"
    shutil.copytree(files / "blobs", blobs)
    r = cli("plan", files / "image.boot", "--blobs-dir", blobs, *REBUILD_AND_MERGE, "-o", tmp_path / "f.yaml",
            "-O", tmp_path / "file.boot")
    assert r.rc == 0, r.err
    r = cli("apply", tmp_path / "f.yaml", "-J", tmp_path / "f.json")
    assert r.rc == 0, r.err
    assert json.loads((tmp_path / "f.json").read_text())["blobs"] == doc["blobs"]
    assert (tmp_path / "file.boot").read_bytes() == Path(doc["bootstrap"]).read_bytes()

    # A re-run publishes nothing and leaves the target as it is.
    again = cli("apply", tmp_path / "img" / "plan.yaml", "-J", tmp_path / "again.json")
    assert again.rc == 0 and "already published" in again.err, again.out + again.err
    assert json.loads((tmp_path / "again.json").read_text())["published"][0]["digest"] == pub["digest"]
    assert raw(pub["target"]) == manifest


def test_other_repository_mounts_kept_blobs(built, registry, tmp_path):
    source = publish_source(built[6], registry, "mount/src:v1")
    target = f"docker://{registry.host}/mount/dst:small"
    doc = plan_apply(source, tmp_path / "img", "--target", target)
    [pub] = doc["published"]
    new = {b["blob_id"] for b in doc["new_blobs"]}
    assert {b["blob_id"]: b["status"] for b in pub["blobs"]} == {
        b: ("uploaded" if b in new else "mounted") for b in doc["blobs"]
    }
    assert doc["kept_blobs"]  # the options keep one blob: it is mounted, not copied
    judge(target, tmp_path, 6, doc)


def test_layout_in_layout_out_touches_only_the_target_tag(built, tmp_path):
    layout = tmp_path / "layout"
    shutil.copytree(built[6] / "layout", layout)
    before = json.loads((layout / "index.json").read_text())["manifests"]
    doc = plan_apply(f"oci:{layout}:v1", tmp_path / "img")
    [pub] = doc["published"]
    assert pub["target"] == f"oci:{layout}:v1-compact"
    after = json.loads((layout / "index.json").read_text())["manifests"]
    assert after[: len(before)] == before and len(after) == len(before) + 1
    assert not [p for p in layout.rglob(".*")]  # no lock or temp file left in the input layout
    assert after[-1]["annotations"] == {"org.opencontainers.image.ref.name": "v1-compact"}
    assert after[-1]["digest"] == pub["digest"]
    judge(pub["target"], tmp_path, 6, doc)


def test_stale_source_tag_is_refused_target_untouched(built, registry, tmp_path):
    source = publish_source(built[6], registry, "stale/app:v1")
    root = tmp_path / "img"
    root.mkdir()
    assert cli("plan", source, *REBUILD_AND_MERGE, "-o", root / "plan.yaml").rc == 0
    push(f"oci:{built[5] / 'layout'}:v1", source)  # the tag moves to another image
    r = cli("apply", root / "plan.yaml")
    assert r.rc == 1 and "plan is stale" in r.err and r.err.count("\n") == 1, r.err
    assert inspect_fails(f"docker://{registry.host}/stale/app:v1-compact")


def test_target_naming_another_image_needs_force(built, registry, tmp_path):
    source = publish_source(built[6], registry, "force/app:v1")
    target = f"docker://{registry.host}/force/app:v1-compact"
    push(f"oci:{built[5] / 'layout'}:v1", target)
    before = raw(target)
    root = tmp_path / "img"
    root.mkdir()
    assert cli("plan", source, *REBUILD_AND_MERGE, "-o", root / "plan.yaml").rc == 0
    r = cli("apply", root / "plan.yaml")
    assert r.rc == 1 and "names another image" in r.err and "--force" in r.err, r.err
    assert raw(target) == before
    r = cli("apply", root / "plan.yaml", "--force")
    assert r.rc == 0, r.err
    assert raw(target) != before

    # A target equal to the source is refused the same way.
    same = tmp_path / "same"
    same.mkdir()
    assert cli("plan", source, "--target", source, *REBUILD_AND_MERGE, "-o", same / "plan.yaml").rc == 0
    r = cli("apply", same / "plan.yaml")
    assert r.rc == 1 and "is the source image" in r.err, r.err


def test_usage_errors_exit_64(registry, tmp_path):
    digest = "sha256:" + "a" * 64
    h = registry.host
    cases = [
        ["plan", f"docker://{h}/x@{digest}"],
        ["plan", f"oci:{tmp_path}"],
        ["plan", f"docker://{h}/x:a", f"docker://{h}/x:b", "--target", f"docker://{h}/x:c"],
        ["plan", f"docker://{h}/x:a", "--target", f"docker://{h}/x:c", "--target-suffix", "-s"],
        ["plan", f"docker://{h}/x:a", str(tmp_path / "image.boot")],
        ["plan", f"docker://{h}/x:a", "--blobs-dir", str(tmp_path)],
    ]
    for args in cases:
        r = cli(*args, "-o", tmp_path / "p.yaml")
        assert r.rc == 64 and r.err.count("\n") == 1, (args, r.rc, r.err)
    assert not (tmp_path / "p.yaml").exists()


def test_not_a_nydus_image_and_unreachable_registry_are_one_line(built, registry, tmp_path):
    from nydus_compact.image.layout import LayoutRepo

    layout = tmp_path / "plain"
    plain_image(LayoutRepo(layout, create=True), "plain")
    push(f"oci:{layout}:plain", f"docker://{registry.host}/plain/app:v1")
    r = cli("plan", f"docker://{registry.host}/plain/app:v1", "-o", tmp_path / "p.yaml")
    assert r.rc == 1 and "not a nydus image" in r.err and r.err.count("\n") == 1, r.err
    r = cli("plan", f"docker://{registry.host}/nothing/here:v1", "-o", tmp_path / "p.yaml")
    assert r.rc == 1 and "no such image" in r.err, r.err
    from registry_server import free_port

    r = cli("plan", f"docker://127.0.0.1:{free_port()}/app:v1", "-o", tmp_path / "p.yaml")
    assert r.rc == 1 and "127.0.0.1:" in r.err and r.err.count("\n") == 1, r.err


def plain_image(repo, tag: str | None) -> dict:
    """A plain (non-nydus) OCI image in a layout: one tar+gzip layer. Returns its index entry."""
    import gzip
    import io
    import tarfile

    from nydus_compact.image.compose import Blob
    from nydus_compact.image.manifest import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, default_platform, dumps

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    layer = Blob(gzip.compress(buf.getvalue(), mtime=0), OCI_LAYER_GZIP)
    os_, arch = default_platform().split("/")[:2]
    cfg = Blob(dumps({"architecture": arch, "os": os_, "rootfs": {"type": "layers", "diff_ids": [
        Blob(buf.getvalue(), "").digest]}}), OCI_CONFIG)
    manifest = Blob(dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg.descriptor(),
                           "layers": [layer.descriptor()]}), OCI_MANIFEST)
    for b in (layer, cfg):
        repo.put_blob_bytes(b.digest.split(":")[1], b.data)
    repo.put_manifest(manifest.data, OCI_MANIFEST, tag or manifest.digest)
    return manifest.descriptor(platform={"architecture": arch, "os": os_})


def test_index_with_nydus_and_plain_manifest(built, registry, tmp_path):
    from nydus_compact.image.compose import Blob
    from nydus_compact.image.layout import LayoutRepo
    from nydus_compact.image.manifest import NYDUS_OS_FEATURE, OCI_INDEX, dumps

    layout = tmp_path / "multi"
    shutil.copytree(built[6] / "layout", layout)
    repo = LayoutRepo(layout)
    plain = plain_image(repo, None)
    nydus = dict(repo.tag_entry("v1"))
    nydus.pop("annotations")
    # skopeo (Debian's) drops an index entry's artifactType when it copies; os.features survives.
    nydus["platform"] = {**nydus["platform"], "os.features": [NYDUS_OS_FEATURE]}
    index = Blob(dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [plain, nydus]}), OCI_INDEX)
    repo.put_manifest(index.data, OCI_INDEX, "multi")
    source = f"docker://{registry.host}/multi/src:v1"
    push(f"oci:{layout}:multi", source, all_images=True)
    target = f"docker://{registry.host}/multi/dst:v1"

    r = cli("plan", source, "--platform", "linux/s390x", "-o", tmp_path / "p.yaml")
    assert r.rc == 1 and "holds no nydus image for linux/s390x" in r.err and plain["digest"][:19] in r.err, r.err

    doc = plan_apply(source, tmp_path / "img", "--target", target)
    [pub] = doc["published"]
    published = raw(target)
    assert published["mediaType"] == OCI_INDEX and pub["digest"] != pub["manifest_digest"]
    assert published["manifests"][0] == plain  # carried over unchanged, its blobs copied/mounted
    assert published["manifests"][1]["digest"] == pub["manifest_digest"]
    assert published["manifests"][1]["platform"] == nydus["platform"]
    pull(target, tmp_path / "all", all_images=True)
    judge(f"docker://{registry.host}/multi/dst@{pub['manifest_digest']}", tmp_path, 6, doc)


def test_fleet_of_two_tags_with_target_suffix(built, layers, registry, tmp_path):
    source_a = publish_source(built[6], registry, "fleet/app:a")
    smaller = tmp_path / "b"
    assert cli("mkimage", *layers[:-1], "-o", smaller / "files", "--chunk-size", "64KiB", *BUILD[6],
               "--output-image", f"oci:{smaller / 'layout'}:v1").rc == 0
    source_b = publish_source(smaller, registry, "fleet/app:b")
    root = tmp_path / "img"
    root.mkdir()
    r = cli("plan", source_a, source_b, *REBUILD_AND_MERGE, "--target-suffix", "-small", "-o", root / "plan.yaml")
    assert r.rc == 0, r.err
    r = cli("apply", root / "plan.yaml", "-J", root / "out.json")
    assert r.rc == 0, r.err
    doc = json.loads((root / "out.json").read_text())
    assert [p["target"] for p in doc["published"]] == [source_a + "-small", source_b + "-small"]
    for pub, image in zip(doc["published"], doc["images"]):
        judge(pub["target"], tmp_path, 6, {"blobs": image["blobs"]})


def test_sigkill_at_each_publishing_point_then_resume(built, registry, tmp_path):
    """Killed after the first blob, after the config, right before the tag: the tag stays absent,
    and the run that finally completes uploads nothing twice."""
    source = publish_source(built[6], registry, "kill/app:v1")
    target = source + "-compact"
    root = tmp_path / "img"
    root.mkdir()
    assert cli("plan", source, *REBUILD_AND_MERGE, "-o", root / "plan.yaml").rc == 0
    for point in ("publish-blob:0", "publish-config", "publish-before-tag"):
        killed = compact("apply", root / "plan.yaml", fault=point)
        assert killed.rc == -9, (point, killed.err)
        assert inspect_fails(target), point  # the tag is absent until the manifest is complete
    resumed = cli("apply", root / "plan.yaml", "-J", root / "out.json")
    assert resumed.rc == 0 and "published" in resumed.err, resumed.err
    doc = json.loads((root / "out.json").read_text())
    new = {b["blob_id"] for b in doc["new_blobs"]}
    # Checkpointed uploads keep their status; nothing was uploaded by the last run.
    assert {b["blob_id"]: b["status"] for b in doc["published"][0]["blobs"]} == {
        b: ("uploaded" if b in new else "present") for b in doc["blobs"]
    }
    judge(target, tmp_path, 6, doc)


def test_registry_stopped_mid_publish_then_resume(built, tmp_path):
    from registry_server import RegistryServer

    srv = RegistryServer(tmp_path / "registry").start()
    try:
        source = publish_source(built[5], srv, "down/app:v1")
        root = tmp_path / "img"
        root.mkdir()
        assert cli("plan", source, *REBUILD_AND_MERGE, "-o", root / "plan.yaml").rc == 0
        assert compact("apply", root / "plan.yaml", fault="publish-blob:0").rc == -9
        srv.stop()
        down = cli("apply", root / "plan.yaml")
        assert down.rc == 1 and down.err.count("\n") == 1 and srv.host in down.err, down.err
        srv.start()
        r = cli("apply", root / "plan.yaml", "-J", root / "out.json")
        assert r.rc == 0, r.err
        judge(source + "-compact", tmp_path, 5, json.loads((root / "out.json").read_text()))
    finally:
        srv.stop()


USER, PASSWORD = "dana", "image-Pa55word!"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    yield from serve(tmp_path_factory, "htpasswd", {USER: PASSWORD})


def test_htpasswd_registry_with_docker_config_keeps_secrets_out(built, secured, tmp_path, monkeypatch):
    from registry_server import basic_auth

    creds = f"{USER}:{PASSWORD}"
    push(f"oci:{built[6] / 'layout'}:v1", f"docker://{secured.host}/auth/app:v1", creds=creds)
    source = f"docker://{secured.host}/auth/app:v1"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    root = tmp_path / "img"
    root.mkdir()

    refused = cli("plan", source, "-o", root / "plan.yaml")  # no credentials anywhere yet
    assert refused.rc == 1 and f"registry {secured.host}: authentication failed (401)" in refused.err, refused.err

    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {secured.host: {"auth": basic_auth(USER, PASSWORD)}}}))
    target = f"docker://{secured.host}/auth/other:small"
    planned = cli("plan", source, "--target", target, *REBUILD_AND_MERGE, "-o", root / "plan.yaml")
    applied = cli("apply", root / "plan.yaml", "-J", root / "out.json")
    assert planned.rc == 0 and applied.rc == 0, planned.err + applied.err
    doc = json.loads((root / "out.json").read_text())
    assert {b["status"] for b in doc["published"][0]["blobs"]} == {"uploaded", "mounted"}
    manifest = raw(target, creds=creds)
    pull(target, tmp_path / "pulled", creds=creds)
    assert [d["digest"].split(":")[1] for d in manifest["layers"][:-1]] == doc["blobs"]
    secrets = [PASSWORD, basic_auth(USER, PASSWORD)]
    outputs = [planned.out, planned.err, applied.out, applied.err]
    outputs += [p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file() and p.suffix != ".boot"]
    for text in outputs:
        for secret in secrets:
            assert secret not in text


def plan_with_a_bad_kept_blob(built, tmp_path: Path, target: str, at) -> Path:  # type: ignore[no-untyped-def]
    """A plan from a copy of the v6 layout, then one byte of a kept blob flipped at ``at(size)``:
    same size, so the plan is not stale, but the bytes are wrong. Returns the plan file."""
    layout = tmp_path / "layout"
    shutil.copytree(built[6] / "layout", layout)
    root = tmp_path / "img"
    root.mkdir()
    assert cli("plan", f"oci:{layout}:v1", "--target", target, *REBUILD_AND_MERGE, "-o", root / "plan.yaml").rc == 0
    from nydus_compact.planner.planfile import load_plan

    plan, _ = load_plan(root / "plan.yaml")
    kept_id = next(b.blob_id for b in plan.blobs if b.decision == "keep")
    blob = layout / "blobs" / "sha256" / kept_id
    data = bytearray(blob.read_bytes())
    data[at(len(data))] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    return root / "plan.yaml"


def test_blob_whose_id_is_not_its_sha256_is_refused(built, registry, tmp_path):
    """A layout blob whose bytes do not hash to its id (like a v6 blob with a ToC) cannot become a layer."""
    target = f"docker://{registry.host}/badblob/app:v1"
    r = cli("apply", plan_with_a_bad_kept_blob(built, tmp_path, target, lambda size: size - 1))
    assert r.rc == 1 and "cannot be published under its id" in r.err and r.err.count("\n") == 1, r.err
    assert inspect_fails(target)


def test_verify_checks_the_new_image_before_publishing_it(built, registry, tmp_path):
    """`apply --verify` of an image plan: the new image (new blobs from the work dir, kept ones from
    the source) is checked, its summary printed, then published. A kept blob whose bytes went bad
    (same size: the plan is not stale) fails the check, and nothing is published."""
    source = publish_source(built[6], registry, "verify/src:v1")
    root = tmp_path / "ok"
    root.mkdir()
    target = f"docker://{registry.host}/verify/ok:v1"
    assert cli("plan", source, "--target", target, *REBUILD_AND_MERGE, "-o", root / "plan.yaml").rc == 0
    r = cli("apply", root / "plan.yaml", "--verify", "-J", root / "out.json")
    assert r.rc == 0, r.err
    lines = r.err.splitlines()
    assert len(lines) == 3 and lines[1].startswith("verify ") and ": OK: " in lines[1], r.err
    assert lines[2].startswith(f"published {target}"), r.err
    judge(target, tmp_path, 6, json.loads((root / "out.json").read_text()))

    target = f"docker://{registry.host}/verify/bad:v1"
    r = cli("apply", plan_with_a_bad_kept_blob(built, tmp_path, target, lambda size: size // 3), "--verify")
    assert r.rc == 1 and r.err.count("\n") == 1, r.err
    assert ": FAILED (" in r.err and "nothing was published" in r.err, r.err
    assert inspect_fails(target)


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    yield from serve(tmp_path_factory, "token", {USER: PASSWORD})


def test_bearer_token_registry_mount_asks_pull_on_the_source(built, token_registry, tmp_path):
    from registry_server import basic_auth

    creds = f"{USER}:{PASSWORD}"
    source = f"docker://{token_registry.host}/tok/src:v1"
    push(f"oci:{built[6] / 'layout'}:v1", source, creds=creds)
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {token_registry.host: {"auth": basic_auth(USER, PASSWORD)}}}))
    target = f"docker://{token_registry.host}/tok/dst:v1"
    root = tmp_path / "img"
    root.mkdir()
    assert cli("plan", source, "--target", target, *REBUILD_AND_MERGE, "-o", root / "plan.yaml", "--authfile", authfile).rc == 0
    r = cli("apply", root / "plan.yaml", "-J", root / "out.json", "--authfile", authfile)
    assert r.rc == 0, r.err
    doc = json.loads((root / "out.json").read_text())
    assert "mounted" in {b["status"] for b in doc["published"][0]["blobs"]}
    # One token carries the target's push scope and pull on the source, as a mount needs.
    assert any(
        "repository:tok/src:pull" in q.get("scope", [])
        and any(s.startswith("repository:tok/dst:") and "push" in s for s in q.get("scope", []))
        for q in token_registry.token_server.requests
    )
    pull(target, tmp_path / "pulled", creds=creds)


@pytest.mark.parametrize("version", [5, 6])
def test_max_blobs_with_an_image_reference(built, tmp_path, version):
    """--max-blobs goes through for image references: the published image holds at most N blob layers."""
    layout = tmp_path / "layout"
    shutil.copytree(built[version] / "layout", layout)
    doc = plan_apply(f"oci:{layout}:v1", tmp_path / "img", "--max-blobs", "1")
    assert "MERGE_FOR_COUNT" in (tmp_path / "img" / "plan.yaml").read_text()
    [pub] = doc["published"]
    manifest = judge(pub["target"], tmp_path, version, doc)
    assert len(manifest["layers"]) - 1 == len(doc["blobs"]) == 1
