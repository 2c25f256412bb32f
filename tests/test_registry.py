"""The registry backend (compact.md §5.2) against real ``docker-registry`` processes on 127.0.0.1.

Redirect caching, servers that ignore ``Range`` and 5xx retries cannot be provoked from a
filesystem-backed docker-registry, so those run against a small fake registry (http.server).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from nydus_compact.backends.config import load_backend_config, open_backend
from nydus_compact.backends.errors import BackendError
from nydus_compact.backends.registry import RegistryBackend, parse_www_authenticate
from registry_server import REGISTRY_BIN, RegistryServer, basic_auth, serve

pytestmark = pytest.mark.skipif(REGISTRY_BIN is None, reason="docker-registry is not installed (.ci/run installs it)")

REPO = "team/app"
USER, PASSWORD = "alice", "pa55-w0rd!"


def _blob(tmp: Path, size: int, seed: int) -> tuple[str, Path, bytes]:
    data = random.Random(seed).randbytes(size)
    blob_id = hashlib.sha256(data).hexdigest()
    path = tmp / blob_id
    path.write_bytes(data)
    return blob_id, path, data


def _server(tmp_path_factory: pytest.TempPathFactory, auth: str | None) -> Iterator[RegistryServer]:
    yield from serve(tmp_path_factory, auth, {USER: PASSWORD})


@pytest.fixture(scope="module")
def anon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from _server(tmp_path_factory, None)


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from _server(tmp_path_factory, "htpasswd")


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    yield from _server(tmp_path_factory, "token")


def _sent(backend: RegistryBackend) -> list[httpx.Request]:
    """Records every request the backend's client sends from now on."""
    seen: list[httpx.Request] = []
    backend._client.event_hooks["request"].append(seen.append)
    return seen


def _methods(sent: list[httpx.Request]) -> list[str]:
    return [r.method for r in sent]


def _assert_auth_error(exc: pytest.ExceptionInfo[BackendError], host: str, *secrets: str) -> None:
    message = str(exc.value)
    assert message == f"registry {host}: authentication failed (401) for {REPO}"
    assert "\n" not in message
    for secret in secrets:
        assert secret not in message and secret not in repr(exc.value)


# ---- anonymous registry ---------------------------------------------------------------------


def test_upload_size_and_range_reads(anon: RegistryServer, tmp_path: Path) -> None:
    blobs = [_blob(tmp_path, size, seed) for seed, size in enumerate((1, 70_000, 1_000_003))]
    with RegistryBackend("http", anon.host, REPO) as be:
        for blob_id, path, data in blobs:
            assert be.upload_blob(blob_id, path) is True
            assert be.blob_size(blob_id) == len(data)
        blob_id, _, data = blobs[2]
        for offset, size in ((0, 1), (0, len(data)), (len(data) - 1, 1), (4095, 4097), (500_000, 123_456)):
            assert be.read_exact(blob_id, offset, size) == data[offset : offset + size]
        assert be.read_exact(blob_id, 17, 0) == b""
        assert be.read_exact(blobs[0][0], 0, 1) == blobs[0][2]


def test_read_past_end_is_a_short_read(anon: RegistryServer, tmp_path: Path) -> None:
    blob_id, path, data = _blob(tmp_path, 5000, 10)
    with RegistryBackend("http", anon.host, REPO) as be:
        be.upload_blob(blob_id, path)
        with pytest.raises(BackendError, match="short read"):
            be.read_exact(blob_id, 4000, 2000)
        with pytest.raises(BackendError, match="short read"):
            be.read_exact(blob_id, 6000, 10)
        with pytest.raises(BackendError, match="invalid range"):
            be.read_exact(blob_id, -1, 10)


