"""Backend config files in the three shapes of compact.md §5.1, and opening the backend they name."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nydus_compact.backends.config import load_backend_config, open_backend, parse_backend_config
from nydus_compact.backends.errors import BackendError
from nydus_compact.backends.localfs import LocalFsBackend
from nydus_compact.backends.registry import RegistryBackend

AUTH = "dXNlcjpzM2NyZXQtcGFzcw=="  # base64("user:s3cret-pass")
TOKEN = "bearer-t0ken-value"
REGISTRY = {
    "scheme": "http",
    "host": "127.0.0.1:5999",
    "repo": "team/app",
    "auth": AUTH,
    "registry_token": TOKEN,
    "timeout": 3,
    "connect_timeout": 2,
    "retry_limit": 2,
    "skip_verify": True,
}


def _write(tmp_path: Path, text: str, name: str = "backend.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _shapes(btype: str, cfg: dict, tmp_path: Path) -> list[tuple[Path, str | None]]:
    """The same backend written in each accepted shape, with the --backend-type each needs."""
    toml_fields = "\n".join(f"{k} = {json.dumps(v)}" for k, v in cfg.items())
    v2_toml = f'version = 2\n[backend]\ntype = "{btype}"\n[backend.{btype}]\n{toml_fields}\n'
    v1 = {"device": {"backend": {"type": btype, "config": cfg}, "cache": {"type": ""}}, "mode": "direct"}
    return [
        (_write(tmp_path, json.dumps({"version": 2, "backend": {"type": btype, btype: cfg}}), "v2.json"), None),
        (_write(tmp_path, v2_toml, "v2.toml"), None),
        (_write(tmp_path, json.dumps(v1), "v1.json"), None),
        (_write(tmp_path, json.dumps(cfg), "raw.json"), btype),
    ]


def test_localfs_in_every_shape(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / ("a" * 64)).write_bytes(b"hello")
    cfg = {"dir": str(blobs), "alt_dirs": [str(tmp_path / "alt")]}
    for path, btype in _shapes("localfs", cfg, tmp_path):
        bcfg = load_backend_config(path, btype)
        assert (bcfg.type, bcfg.config) == ("localfs", cfg), path
        with open_backend(bcfg) as be:
            assert isinstance(be, LocalFsBackend)
            assert be.read_exact("a" * 64, 1, 3) == b"ell"


def test_registry_in_every_shape(tmp_path: Path) -> None:
    for path, btype in _shapes("registry", REGISTRY, tmp_path):
        bcfg = load_backend_config(path, btype)
        assert (bcfg.type, bcfg.config) == ("registry", REGISTRY), path
        with open_backend(bcfg) as be:
            assert isinstance(be, RegistryBackend)
            assert be.describe() == {"type": "registry", "scheme": "http", "host": "127.0.0.1:5999", "repo": "team/app"}
            assert be.retry_limit == 2
            timeout = be._client.timeout
            assert (timeout.read, timeout.connect) == (3, 2)


def test_registry_defaults() -> None:
    bcfg = parse_backend_config(json.dumps({"host": "reg.example", "repo": "library/ubuntu"}), "raw", "registry")
    with open_backend(bcfg) as be:
        assert be.describe()["scheme"] == "https"
        assert be.retry_limit == 0
        assert (be._client.timeout.read, be._client.timeout.connect) == (5, 5)


@pytest.mark.parametrize(
    ("text", "btype", "message"),
    [
        ('{"version": 2, "backend": {"type": "registry", "registry": {"repo": "a/b"}}}', None, "needs `host`"),
        ('{"version": 2, "backend": {"type": "registry", "registry": {"host": "h"}}}', None, "needs `repo`"),
        ('{"version": 2, "backend": {"type": "registry"}}', None, "missing the section"),
        ('{"version": 2, "backend": {"type": "localfs", "localfs": {}}}', None, "needs `dir` or `blob_file`"),
        ('{"device": {"backend": {"type": "localfs", "config": {"dir": "/x"}}}}', None, "mode: missing"),
        ('{"version": 2, "backend": {"type": "ftp", "ftp": {}}}', None, "unknown"),
        ('{"version": 2, "backend": {"type": "oss", "oss": {}}}', None, "not supported"),
        ('{"host": "h", "repo": "a/b"}', None, "--backend-type"),
        ('{"host": "h", "repo": "a/b"}', "ftp", "--backend-type 'ftp'"),
        ('{"dir": "/x", "alt_dirs": "/y"}', "localfs", "alt_dirs"),
        ("[1, 2]", None, "must be an object"),
        ("{not json = nor toml", None, "neither JSON nor TOML"),
    ],
)
def test_parse_errors(text: str, btype: str | None, message: str) -> None:
    with pytest.raises(BackendError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_backend_config(text, "cfg.json", btype)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"timeout": "5"}, "`timeout` must be of type int or float"),
        ({"timeout": True}, "`timeout` must be of type int or float"),
        ({"timeout": 0}, "timeout and connect_timeout must be > 0"),
        ({"retry_limit": -1}, "retry_limit must be >= 0"),
        ({"retry_limit": 1.5}, "`retry_limit` must be of type int"),
        ({"skip_verify": "yes"}, "`skip_verify` must be of type bool"),
        ({"auth": 12345}, "`auth` must be of type str"),
        ({"auth": "not base64!"}, "auth is not valid base64"),
        ({"auth": "bm9jb2xvbg=="}, "auth must be base64 of user:pass"),
        ({"mirrors": [{"host": "m.example"}]}, "mirrors are not supported"),
        ({"proxy": {"url": 5}}, "proxy: `url` must be of type str"),
        ({"host": "h/evil?x="}, "invalid host"),
        ({"repo": "Team/App"}, "invalid repo"),
    ],
)
def test_registry_field_errors(extra: dict, message: str) -> None:
    bcfg = parse_backend_config(json.dumps({"host": "reg.example", "repo": "team/app", **extra}), "r.json", "registry")
    with pytest.raises(BackendError, match=message.replace("(", r"\(")) as exc:
        open_backend(bcfg)
    if "auth" in extra:
        assert str(extra["auth"]) not in str(exc.value)


def test_proxy_url_is_used() -> None:
    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 (http.server API)
            seen.append(self.path)  # a proxy gets the absolute URL
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        proxy = {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "fallback": True}
        text = json.dumps({"scheme": "http", "host": "reg.invalid", "repo": "a/b", "proxy": proxy})
        with open_backend(parse_backend_config(text, "r.json", "registry")) as be:
            with pytest.raises(BackendError, match="not found in registry reg.invalid/a/b"):
                be.blob_size("c" * 64)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert seen == [f"http://reg.invalid/v2/a/b/blobs/sha256:{'c' * 64}"]


def test_file_limits(tmp_path: Path) -> None:
    big = _write(tmp_path, " " * (1024 * 1024 + 1))
    with pytest.raises(BackendError, match="more than the 1 MiB"):
        load_backend_config(big)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(BackendError, match="not UTF-8"):
        load_backend_config(binary)
    with pytest.raises(BackendError, match="cannot read"):
        load_backend_config(tmp_path / "absent.json")


def test_no_secret_in_fingerprint_describe_or_repr(tmp_path: Path) -> None:
    for path, btype in _shapes("registry", REGISTRY, tmp_path):
        bcfg = load_backend_config(path, btype)
        fingerprint = bcfg.fingerprint()
        assert fingerprint == {
            "type": "registry",
            "scheme": "http",
            "host": "127.0.0.1:5999",
            "repo": "team/app",
            "authenticated": True,
        }
        with open_backend(bcfg) as be:
            shown = json.dumps(fingerprint) + json.dumps(be.describe()) + repr(be) + str(be)
        for secret in (AUTH, TOKEN, "s3cret-pass"):
            assert secret not in shown
