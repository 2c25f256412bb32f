"""The image flow's pure parts: references (containers-transports(5)), credential lookup order,
the reproducible bootstrap layer, manifest composition on real nydusify manifests, and index
resolution."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from nydus_compact.image.auth import find_credentials
from nydus_compact.image.bootlayer import build_bootstrap_layer, extract_bootstrap
from nydus_compact.image.compose import compose
from nydus_compact.image.errors import ImageError
from nydus_compact.image.manifest import (
    ANN_REFERENCE_BLOBS,
    DOCKER_MANIFEST,
    Index,
    Manifest,
    is_nydus_entry,
    sha256_digest,
)
from nydus_compact.image.reference import DockerRef, LayoutRef, parse_reference, scheme_for

OCI = Path(__file__).parent / "fixtures" / "nydus-oci"
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docker://alpine", DockerRef("docker.io", "library/alpine", "latest", None)),
        ("docker://alpine:3.19", DockerRef("docker.io", "library/alpine", "3.19", None)),
        ("docker://team/app", DockerRef("docker.io", "team/app", "latest", None)),
        ("docker://localhost/app:v1", DockerRef("localhost", "app", "v1", None)),
        ("docker://127.0.0.1:5000/a/b:v1", DockerRef("127.0.0.1:5000", "a/b", "v1", None)),
        ("docker://reg.example.com/a/b/c@" + DIGEST, DockerRef("reg.example.com", "a/b/c", None, DIGEST)),
        ("docker://localhost:5000", DockerRef("docker.io", "library/localhost", "5000", None)),
        ("docker://[::1]:5000/app", DockerRef("[::1]:5000", "app", "latest", None)),
    ],
)
def test_docker_references(text, expected):
    ref = parse_reference(text)
    assert ref == expected
    assert parse_reference(str(ref)) == ref  # the canonical form parses back to itself


@pytest.mark.parametrize(
    "text",
    ["docker://", "docker://App:v1", "docker://a:v1@" + DIGEST, "docker://a@sha256:12", "docker://a:-bad",
     "docker:///a", "docker://reg.example.com/Team/app", "alpine", "oci:"],
)
def test_invalid_references_are_refused(text):
    with pytest.raises(ImageError):
        parse_reference(text)


def test_layout_references(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_reference("oci:dir") == LayoutRef(str(tmp_path / "dir"), None)
    assert parse_reference("oci:/x/y:v1") == LayoutRef("/x/y", "v1")
    with pytest.raises(ImageError):  # split at the first colon: "b:c" is no valid image name
        parse_reference("oci:/x/y:a/b:c")
    assert parse_reference("oci:/x/y:name/sub").tag == "name/sub"


def test_plain_http_for_loopback_and_insecure_hosts():
    assert [scheme_for(h) for h in ("127.0.0.1:5000", "127.1.2.3", "localhost:80", "[::1]:5000", "reg.io")] == [
        "http", "http", "http", "http", "https"]
    assert scheme_for("reg.io:5000", ["reg.io:5000"]) == "http"
    assert scheme_for("reg.io:5000", ["reg.io"]) == "http"


def _auth_file(path: Path, auths: dict, **extra: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": auths, **extra}))
    return path


def _b64(user: str) -> str:
    return base64.b64encode(f"{user}:pw".encode()).decode()


def test_credentials_first_file_holding_the_registry_wins(tmp_path):
    host = "reg.example.com:5000"
    env = {
        "REGISTRY_AUTH_FILE": str(_auth_file(tmp_path / "raf.json", {"other.io": {"auth": _b64("x")}})),
        "XDG_RUNTIME_DIR": str(tmp_path / "xdg"),
        "DOCKER_CONFIG": str(tmp_path / "dc"),
        "HOME": str(tmp_path / "home"),
    }
    _auth_file(tmp_path / "dc" / "config.json", {f"https://{host}": {"auth": _b64("docker-config")}})
    _auth_file(tmp_path / "home" / ".docker" / "config.json", {host: {"auth": _b64("home")}})
    assert find_credentials(host, "team/app", env=env).auth == _b64("docker-config")
    _auth_file(tmp_path / "xdg" / "containers" / "auth.json", {host: {"username": "xdg", "password": "pw"}})
    assert find_credentials(host, "team/app", env=env).auth == _b64("xdg")
    explicit = _auth_file(tmp_path / "explicit.json", {host: {"auth": _b64("explicit")}})
    creds = find_credentials(host, "team/app", explicit, env=env)
    assert (creds.auth, creds.source) == (_b64("explicit"), str(explicit))
    # The most specific namespace wins; another namespace does not match.
    _auth_file(tmp_path / "ns.json", {host: {"auth": _b64("host")}, f"{host}/team": {"auth": _b64("team")},
                                      f"{host}/other": {"auth": _b64("other")}})
    assert find_credentials(host, "team/app", tmp_path / "ns.json", env={}).auth == _b64("team")
    assert find_credentials(host, "solo", tmp_path / "ns.json", env={}).auth == _b64("host")
    assert find_credentials("docker.io", "library/x", _auth_file(
        tmp_path / "hub.json", {"https://index.docker.io/v1/": {"auth": _b64("hub")}}), env={}).auth == _b64("hub")


def test_credential_helpers_are_named_not_run(tmp_path):
    path = _auth_file(tmp_path / "c.json", {}, credHelpers={"reg.io": "secretservice"})
    creds = find_credentials("reg.io", "a", path, env={})
    assert creds.auth is None and "docker-credential-secretservice" in creds.warnings[0]
    with pytest.raises(ImageError, match="--authfile"):
        find_credentials("reg.io", "a", tmp_path / "missing.json", env={})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ImageError, match="not valid JSON"):
        find_credentials("reg.io", "a", tmp_path / "bad.json", env={})


def test_bootstrap_layer_is_reproducible_and_pinned():
    boot = bytes(range(256)) * 100
    layer, diff_id = build_bootstrap_layer(boot)
    assert build_bootstrap_layer(boot) == (layer, diff_id)
    assert layer[4:8] == b"\0\0\0\0" and layer[3] == 0  # gzip: mtime 0, no file name
    raw = gzip.decompress(layer)
    assert diff_id == sha256_digest(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    assert [(m.name, m.type, m.mode, m.uid, m.gid, m.mtime, m.uname, m.gname) for m in members] == [
        ("image", tarfile.DIRTYPE, 0o755, 0, 0, 0, "", ""),
        ("image/image.boot", tarfile.REGTYPE, 0o444, 0, 0, 0, "", ""),
    ]
    assert raw[257:263] == b"ustar\x00"  # POSIX USTAR
    assert extract_bootstrap(layer, "x") == boot
    assert extract_bootstrap(raw, "x") == boot  # an uncompressed layer reads too
    with pytest.raises(ImageError, match="no image/image.boot"):
        extract_bootstrap(gzip.compress(b"\0" * 1024), "x")


def test_real_manifests_parse_and_compose_keeps_subject_and_annotations():
    data = (OCI / "ubuntu-22.04-nydus.manifest.json").read_bytes()
    manifest = Manifest.parse(data, "ubuntu")
    assert manifest.bootstrap_layer is not None and len(manifest.blob_layers) == 1
    config = json.loads((OCI / "ubuntu-22.04-nydus.config.json").read_text())
    kept = manifest.blob_layers[0].hex
    new_id = "cd" * 32
    out = compose(b"boot", 6, [new_id, kept], {new_id: 10}, base_manifest=manifest.doc, base_config=config,
                  source_layers={kept: manifest.blob_layers[0].raw}, source_bootstrap_layer=manifest.bootstrap_layer.raw)
    doc = json.loads(out.manifest.data)
    assert doc["subject"] == manifest.doc["subject"] and doc["mediaType"] == manifest.doc["mediaType"]
    assert [d["digest"] for d in doc["layers"][:-1]] == [f"sha256:{new_id}", f"sha256:{kept}"]
    assert doc["layers"][1] == manifest.blob_layers[0].raw
    ann = doc["layers"][-1]["annotations"]
    assert ann["containerd.io/snapshot/nydus-fs-version"] == "6"
    assert ann["containerd.io/uncompressed"] == json.loads(out.config.data)["rootfs"]["diff_ids"][-1]
    new_config = json.loads(out.config.data)
    assert new_config["history"] == config["history"] and new_config["config"] == config["config"]
    assert new_config["rootfs"]["diff_ids"][:2] == [f"sha256:{new_id}", f"sha256:{kept}"]
    assert doc["config"]["digest"] == out.config.digest
    # Same inputs, same bytes.
    again = compose(b"boot", 6, [new_id, kept], {new_id: 10}, base_manifest=manifest.doc, base_config=config,
                    source_layers={kept: manifest.blob_layers[0].raw}, source_bootstrap_layer=manifest.bootstrap_layer.raw)
    assert (again.manifest.data, again.config.data, again.bootstrap_layer.data) == (
        out.manifest.data, out.config.data, out.bootstrap_layer.data)


def test_reference_blob_ids_are_recomputed():
    manifest = Manifest.parse((OCI / "nydusify-example.manifest.json").read_bytes(), "example")
    refs = json.loads(manifest.bootstrap_layer.annotations[ANN_REFERENCE_BLOBS])
    layers = {d.hex: d.raw for d in manifest.blob_layers}
    table = [refs[0], manifest.blob_layers[1].hex]
    out = compose(b"b", 5, table, {}, base_manifest=manifest.doc, base_config={}, source_layers=layers,
                  source_bootstrap_layer=manifest.bootstrap_layer.raw, was_reference={refs[0]})
    doc = json.loads(out.manifest.data)
    assert json.loads(doc["layers"][-1]["annotations"][ANN_REFERENCE_BLOBS]) == [refs[0]]
    assert [d["digest"] for d in doc["layers"][:-1]] == [f"sha256:{manifest.blob_layers[1].hex}"]
    out = compose(b"b", 5, table[1:], {}, base_manifest=manifest.doc, base_config={}, source_layers=layers,
                  source_bootstrap_layer=manifest.bootstrap_layer.raw)
    assert ANN_REFERENCE_BLOBS not in json.loads(out.manifest.data)["layers"][-1]["annotations"]


def test_nydus_index_entry_is_recognised():
    index = Index.parse((OCI / "nydusify-example.index.json").read_bytes(), "index")
    assert [is_nydus_entry(e) for e in index.manifests] == [False, True]
    assert index.manifests[0].media_type == DOCKER_MANIFEST


def test_not_a_nydus_manifest_has_no_bootstrap_layer():
    doc = json.loads((OCI / "ubuntu-22.04-nydus.manifest.json").read_text())
    doc["layers"][-1]["annotations"].pop("containerd.io/snapshot/nydus-bootstrap")
    assert Manifest.parse(json.dumps(doc).encode(), "x").bootstrap_layer is None
    with pytest.raises(ImageError, match="not a sha256 digest"):
        doc["layers"][0]["digest"] = "md5:00"
        Manifest.parse(json.dumps(doc).encode(), "x")