def test_read_ranges_coalesces_nearby_chunks(anon: RegistryServer, tmp_path: Path) -> None:
    blob_id, path, data = _blob(tmp_path, 600_000, 3)
    # Unsorted, overlapping and repeated; the first four lie within 64 KiB of each other, the
    # last is far away: two requests in all.
    ranges = [(30_000, 500), (0, 1000), (1000, 20_000), (30_100, 50), (0, 1000), (500_000, 99_999)]
    with RegistryBackend("http", anon.host, REPO) as be:
        be.upload_blob(blob_id, path)
        sent = _sent(be)
        assert be.read_ranges(blob_id, ranges) == [data[o : o + s] for o, s in ranges]
    assert _methods(sent) == ["GET", "GET"]


def test_missing_blob(anon: RegistryServer) -> None:
    missing = "0" * 64
    with RegistryBackend("http", anon.host, REPO) as be:
        expected = f"blob {missing} not found in registry {anon.host}/{REPO}"
        with pytest.raises(BackendError) as exc:
            be.blob_size(missing)
        assert str(exc.value) == expected
        with pytest.raises(BackendError) as exc:
            be.read_exact(missing, 0, 10)
        assert str(exc.value) == expected
        assert be.has_blob(missing) is False
        with pytest.raises(BackendError, match="64 lower-case hex"):
            be.read_exact("../../etc/passwd", 0, 1)


def test_upload_skips_present_blob(anon: RegistryServer, tmp_path: Path) -> None:
    blob_id, path, _ = _blob(tmp_path, 10_000, 4)
    with RegistryBackend("http", anon.host, REPO) as be:
        assert be.upload_blob(blob_id, path) is True
        sent = _sent(be)
        assert be.upload_blob(blob_id, path) is False
    assert _methods(sent) == ["HEAD"]


def test_upload_refuses_blob_whose_id_is_not_its_sha256(anon: RegistryServer, tmp_path: Path) -> None:
    path = tmp_path / "v6-blob"
    path.write_bytes(b"blob with a ToC")
    wrong_id = "ab" * 32
    with RegistryBackend("http", anon.host, REPO) as be:
        sent = _sent(be)
        with pytest.raises(BackendError, match="ToC"):
            be.upload_blob(wrong_id, path)
        assert be.has_blob(wrong_id) is False
    assert _methods(sent) == ["HEAD"]  # only has_blob's: nothing was sent for the refused upload


@pytest.mark.parametrize("size", [100, 3 * (1 << 20) + 7], ids=["monolithic", "chunked"])
def test_a_file_named_by_content_is_trusted_by_us_and_checked_by_the_registry(
    anon: RegistryServer, tmp_path: Path, size: int
) -> None:
    """apply's new blobs are not hashed again before their upload; a file that does not match its
    name is still refused, by the registry's digest check when the upload completes."""
    blob_id, path, data = _blob(tmp_path, size, 8)
    with RegistryBackend(
        "http", anon.host, REPO, monolithic_upload_max=1 << 20, upload_chunk_size=1 << 20
    ) as be:
        assert be.upload_blob(blob_id, path, named_by_content=True) is True
        assert hashlib.sha256(be.read_exact(blob_id, 0, len(data))).hexdigest() == blob_id
        other = "cd" * 32
        with pytest.raises(BackendError, match=f"blob {other}"):
            be.upload_blob(other, path, named_by_content=True)
        assert be.has_blob(other) is False


def test_a_blob_streamed_while_written_is_committed_without_reading_the_file(anon: RegistryServer, tmp_path: Path) -> None:
    """UploadStream sends the bytes as they come (PATCHes of upload_chunk_size on a worker); the
    upload then only commits the session: the file is never sent."""
    blob_id, path, data = _blob(tmp_path, 3 * (1 << 20) + 99, 11)
    with RegistryBackend("http", anon.host, REPO, upload_chunk_size=1 << 20) as be:
        sent = _sent(be)
        stream = be.stream_upload()
        for k in range(0, len(data), 300_000):  # written in pieces that are not the upload's parts
            stream.write(memoryview(data)[k : k + 300_000])
        stream.close()
        assert be.has_blob(blob_id) is False  # nothing is committed before the upload step
        path.write_bytes(b"x" * len(data))  # were the file read, the digest check would refuse it
        assert be.upload_blob(blob_id, path, named_by_content=True, streamed=stream) is True
        methods = _methods(sent)
        patches = methods.count("PATCH")
        assert patches >= 3 and methods == ["POST", *["PATCH"] * patches, "HEAD", "HEAD", "PUT", "HEAD"], methods
        assert hashlib.sha256(be.read_exact(blob_id, 0, len(data))).hexdigest() == blob_id


