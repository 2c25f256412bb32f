"""The http-proxy backend (issue 14) against a small HTTP server started here, over TCP and a unix socket.

The server serves a directory: ``HEAD`` with Content-Length, ``GET`` with or without ``Range``.
plan → apply through it must give the localfs result byte for byte; backend-config shapes and the
one-line refusals (a missing blob, a bad ``addr``, ``oss``) are checked through the CLI.
"""

from __future__ import annotations

import json
import re
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers.compact_env import REBUILD_AND_MERGE, Image, build, cli, compact
from helpers.remote import apply_args, assert_one_line_error, collect, plan_args, run_localfs

from nydus_compact.backends.config import parse_backend_config
from nydus_compact.backends.errors import BackendError
from nydus_compact.backends.http_proxy import HttpProxyBackend
from nydus_compact.rafs.loader import load_bootstrap

RANGE = re.compile(r"bytes=(\d+)-(\d+)")


class BlobHandler(BaseHTTPRequestHandler):
    """Files of ``server.root`` under ``/prefix/NAME``; every request path is recorded."""

    protocol_version = "HTTP/1.1"

    def _file(self) -> Path | None:
        self.server.requests.append((self.command, self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        prefix, _, name = self.path.rpartition("/")
        path = self.server.root / name  # type: ignore[attr-defined]
        if prefix != self.server.prefix or not path.is_file():  # type: ignore[attr-defined]
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return path

    def do_HEAD(self) -> None:
        if (path := self._file()) is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.end_headers()

    def do_GET(self) -> None:
        if (path := self._file()) is None:
            return
        data = path.read_bytes()
        m = RANGE.fullmatch(self.headers.get("Range", ""))
        if m:
            start, end = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # type: ignore[no-untyped-def]
        request, _ = super().get_request()
        return request, ("unix", 0)  # BaseHTTPRequestHandler wants a (host, port) client address


def serve(server: socketserver.BaseServer, root: Path, prefix: str) -> Iterator[socketserver.BaseServer]:
    server.root, server.prefix, server.requests = root, prefix, []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def image(layers: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(layers, tmp_path_factory.mktemp("v6") / "image", 6)


@pytest.fixture(scope="module")
def tcp(image: Image) -> Iterator[socketserver.BaseServer]:
    yield from serve(ThreadingHTTPServer(("127.0.0.1", 0), BlobHandler), image.blobs, "/nydus/blobs")


@pytest.fixture(scope="module")
def unix(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[socketserver.BaseServer]:
    sock = tmp_path_factory.mktemp("sock") / "blobs.sock"
    yield from serve(UnixHTTPServer(str(sock), BlobHandler), image.blobs, "/nydus/blobs")


def addr_of(server: socketserver.BaseServer) -> str:
    if isinstance(server, UnixHTTPServer):
        return server.server_address  # type: ignore[return-value]
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def config_args(file: Path, shape: str, **cfg: object) -> list[str | Path]:
    doc = {
        "v2": {"version": 2, "backend": {"type": "http-proxy", "http-proxy": cfg}},
        "v1": {"device": {"backend": {"type": "http-proxy", "config": cfg}}, "mode": "direct"},
        "raw": cfg,
    }[shape]
    file.write_text(json.dumps(doc))
    return ["--backend-config", file, *(["--backend-type", "http-proxy"] if shape == "raw" else [])]


@pytest.mark.parametrize(("transport", "shape"), [("tcp", "v2"), ("unix", "v1"), ("unix", "raw")])
def test_apply_through_http_proxy_matches_localfs(image, tcp, unix, tmp_path, transport, shape):
    server = {"tcp": tcp, "unix": unix}[transport]
    server.requests.clear()
    backend = config_args(tmp_path / "hp.json", shape, addr=addr_of(server), path="nydus/blobs/")
    local, _ = run_localfs(image, tmp_path / "local", REBUILD_AND_MERGE)
    root = tmp_path / "remote"
    root.mkdir()

    assert (r := cli(*plan_args(image, root, backend, REBUILD_AND_MERGE))).rc == 0, r.err
    r = cli(*apply_args(root, backend), "--verify")  # kept blobs from the server, new ones from staging

    assert r.rc == 0 and r.err.startswith("applied: ") and ": OK: 3 blobs" in r.err, r.out + r.err
    remote = collect(root, root / "staging")
    assert (remote.bootstrap, remote.blobs) == (local.bootstrap, local.blobs)
    methods = {m for m, _, _ in server.requests}
    assert methods == {"HEAD", "GET"}
    assert all(rng is not None for m, _, rng in server.requests if m == "GET")  # ranges only, never whole blobs
    assert all(p.startswith("/nydus/blobs/") for _, p, _ in server.requests)


def test_missing_blob_fails_the_plan(image, tcp, tmp_path):
    backend = config_args(tmp_path / "hp.json", "v2", addr=addr_of(tcp), path="/elsewhere")
    blob = load_bootstrap(image.boot).blobs[0].blob_id

    r = compact(*plan_args(image, tmp_path, backend, REBUILD_AND_MERGE))

    err = assert_one_line_error(r)
    assert f"blob {blob} not found at http-proxy {addr_of(tcp)} (HEAD {addr_of(tcp)}/elsewhere/{blob}: HTTP 404)" in err
    assert not (tmp_path / "plan.yaml").exists()


def test_reads_are_exact_and_concurrent_reads_keep_their_order(image, unix):
    blobs = sorted(image.blobs.iterdir())
    with HttpProxyBackend(addr_of(unix), "/nydus/blobs") as be:
        data = blobs[0].read_bytes()
        assert be.blob_size(blobs[0].name) == len(data)
        reads = [(blobs[0].name, off, 100) for off in range(0, len(data) - 100, len(data) // 9)]
        assert list(be.read_many(reads)) == [data[o : o + n] for _, o, n in reads]
        with pytest.raises(BackendError, match="short read|HTTP 416"):
            be.read_exact(blobs[0].name, len(data) - 10, 20)


@pytest.mark.parametrize(
    ("text", "backend_type", "message"),
    [
        ('{"version": 2, "backend": {"type": "http-proxy", "http-proxy": {"addr": "ftp://x"}}}', None,
         "http-proxy backend needs `addr`: an http(s):// URL or the absolute path of a unix socket"),
        ('{"addr": "/nonexistent/blobs.sock"}', "http-proxy", "http-proxy addr /nonexistent/blobs.sock: No such file"),
        ('{"addr": "/"}', "http-proxy", "http-proxy addr / is not a unix socket"),
        ('{"version": 2, "backend": {"type": "oss", "oss": {"endpoint": "e", "bucket_name": "b"}}}', None,
         "backend type 'oss' is not supported (supported: localfs, registry, s3, http-proxy)"),
        ('{"endpoint": "e", "bucket_name": "b"}', "s3", "s3 backend needs `region`"),
    ],
)
def test_bad_configs_are_refused_with_one_line(text, backend_type, message):
    with pytest.raises(BackendError) as exc:
        parse_backend_config(text, "cfg.json", backend_type)
    assert message in str(exc.value) and "\n" not in str(exc.value)
