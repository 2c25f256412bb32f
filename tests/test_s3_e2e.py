"""plan → apply end to end against a real S3 endpoint (issue 14): moto's server on 127.0.0.1.

Images are real builder output whose blobs are put in a bucket under a prefix. ``compact plan``
sizes them with HEAD, ``compact apply`` reads chunks with Range GETs, stages the new blobs and
uploads them under the prefix; the result must be byte-identical to a localfs run. Faults:
SIGKILL after an upload and in the middle of a multipart upload, a missing object, a wrong
bucket, an unreachable endpoint; secrets are looked for in everything the tool writes or prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
)
from registry_server import free_port
from s3_server import MOTO, REGION, MotoServer, serve

from nydus_compact.backends import s3 as s3_module
from nydus_compact.backends.config import load_backend_config, open_backend
from nydus_compact.mkimage.sample import make_sample_layers
from nydus_compact.planner.planfile import load_plan
from nydus_compact.rafs.loader import load_bootstrap

pytestmark = pytest.mark.skipif(not MOTO, reason="moto[server] is not installed (the `test` extra installs it)")

PREFIX = "team/app/blobs/"
KEY_ID, SECRET = "AKIAS3E2ETESTKEY0001", "s3e2e/Secret+Key-do-not-leak"
BIG_SCALE = 16  # the sample at 16x: one ~12 MiB new blob under MERGE_ALL, more than one 8 MiB part


def s3_args(path: Path, shape: str, endpoint: str, bucket: str, **fields: object) -> list[str | Path]:
    """Writes an s3 config in one of the shapes of compact.md §5.1; the CLI arguments naming it."""
    cfg = {
        "scheme": "http", "endpoint": endpoint, "region": REGION, "bucket_name": bucket, "object_prefix": PREFIX,
        "access_key_id": KEY_ID, "access_key_secret": SECRET, **fields,
    }
    if shape == "toml":
        lines = ["version = 2", "[backend]", 'type = "s3"', "[backend.s3]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in cfg.items()]
        path.write_text("\n".join(lines) + "\n")
    else:
        doc = {
            "v2": {"version": 2, "backend": {"type": "s3", "s3": cfg}},
            "v1": {"device": {"backend": {"type": "s3", "config": cfg}}, "mode": "direct"},
            "raw": cfg,
        }[shape]
        path.write_text(json.dumps(doc))
    return ["--backend-config", path, *(["--backend-type", "s3"] if shape == "raw" else [])]


def bucket_with(moto: MotoServer, name: str, image: Image, skip: str | None = None, versioned: bool = False) -> str:
    client = moto.client()
    client.create_bucket(Bucket=name)
    if versioned:  # every PUT becomes a version: an upload done twice shows up
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    moto.put_dir(name, PREFIX, image.blobs, skip=skip)
    return name


def versions(moto: MotoServer, bucket: str) -> dict[str, int]:
    listing = moto.client().list_object_versions(Bucket=bucket, Prefix=PREFIX).get("Versions", [])
    out: dict[str, int] = {}
    for v in listing:
        out[v["Key"]] = out.get(v["Key"], 0) + 1
    return out


def assert_uploaded(moto: MotoServer, bucket: str, outcome: Outcome, before: dict[str, bytes]) -> None:
    """The new blobs are in the bucket under the prefix, and every object that was there still is."""
    now = moto.objects(bucket, PREFIX)
    for blob_id, data in outcome.blobs.items():
        assert now[PREFIX + blob_id] == data
    assert {k: now.get(k) for k in before} == before


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    yield from serve()


@pytest.fixture(scope="module")
def v5_image(layers: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(layers, tmp_path_factory.mktemp("v5") / "image", 5)


# ---- 1. the same result as localfs, from every config shape ----------------------------------


@pytest.mark.parametrize(("version", "shape"), [(5, "raw"), (6, "v2"), (5, "v1"), (6, "toml")])
def test_apply_from_s3_matches_localfs(layers, moto, tmp_path, version, shape):
    image = build(layers, tmp_path / "image", version)
    bucket = bucket_with(moto, f"e2e-v{version}-{shape}", image)
    before = moto.objects(bucket)
    backend = s3_args(tmp_path / "s3.cfg", shape, moto.endpoint, bucket)
    local, _ = run_localfs(image, tmp_path / "local", REBUILD_AND_MERGE)

    remote, _ = run_remote(image, tmp_path / "s3", backend, REBUILD_AND_MERGE)

    plan, _ = load_plan(remote.plan)
    assert {b.decision for b in plan.blobs} == {"keep", "delete", "rebuild", "merge"}
    assert plan.backend == {
        "type": "s3", "scheme": "http", "endpoint": moto.endpoint, "region": REGION, "bucket_name": bucket,
        "object_prefix": PREFIX, "authenticated": True,
    }
    assert len(remote.blobs) == 2
    assert remote.bootstrap == local.bootstrap
    assert remote.blobs == local.blobs
    assert_uploaded(moto, bucket, remote, before)
    v = cli("verify", remote.new_boot, *backend)
    assert v.rc == 0 and f"verify {remote.new_boot}: OK: 3 blobs" in v.out, v.out + v.err
    again = cli(*apply_args(remote.root, backend))
    assert again.rc == 0 and again.err.startswith("already applied"), again.out + again.err


# ---- 2. no secret anywhere --------------------------------------------------------------------


def test_secrets_stay_out_of_every_output(v5_image, moto, tmp_path):
    bucket = bucket_with(moto, "e2e-secrets", v5_image)
    backend = s3_args(tmp_path / "s3.json", "v2", moto.endpoint, bucket)
    wrong = s3_args(tmp_path / "wrong.json", "v2", moto.endpoint, "e2e-no-such-bucket")
    root = tmp_path / "run"
    root.mkdir()

    runs = [
        compact("--debug", *plan_args(v5_image, root, backend, REBUILD_AND_MERGE), "--json"),
        compact("--debug", *apply_args(root, backend), "--verify"),
        compact("--debug", "verify", root / "new.boot", *backend),
        compact("--debug", "report", root / "plan.yaml"),
        compact("--debug", "report", root / "plan.yaml", "-o", root / "report.html"),
        compact("--debug", "show", root / "plan.yaml"),
        # Fails: with --debug, a traceback.
        compact("--debug", "plan", v5_image.boot, *wrong, "-o", tmp_path / "wrong.yaml", "--state", tmp_path / "w.db"),
    ]

    for r in runs[:-1]:
        assert r.rc == 0, r.out + r.err
    assert runs[-1].rc == 1 and "Traceback" in runs[-1].err and "HTTP 404" in runs[-1].err
    assert_secrets_nowhere(root, runs, SECRET, KEY_ID)


# ---- 3. killed and resumed: finished blobs are not uploaded again ------------------------------


def test_killed_after_an_upload_resumes_without_uploading_it_again(v5_image, moto, tmp_path):
    bucket = bucket_with(moto, "e2e-kill-upload", v5_image, versioned=True)
    backend = s3_args(tmp_path / "s3.json", "v2", moto.endpoint, bucket)
    local, _ = run_localfs(v5_image, tmp_path / "local", REBUILD_AND_MERGE)
    root = tmp_path / "run"
    root.mkdir()
    assert cli(*plan_args(v5_image, root, backend, REBUILD_AND_MERGE)).rc == 0

    killed = compact(*apply_args(root, backend), fault="upload-done:g0")

    assert killed.rc == -9, killed.err
    first, second = sorted(local.blobs)  # which is g0 does not matter: one is up, the other is not
    up = {k.removeprefix(PREFIX) for k in versions(moto, bucket)} & set(local.blobs)
    assert len(up) == 1

    resumed = compact(*apply_args(root, backend))

    assert resumed.rc == 0 and resumed.err.startswith("resumed and applied: "), resumed.out + resumed.err
    remote = collect(root, root / "staging")
    assert (remote.bootstrap, remote.blobs) == (local.bootstrap, local.blobs)
    assert {k: n for k, n in versions(moto, bucket).items() if k.removeprefix(PREFIX) in local.blobs} == {
        PREFIX + first: 1, PREFIX + second: 1
    }


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    root = tmp_path_factory.mktemp("big")
    return build(make_sample_layers(root / "layers", scale=BIG_SCALE), root / "image", 6)


def test_killed_mid_multipart_upload_aborts_it_and_uploads_again(big_image, moto, tmp_path):
    bucket = bucket_with(moto, "e2e-kill-multipart", big_image, versioned=True)
    backend = s3_args(tmp_path / "s3.json", "raw", moto.endpoint, bucket)
    root = tmp_path / "run"
    root.mkdir()
    assert cli(*plan_args(big_image, root, backend, MERGE_ALL)).rc == 0
    client = moto.client()

    killed = compact(*apply_args(root, backend), fault="s3-part-done:1")

    assert killed.rc == -9, killed.err
    (pending,) = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    blob_id = pending["Key"].removeprefix(PREFIX)
    assert (root / "staging" / blob_id).stat().st_size > 8 << 20  # more than one part
    assert PREFIX + blob_id not in versions(moto, bucket)

    resumed = compact(*apply_args(root, backend))

    assert resumed.rc == 0 and resumed.err.startswith("resumed and applied: "), resumed.out + resumed.err
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert versions(moto, bucket)[PREFIX + blob_id] == 1
    assert moto.objects(bucket, PREFIX + blob_id)[PREFIX + blob_id] == (root / "staging" / blob_id).read_bytes()
    assert [p.name for p in (root / "staging").iterdir() if p.name.startswith(s3_module.UPLOAD_MARKER)] == []
    v = cli("verify", root / "new.boot", *backend)
    assert v.rc == 0 and ": OK: " in v.out, v.out + v.err


# ---- 4. faults: one line naming the endpoint ---------------------------------------------------


def test_missing_object_fails_the_plan_before_anything_is_written(v5_image, moto, tmp_path):
    plan_reads = load_bootstrap(v5_image.boot).blobs[0].blob_id  # rebuilt by REBUILD_AND_MERGE
    bucket = bucket_with(moto, "e2e-missing", v5_image, skip=plan_reads)
    backend = s3_args(tmp_path / "s3.json", "v2", moto.endpoint, bucket)

    r = compact(*plan_args(v5_image, tmp_path, backend, REBUILD_AND_MERGE))

    err = assert_one_line_error(r)
    assert f"blob {plan_reads} not found in s3 {moto.url} bucket {bucket}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s3.json"]


def test_wrong_bucket_names_endpoint_and_status(v5_image, moto, tmp_path):
    backend = s3_args(tmp_path / "s3.json", "v2", moto.endpoint, "e2e-no-such-bucket")

    r = compact(*plan_args(v5_image, tmp_path, backend, REBUILD_AND_MERGE))

    err = assert_one_line_error(r, SECRET)
    assert f"s3 {moto.url} bucket e2e-no-such-bucket: HEAD bucket: HTTP 404 (no such bucket)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s3.json"]


def test_unreachable_endpoint_fails_in_seconds(v5_image, tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    backend = s3_args(tmp_path / "s3.json", "v1", endpoint, "e2e-bucket", connect_timeout=1, timeout=1, retry_limit=1)

    started = time.monotonic()
    r = compact(*plan_args(v5_image, tmp_path, backend, REBUILD_AND_MERGE))

    assert time.monotonic() - started < 15
    err = assert_one_line_error(r, SECRET)
    assert f"s3 http://{endpoint} bucket e2e-bucket: HEAD {PREFIX}" in err and "Could not connect" in err


# ---- 5. credentials, first found wins; no metadata endpoint ever -------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No AWS settings from the machine: empty shared files under tmp_path, no AWS_* variables."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    return tmp_path


def used_credentials(tmp_path: Path, **fields: object):  # type: ignore[no-untyped-def]
    cfg = {"endpoint": "127.0.0.1:9", "scheme": "http", "region": REGION, "bucket_name": "creds", **fields}
    (tmp_path / "s3.json").write_text(json.dumps(cfg))
    backend = open_backend(load_backend_config(tmp_path / "s3.json", "s3"))
    signer = backend._client._request_signer
    return signer._signature_version, signer._credentials


def test_credentials_config_then_environment_then_profile_then_anonymous(aws_env, monkeypatch):
    import os

    (aws_env / "credentials").write_text("[team]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_PROFILE", "team")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")

    _, creds = used_credentials(aws_env, access_key_id="CFGKEY", access_key_secret="cfg-secret")
    assert (creds.access_key, creds.secret_key) == ("CFGKEY", "cfg-secret")

    _, creds = used_credentials(aws_env)
    assert (creds.access_key, creds.secret_key, creds.token) == ("ENVKEY", "env-secret", "env-token")

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    _, creds = used_credentials(aws_env)
    assert (creds.access_key, creds.secret_key) == ("PROFILEKEY", "profile-secret")

    monkeypatch.delenv("AWS_PROFILE")
    signature, creds = used_credentials(aws_env)
    assert creds is None and signature is s3_module.UNSIGNED
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"


def test_no_credential_provider_asks_a_metadata_endpoint(aws_env):
    session = s3_module.botocore.session.Session()
    resolver = session.get_component("credential_provider")
    for method in s3_module.METADATA_PROVIDERS:
        resolver.remove(method)
    assert not {"iam-role", "container-role"} & {p.METHOD for p in resolver.providers}
    # And the backend's own session resolves to anonymous without any network access.
    signature, creds = used_credentials(aws_env)
    assert creds is None and signature is s3_module.UNSIGNED


def test_anonymous_reads_of_a_public_bucket(moto, aws_env):
    client = moto.client()
    client.create_bucket(Bucket="e2e-public")
    client.put_object(Bucket="e2e-public", Key=PREFIX + "ab" * 32, Body=b"public bytes", ACL="public-read")
    (aws_env / "s3.json").write_text(json.dumps(
        {"endpoint": moto.endpoint, "scheme": "http", "region": REGION, "bucket_name": "e2e-public", "object_prefix": PREFIX}
    ))
    with open_backend(load_backend_config(aws_env / "s3.json", "s3")) as backend:
        assert backend.read_exact("ab" * 32, 7, 5) == b"bytes"


# ---- 6. start-up: only s3 users import the S3 client --------------------------------------------


def test_other_commands_do_not_import_the_s3_client(v5_image, tmp_path):
    r = compact("--help", python_flags=("-X", "importtime"))
    assert r.rc == 0
    assert "botocore" not in r.err and "boto3" not in r.err
    code = (
        "import sys; from nydus_compact.cli.main import main; "
        f"rc = main(['plan', {str(v5_image.boot)!r}, '--blobs-dir', {str(v5_image.blobs)!r}, "
        f"'-o', {str(tmp_path / 'plan.yaml')!r}]); "
        "assert rc == 0, rc; assert 'botocore' not in sys.modules, 'botocore imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