@pytest.mark.parametrize("how", ["aborted", "registry-gone", "short"])
def test_a_stream_that_did_not_complete_leaves_the_upload_to_the_file(
    anon: RegistryServer, tmp_path: Path, how: str
) -> None:
    blob_id, path, data = _blob(tmp_path, (1 << 20) + 5, 12 + len(how))
    with RegistryBackend("http", anon.host, REPO, upload_chunk_size=1 << 16) as be:
        target = RegistryBackend("http", "127.0.0.1:9", REPO) if how == "registry-gone" else be
        stream = target.stream_upload()
        stream.write(data if how != "short" else data[:-1])
        if how == "aborted":
            stream.abort()
        else:
            stream.close()
        assert stream.sent() is None or stream.sent()[1] != len(data)
        assert be.upload_blob(blob_id, path, named_by_content=True, streamed=stream) is True
        assert hashlib.sha256(be.read_exact(blob_id, 0, len(data))).hexdigest() == blob_id


def test_chunked_upload_of_a_large_blob(anon: RegistryServer, tmp_path: Path) -> None:
    blob_id, path, data = _blob(tmp_path, 3 * (1 << 20) + 123, 5)
    with RegistryBackend(
        "http", anon.host, REPO, monolithic_upload_max=1 << 20, upload_chunk_size=1 << 20
    ) as be:
        sent = _sent(be)
        assert be.upload_blob(blob_id, path) is True
        assert _methods(sent) == ["HEAD", "POST", "PATCH", "PATCH", "PATCH", "PATCH", "PUT", "HEAD"]
        assert be.blob_size(blob_id) == len(data)
        assert hashlib.sha256(be.read_exact(blob_id, 0, len(data))).hexdigest() == blob_id


def test_monolithic_upload_below_threshold(anon: RegistryServer, tmp_path: Path) -> None:
    blob_id, path, data = _blob(tmp_path, 2 * (1 << 20), 6)
    with RegistryBackend("http", anon.host, REPO) as be:
        sent = _sent(be)
        assert be.upload_blob(blob_id, path) is True
        assert be.read_exact(blob_id, 1 << 20, 10) == data[1 << 20 : (1 << 20) + 10]
    assert _methods(sent) == ["HEAD", "POST", "PUT", "HEAD", "GET"]


def test_open_backend_from_a_config_file(anon: RegistryServer, tmp_path: Path) -> None:
    blob_id, path, data = _blob(tmp_path, 1000, 7)
    cfg = tmp_path / "registry.json"
    cfg.write_text(json.dumps({"scheme": "http", "host": anon.host, "repo": REPO, "retry_limit": 1}))
    with open_backend(load_backend_config(cfg, "registry")) as be:
        be.upload_blob(blob_id, path)
        assert be.read_exact(blob_id, 10, 20) == data[10:30]
        assert be.describe() == {"type": "registry", "scheme": "http", "host": anon.host, "repo": REPO}


# ---- basic auth -----------------------------------------------------------------------------


def test_basic_auth(basic: RegistryServer, tmp_path: Path) -> None:
    blob_id, path, data = _blob(tmp_path, 50_000, 8)
    with RegistryBackend("http", basic.host, REPO, auth=basic_auth(USER, PASSWORD)) as be:
        assert be.upload_blob(blob_id, path) is True
        assert be.read_exact(blob_id, 100, 200) == data[100:300]
        sent = _sent(be)
        be.read_exact(blob_id, 0, 10)
        assert _methods(sent) == ["GET"]  # the answered challenge is remembered


@pytest.mark.parametrize("auth", [basic_auth(USER, "wrong-password"), None])
def test_basic_auth_wrong_or_missing_credentials(basic: RegistryServer, auth: str | None) -> None:
    with RegistryBackend("http", basic.host, REPO, auth=auth) as be:
        with pytest.raises(BackendError) as exc:
            be.blob_size("1" * 64)
    _assert_auth_error(exc, basic.host, "wrong-password", *([auth] if auth else []))


# ---- bearer tokens (token auth on the real registry) ----------------------------------------


def test_bearer_token_flow(token: RegistryServer, tmp_path: Path) -> None:
    blob_id, path, data = _blob(tmp_path, 80_000, 9)
    assert token.token_server is not None
    with RegistryBackend("http", token.host, REPO, auth=basic_auth(USER, PASSWORD)) as be:
        assert be.upload_blob(blob_id, path) is True
        issued = token.token_server.issued
        for offset in range(0, 80_000, 8_000):
            assert be.read_exact(blob_id, offset, 100) == data[offset : offset + 100]
        assert token.token_server.issued == issued  # tokens are cached, not fetched per request
    # The registry lists a scope's actions in no fixed order.
    scopes = {
        (s.rpartition(":")[0], frozenset(s.rpartition(":")[2].split(",")))
        for q in token.token_server.requests
        for s in q.get("scope", [])
    }
    assert scopes == {(f"repository:{REPO}", frozenset({"pull"})), (f"repository:{REPO}", frozenset({"pull", "push"}))}
    assert all(q.get("service") == ["test-registry"] for q in token.token_server.requests)


def test_expired_bearer_token_is_renewed_before_use(token: RegistryServer, tmp_path: Path) -> None:
    blob_id, path, data = _blob(tmp_path, 2000, 14)
    assert token.token_server is not None
    with RegistryBackend("http", token.host, REPO, auth=basic_auth(USER, PASSWORD)) as be:
        be.upload_blob(blob_id, path)
    token.token_server.expires_in = 6  # valid for 1 s here: renewal starts 5 s before expiry
    try:
        with RegistryBackend("http", token.host, REPO, auth=basic_auth(USER, PASSWORD)) as be:
            be.read_exact(blob_id, 0, 1)
            sent = _sent(be)
            be.read_exact(blob_id, 1, 1)
            time.sleep(1.1)
            assert be.read_exact(blob_id, 2, 1) == data[2:3]
    finally:
        token.token_server.expires_in = 300
    blob_path = f"/v2/{REPO}/blobs/sha256:{blob_id}"
    assert [r.url.path for r in sent] == [blob_path, "/token", blob_path]  # no 401 round trip


def test_registry_token_is_used_directly(token: RegistryServer, tmp_path: Path) -> None:
    blob_id, path, data = _blob(tmp_path, 3000, 11)
    assert token.token_server is not None
    with RegistryBackend("http", token.host, REPO, auth=basic_auth(USER, PASSWORD)) as be:
        be.upload_blob(blob_id, path)
    got = httpx.get(
        token.token_server.realm,
        params={"service": "test-registry", "scope": f"repository:{REPO}:pull"},
        auth=(USER, PASSWORD),
    ).json()["token"]
    issued = token.token_server.issued
    with RegistryBackend("http", token.host, REPO, registry_token=got) as be:
        assert be.read_exact(blob_id, 5, 5) == data[5:10]
    assert token.token_server.issued == issued
    with RegistryBackend("http", token.host, REPO, registry_token="not-a-token") as be:
        with pytest.raises(BackendError) as exc:
            be.read_exact(blob_id, 0, 1)
    _assert_auth_error(exc, token.host, "not-a-token")


def test_bearer_wrong_credentials(token: RegistryServer) -> None:
    auth = basic_auth(USER, "nope-nope")
    with RegistryBackend("http", token.host, REPO, auth=auth) as be:
        with pytest.raises(BackendError) as exc:
            be.blob_size("2" * 64)
    _assert_auth_error(exc, token.host, "nope-nope", auth)


# ---- faults ---------------------------------------------------------------------------------


def _wait_stopped(pid: int) -> None:
    """SIGSTOP takes effect asynchronously: a server thread on the other core may still answer one
    request after os.kill returns, unless we wait for the kernel to report the process stopped."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = {t.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] for t in Path(f"/proc/{pid}/task").iterdir()}
        if states <= {"T", "t"}:  # every thread of the (multi-threaded Go) server
            return
        time.sleep(0.01)
    raise AssertionError(f"registry {pid} did not stop")


def test_registry_stopped_mid_read(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "registry").start()
    try:
        blob_id, path, data = _blob(tmp_path, 10_000, 12)
        with RegistryBackend("http", server.host, REPO, timeout=0.5, connect_timeout=0.5) as be:
            be.upload_blob(blob_id, path)
            assert be.read_exact(blob_id, 0, 100) == data[:100]
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)  # alive but silent: only a timeout ends the read
            _wait_stopped(server.proc.pid)
            try:
                started = time.monotonic()
                with pytest.raises(BackendError, match="timed out"):
                    be.read_exact(blob_id, 100, 100)
                assert time.monotonic() - started < 5
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            server.stop()
            with pytest.raises(BackendError, match=f"registry {server.host}/{REPO}: GET blob"):
                be.read_exact(blob_id, 200, 100)
    finally:
        server.stop()


# ---- behaviour a filesystem-backed registry never shows: a fake registry --------------------


class FakeRegistry:
    """Serves one blob; the registry URL redirects to a storage URL (another origin) that can expire."""

    def __init__(self, data: bytes):
        self.data = data
        self.blob_id = hashlib.sha256(data).hexdigest()
        self.hits: list[str] = []
        self.generation = 0  # storage URLs of older generations answer 403 (expired)
        self.failures = 0  # the next N registry requests answer 503
        self.ignore_range = False
        self.overlong = False
        self.truncate = False  # storage announces the whole range, sends half and hangs up
        self.password = ""  # if set, registry requests need Basic auth with it
        self.storage_authorization: list[str | None] = []
        self.storage_hosts: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                fake.hits.append(self.path)
                if self.path.startswith("/v2/"):
                    expected = f"Basic {basic_auth(USER, fake.password)}"
                    if fake.password and self.headers.get("Authorization") != expected:
                        return self._send(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
                    if fake.failures:
                        fake.failures -= 1
                        return self._send(503)
                    if not self.path.endswith(fake.blob_id):
                        return self._send(404)
                    storage = f"http://localhost:{self.server.server_address[1]}/storage/{fake.generation}"
                    return self._send(307, headers={"Location": storage})
                fake.storage_authorization.append(self.headers.get("Authorization"))
                fake.storage_hosts.append(self.headers.get("Host", ""))
                if self.path != f"/storage/{fake.generation}":
                    return self._send(403)
                if fake.ignore_range or self.command == "HEAD":
                    return self._send(200, fake.data)
                start, end = map(int, self.headers["Range"].removeprefix("bytes=").split("-"))
                body = fake.data[start : end + 1] + (b"extra" if fake.overlong else b"")
                headers = {"Content-Range": f"bytes {start}-{end}/{len(fake.data)}"}
                if fake.truncate:
                    self.send_response(206)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                return self._send(206, body, headers)

            do_HEAD = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def registry_hits(self) -> int:
        return sum(p.startswith("/v2/") for p in self.hits)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry(random.Random(13).randbytes(100_000))
    yield server
    server.close()


def test_redirect_is_cached_and_dropped_when_it_expires(fake: FakeRegistry) -> None:
    with RegistryBackend("http", fake.host, REPO) as be:
        assert be.blob_size(fake.blob_id) == len(fake.data)
        for offset in (0, 1000, 50_000):
            assert be.read_exact(fake.blob_id, offset, 10) == fake.data[offset : offset + 10]
        assert fake.registry_hits() == 2  # the HEAD and the first GET; later GETs use the cached URL
        fake.generation += 1
        assert be.read_exact(fake.blob_id, 7, 7) == fake.data[7:14]
        assert fake.hits[-3:] == ["/storage/0", f"/v2/{REPO}/blobs/sha256:{fake.blob_id}", "/storage/1"]


def test_credentials_never_follow_a_redirect(fake: FakeRegistry) -> None:
    fake.password = PASSWORD
    with RegistryBackend("http", fake.host, REPO, auth=basic_auth(USER, PASSWORD)) as be:
        assert be.read_exact(fake.blob_id, 0, 10) == fake.data[:10]
        assert be.blob_size(fake.blob_id) == len(fake.data)
    assert fake.storage_authorization == [None, None]


def test_redirect_host_rewrite(fake: FakeRegistry) -> None:
    with RegistryBackend("http", fake.host, REPO, blob_redirected_host=fake.host) as be:
        assert be.read_exact(fake.blob_id, 5, 5) == fake.data[5:10]
    assert fake.storage_hosts == [fake.host]  # not the localhost:<port> of the Location


def test_server_ignoring_range_is_sliced(fake: FakeRegistry) -> None:
    fake.ignore_range = True
    with RegistryBackend("http", fake.host, REPO) as be:
        assert be.read_exact(fake.blob_id, 99_990, 10) == fake.data[99_990:]
        with pytest.raises(BackendError, match="short read"):
            be.read_exact(fake.blob_id, 99_990, 11)


def test_overlong_partial_answer_is_an_error(fake: FakeRegistry) -> None:
    fake.overlong = True
    with RegistryBackend("http", fake.host, REPO) as be:
        with pytest.raises(BackendError, match="more bytes than asked"):
            be.read_exact(fake.blob_id, 0, 10)


def test_connection_lost_mid_body(fake: FakeRegistry) -> None:
    fake.truncate = True
    with RegistryBackend("http", fake.host, REPO, retry_limit=1) as be:
        with pytest.raises(BackendError, match=f"registry {fake.host}/{REPO}: GET blob .* failed"):
            be.read_exact(fake.blob_id, 0, 10_000)
    assert fake.hits.count("/storage/0") == 2  # retried once over the cached redirect


def test_5xx_is_retried_with_backoff(fake: FakeRegistry) -> None:
    fake.failures = 2
    with RegistryBackend("http", fake.host, REPO, retry_limit=2) as be:
        started = time.monotonic()
        assert be.read_exact(fake.blob_id, 3, 4) == fake.data[3:7]
        assert time.monotonic() - started >= 1.5  # 0.5 s, then 1 s
    fake.failures = 1
    with RegistryBackend("http", fake.host, REPO) as be:
        with pytest.raises(BackendError, match="HTTP 503"):
            be.read_exact(fake.blob_id, 3, 4)


def test_www_authenticate_parsing() -> None:
    c = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push"'
    )
    assert c is not None and c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.example/token",
        "service": "reg.example",
        "scope": "repository:a/b:pull,push",
    }
    basic = parse_www_authenticate('Basic realm="x \\"y\\""')
    assert basic is not None and basic.scheme == "basic" and basic.params == {"realm": 'x "y"'}
    assert parse_www_authenticate("") is None


def test_describe_and_repr_hold_no_secret() -> None:
    auth = basic_auth(USER, PASSWORD)
    with RegistryBackend("https", "reg.example:5000", REPO, auth=auth, registry_token="tok-123") as be:
        shown = json.dumps(be.describe()) + repr(be) + str(be)
    for secret in (auth, PASSWORD, "tok-123"):
        assert secret not in shown
    assert "reg.example:5000" in shown and REPO in shown
