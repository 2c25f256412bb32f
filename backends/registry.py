"""The registry backend: blobs of an OCI distribution registry (compact.md §5.2 "registry").

A blob id is the bare sha256 hex of the blob; it lives at
``{scheme}://{host}/v2/{repo}/blobs/sha256:{id}``. Reads are ``GET`` with ``Range`` and sizes are
``HEAD`` → ``Content-Length``.

Deliberate differences from nydus 2.2:
* ``scheme`` "http" is plain HTTP, anything else HTTPS — without upstream's silent fallback to
  plain HTTP on TLS errors (a downgrade we do not want); ``skip_verify`` turns verification off.
* A ``200`` answer to a range request (a server that ignores ``Range``) is accepted: the body is
  streamed up to the end of the wanted range, sliced, and the rest is never downloaded.
* Bearer tokens are requested with ``GET realm?service=…&scope=…`` and the credentials as HTTP
  Basic auth (the distribution token spec), never as query parameters that end up in logs.
* Only ``GET``/``HEAD`` and starting an upload are retried; a failed ``PATCH``/``PUT`` of an
  upload is an error, and rerunning ``upload_blob`` starts a new upload session.
* ``mirrors`` are not supported (``open_backend`` refuses them); the environment's proxy and
  netrc settings are ignored so only the config decides where requests go.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from .base import BlobBackend, check_http_limits, read_full, short_read_error
from .errors import BackendError, BlobNotFoundError

T = TypeVar("T")

BLOB_ID = re.compile(r"[0-9a-f]{64}")
# OCI distribution's repository name grammar.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPO_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
HOST = re.compile(r"[A-Za-z0-9.\-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")
# One auth-param of a WWW-Authenticate challenge: key=token or key="quoted string".
AUTH_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')

MONOLITHIC_UPLOAD_MAX = 32 << 20
UPLOAD_CHUNK_SIZE = 8 << 20
MAX_REDIRECTS = 5
RETRY_BASE_DELAY = 0.5
# Token endpoints that omit expires_in grant 60 s (distribution token spec).
DEFAULT_TOKEN_TTL = 60
TOKEN_EXPIRY_MARGIN = 5
MAX_TOKEN_RESPONSE = 1 << 20


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-cased: "basic" or "bearer"
    params: dict[str, str]


def parse_www_authenticate(value: str) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header, or None if it is unparseable."""
    scheme, _, rest = value.strip().partition(" ")
    if not scheme:
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = AUTH_PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            break
        quoted, plain = m.group(2), m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain
        pos = m.end()
    return Challenge(scheme.lower(), params)


class _Retryable(Exception):
    """A transient failure (connection error, timeout, 5xx) worth another attempt."""


class RegistryBackend(BlobBackend):
    # Chunks of one blob a few KiB apart go out as one request: a round trip costs more than 64 KiB.
    max_gap = 64 << 10
    accepts_uploads = True

    def __init__(
        self,
        scheme: str,
        host: str,
        repo: str,
        *,
        auth: str | None = None,
        registry_token: str | None = None,
        skip_verify: bool = False,
        timeout: float = 5,
        connect_timeout: float = 5,
        retry_limit: int = 0,
        proxy: str | None = None,
        blob_url_scheme: str = "",
        blob_redirected_host: str = "",
        monolithic_upload_max: int = MONOLITHIC_UPLOAD_MAX,
        upload_chunk_size: int = UPLOAD_CHUNK_SIZE,
        extra_scopes: tuple[str, ...] = (),
    ):
        if not isinstance(host, str) or not HOST.fullmatch(host):
            raise BackendError(f"registry backend: invalid host {host!r}: expected host[:port]")
        if not isinstance(repo, str) or not REPO_NAME.fullmatch(repo):
            raise BackendError(f"registry backend: invalid repo {repo!r}: expected e.g. library/ubuntu")
        if auth:
            try:
                user_pass = base64.b64decode(auth, validate=True)
            except (binascii.Error, ValueError):
                raise BackendError("registry backend: auth is not valid base64 of user:pass") from None
            if b":" not in user_pass:
                raise BackendError("registry backend: auth must be base64 of user:pass")
        check_http_limits("registry", timeout, connect_timeout, retry_limit)
        if monolithic_upload_max < 0 or upload_chunk_size <= 0:
            raise BackendError("registry backend: invalid upload sizes")
        self.scheme = "http" if scheme == "http" else "https"
        self.host = host
        self.repo = repo
        self.retry_limit = retry_limit
        self.blob_url_scheme = blob_url_scheme
        self.blob_redirected_host = blob_redirected_host
        self.monolithic_upload_max = monolithic_upload_max
        self.upload_chunk_size = upload_chunk_size
        # Scopes every bearer token asks for besides the challenge's own (a cross-repository
        # mount needs pull on the source repository).
        self.extra_scopes = tuple(extra_scopes)
        self._basic = f"Basic {auth}" if auth else None
        self._registry_token = registry_token or None
        # The Authorization header sent to the registry; replaced when a challenge asks for another.
        self._authorization: str | None = f"Bearer {registry_token}" if registry_token else None
        # The challenge the current bearer token answers, and when to renew it.
        self._bearer: tuple[Challenge, float] | None = None
        self._redirects: dict[str, str] = {}  # blob id -> cached redirect target
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._base = f"{self.scheme}://{host}"
        try:
            self._client = httpx.Client(
                # Plain http needs no CA bundle (loading one costs ~15 ms).
                verify=_verifying_context() if not skip_verify and self.scheme == "https" else False,
                timeout=httpx.Timeout(timeout, connect=connect_timeout),
                proxy=proxy or None,
                follow_redirects=False,
                trust_env=False,
                # Ranges address stored bytes: a compressed answer would shift every offset.
                headers={"Accept-Encoding": "identity", "User-Agent": "nydus-compact"},
            )
        except (httpx.InvalidURL, ValueError):
            raise BackendError("registry backend: invalid proxy url (expected http:// or https://host:port)") from None

    # ---- public interface -------------------------------------------------------------------

    def blob_size(self, blob_id: str) -> int:
        self._check_id(blob_id)
        size = self._sizes.get(blob_id)
        if size is None:
            size = self._head_size(blob_id)
            if size is None:
                raise self._not_found(blob_id)
            self._sizes[blob_id] = size
        return size

    def has_blob(self, blob_id: str) -> bool:
        self._check_id(blob_id)
        return self._head_size(blob_id) is not None

    def read_exact(self, blob_id: str, offset: int, size: int) -> bytes:
        self._check_id(blob_id)
        if offset < 0 or size < 0:
            raise BackendError(f"blob {blob_id}: invalid range offset {offset} size {size}")
        if size == 0:
            return b""
        what = f"GET blob {blob_id} range {offset}+{size}"
        headers = {"Range": f"bytes={offset}-{offset + size - 1}"}
        return self._retrying(what, lambda: self._read_once(blob_id, offset, size, headers))

    def upload_blob(
        self, blob_id: str, path: str | Path, *, named_by_content: bool = False, streamed: UploadStream | None = None
    ) -> bool:
        """Push a finished blob file unless the registry has it. True if it was uploaded.

        ``named_by_content``: the caller wrote the file and named it by the sha256 it computed while
        writing (apply's new blobs), so the file is not read a second time to check that; the
        registry checks the digest again when the upload completes. ``streamed``: the file's bytes
        were already sent into an upload session while it was written; committing that session is
        then the upload (if it fails, the file is uploaded as usual)."""
        self._check_id(blob_id)
        path = Path(path)
        if named_by_content:
            try:
                file_size = path.stat().st_size
            except OSError as exc:
                raise BackendError(f"blob {blob_id}: cannot read {path}: {exc.strerror or exc}") from None
        else:
            digest, file_size = _sha256_file(path, blob_id)
            if digest != blob_id:
                raise BackendError(
                    f"blob {blob_id}: {path} has sha256 {digest}; a registry stores blobs under "
                    "sha256(content), so it could never serve this blob under its id (RAFS v6 blobs "
                    "with a ToC have ids that are not the sha256 of the file)"
                )
        if self._head_size(blob_id) is not None:
            return False
        session = streamed.sent() if streamed is not None else None
        if session is not None and session[1] == file_size:
            try:
                self._finish_upload(blob_id, session[0], b"")
                self._check_stored(blob_id, file_size)
                return True
            except BackendError:
                pass  # an expired or refused session: the file goes up the usual way
        try:
            with path.open("rb") as f:
                self.upload_stream(blob_id, file_size, _file_parts(f, file_size, path, blob_id, self.upload_chunk_size))
        except OSError as exc:
            raise BackendError(f"blob {blob_id}: cannot read {path}: {exc.strerror or exc}") from None
        return True

    def upload_stream(self, blob_id: str, size: int, parts: Iterator[bytes], location: str | None = None) -> None:
        """Upload ``size`` bytes arriving as ``parts`` as blob ``blob_id`` (the registry checks the
        digest): one PUT up to ``monolithic_upload_max`` bytes, PATCHes then a PUT above.
        ``location``: an upload session already started (a cross-repository mount that fell back)."""
        self._check_id(blob_id)
        if location is None:
            location = self._start_upload(blob_id)
        if size <= self.monolithic_upload_max:
            self._finish_upload(blob_id, location, b"".join(parts))
        else:
            done = 0
            for part in _rechunk(parts, self.upload_chunk_size):
                location = self._patch_upload(blob_id, location, done, part)
                done += len(part)
            self._finish_upload(blob_id, location, b"")
        self._check_stored(blob_id, size)

    def stream_upload(self) -> UploadStream:
        """An upload session to send a blob's bytes into while it is still being written."""
        return UploadStream(self)

    def _check_stored(self, blob_id: str, size: int) -> None:
        stored = self._head_size(blob_id)
        if stored != size:
            raise BackendError(
                f"blob {blob_id}: after upload the registry {self._where()} reports size {stored}, expected {size}"
            )
        self._sizes[blob_id] = size

    def describe(self) -> dict[str, Any]:
        return {"type": "registry", "scheme": self.scheme, "host": self.host, "repo": self.repo}

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RegistryBackend({self.scheme}://{self.host}/{self.repo})"

    # ---- reads ------------------------------------------------------------------------------

    def _blob_url(self, blob_id: str) -> str:
        return f"{self._base}/v2/{self.repo}/blobs/sha256:{blob_id}"

    def _head_size(self, blob_id: str) -> int | None:
        """Content-Length of the blob, None if the registry does not have it."""

        def once() -> int | None:
            with self._blob_response("HEAD", blob_id, {}, use_cache=False) as resp:
                if resp.status_code == 404:
                    return None
                self._expect(resp, (200,), f"HEAD blob {blob_id}")
                length = resp.headers.get("Content-Length", "")
                if not (length.isascii() and length.isdigit()):
                    raise BackendError(
                        f"registry {self._where()}: HEAD blob {blob_id} has no valid Content-Length"
                    )
                return int(length)

        return self._retrying(f"HEAD blob {blob_id}", once)

    def _read_once(self, blob_id: str, offset: int, size: int, headers: dict[str, str]) -> bytes:
        with self._blob_response("GET", blob_id, headers, use_cache=True) as resp:
            if resp.status_code == 404:
                raise self._not_found(blob_id)
            if resp.status_code == 416:
                raise short_read_error(blob_id, offset, size, 0)
            self._expect(resp, (200, 206), f"GET blob {blob_id}")
            # A 200 is the whole blob: skip to the range. Reading one byte past the range of a 206
            # tells an overlong answer (a broken server or proxy) from a correct one.
            partial = resp.status_code == 206
            body = read_window(resp, 0 if partial else offset, size + 1 if partial else size)
        if len(body) < size:
            raise short_read_error(blob_id, offset, size, len(body))
        if len(body) > size:
            raise BackendError(
                f"registry {self._where()}: GET blob {blob_id} range {offset}+{size} returned more "
                "bytes than asked for"
            )
        return body

    @contextmanager
    def _blob_response(
        self, method: str, blob_id: str, headers: dict[str, str], *, use_cache: bool
    ) -> Iterator[httpx.Response]:
        """The final response for a blob request, following redirects (cached per blob for GET)."""
        cached = self._redirects.get(blob_id) if use_cache else None
        if cached is not None:
            resp = self._send(method, cached, headers)
            if resp.status_code not in (401, 403):
                with _closing(resp):
                    yield resp
                return
            # An expired pre-signed URL: forget it and go through the registry again.
            resp.close()
            self._redirects.pop(blob_id, None)
        url = self._blob_url(blob_id)
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._send(method, url, headers)
            if resp.status_code not in (301, 302, 303, 307, 308):
                with _closing(resp):
                    yield resp
                return
            location = resp.headers.get("Location")
            resp.close()
            if not location:
                raise BackendError(f"registry {self._where()}: {method} blob {blob_id}: redirect without Location")
            url = self._rewrite_redirect(str(httpx.URL(url).join(location)))
            if use_cache:
                self._redirects[blob_id] = url
        raise BackendError(f"registry {self._where()}: {method} blob {blob_id}: more than {MAX_REDIRECTS} redirects")

    def _rewrite_redirect(self, url: str) -> str:
        parsed = httpx.URL(url)
        if self.blob_url_scheme:
            parsed = parsed.copy_with(scheme=self.blob_url_scheme)
        if self.blob_redirected_host:
            host, _, port = self.blob_redirected_host.partition(":")
            parsed = parsed.copy_with(host=host, port=int(port) if port.isdigit() else None)
        return str(parsed)

    # ---- uploads ----------------------------------------------------------------------------

    def _start_upload(self, blob_id: str) -> str:
        url = f"{self._base}/v2/{self.repo}/blobs/uploads/"

        def once() -> str:
            with _closing(self._send("POST", url, {"Content-Length": "0"})) as resp:
                self._expect(resp, (202,), f"start upload of blob {blob_id}")
                return self._upload_location(resp, url, blob_id)

        return self._retrying(f"start upload of blob {blob_id}", once)

    def _patch_upload(self, blob_id: str, location: str, offset: int, data: bytes) -> str:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(data) - 1}",
        }
        what = f"upload blob {blob_id} chunk at {offset}"
        with _closing(self._send_once("PATCH", location, headers, data, what)) as resp:
            self._expect(resp, (202,), what)
            return self._upload_location(resp, location, blob_id)

    def _finish_upload(self, blob_id: str, location: str, data: bytes) -> None:
        url = str(httpx.URL(location).copy_merge_params({"digest": f"sha256:{blob_id}"}))
        what = f"finish upload of blob {blob_id}"
        headers = {"Content-Type": "application/octet-stream"}
        with _closing(self._send_once("PUT", url, headers, data, what)) as resp:
            self._expect(resp, (201,), what)

    def _upload_location(self, resp: httpx.Response, base: str, blob_id: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise BackendError(f"registry {self._where()}: upload of blob {blob_id}: answer without Location")
        return str(httpx.URL(base).join(location))

    def _send_once(self, method: str, url: str, headers: dict[str, str], body: bytes, what: str) -> httpx.Response:
        try:
            return self._send(method, url, headers, body)
        except _Retryable as exc:
            raise BackendError(f"registry {self._where()}: {what} failed: {exc}") from None

    # ---- HTTP, auth, retries ----------------------------------------------------------------

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` with ``retry_limit`` retries, exponential backoff from 500 ms."""
        for n in range(self.retry_limit + 1):
            try:
                return attempt()
            except _Retryable as exc:
                if n == self.retry_limit:
                    raise BackendError(f"registry {self._where()}: {what} failed: {exc}") from None
                time.sleep(RETRY_BASE_DELAY * (2**n))
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, headers: dict[str, str], content: bytes | None = None) -> httpx.Response:
        """One streamed request, answering one auth challenge. Transport errors and 5xx are ``_Retryable``.

        Bodies are never read here: the caller closes the response, reading at most what it needs.
        """
        to_registry = httpx.URL(url).netloc == httpx.URL(self._base).netloc
        resp, sent = self._request(method, url, headers, to_registry, content)
        if resp.status_code == 401 and to_registry:
            challenge = parse_www_authenticate(resp.headers.get("WWW-Authenticate", ""))
            resp.close()
            self._answer_challenge(challenge, sent)
            resp, _ = self._request(method, url, headers, to_registry, content)
            if resp.status_code == 401:
                resp.close()
                raise self._auth_failed()
        if resp.status_code >= 500:
            resp.close()
            raise _Retryable(f"HTTP {resp.status_code}")
        return resp

    def _request(
        self, method: str, url: str, headers: dict[str, str], to_registry: bool, content: bytes | None
    ) -> tuple[httpx.Response, str | None]:
        """The response and the Authorization header it was sent with."""
        # Credentials only ever go to the registry itself, never to a redirect target.
        hdrs = dict(headers)
        sent = self._current_authorization() if to_registry else None
        if sent:
            hdrs["Authorization"] = sent
        try:
            request = self._client.build_request(method, url, headers=hdrs, content=content)
            return self._client.send(request, stream=True), sent
        except httpx.RequestError as exc:
            raise _Retryable(transport_reason(exc)) from None
        except httpx.InvalidURL:
            raise BackendError(f"registry {self._where()}: invalid URL for {method}") from None

    def _current_authorization(self) -> str | None:
        """The header for the next registry request, renewing a bearer token that has expired."""
        bearer = self._bearer
        if bearer is not None and bearer[1] <= time.monotonic():
            with self._lock:
                if self._bearer is bearer:
                    self._fetch_bearer(bearer[0])
        return self._authorization

    def _answer_challenge(self, challenge: Challenge | None, sent: str | None) -> None:
        with self._lock:
            if self._authorization != sent:
                return  # another thread already answered a challenge: retry with its header
            if challenge is None:
                raise self._auth_failed()
            if challenge.scheme == "basic":
                if self._basic is None or sent == self._basic:
                    raise self._auth_failed()
                self._authorization = self._basic
            elif challenge.scheme == "bearer":
                if self._basic is None and self._registry_token is not None:
                    raise self._auth_failed()  # the configured token was refused; nothing to get another with
                self._fetch_bearer(challenge)
                if self._authorization == sent:
                    raise self._auth_failed()
            else:
                raise BackendError(
                    f"registry {self.host}: unsupported authentication scheme {challenge.scheme!r} for {self.repo}"
                )

    def _fetch_bearer(self, challenge: Challenge) -> None:
        """Get a token for ``challenge`` from its realm and make it the registry's Authorization."""
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise BackendError(f"registry {self.host}: bearer challenge without a usable realm for {self.repo}")
        params = [("client_id", "nydus-compact")]
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        scopes = challenge.params.get("scope", "").split()
        params.extend(("scope", s) for s in dict.fromkeys([*scopes, *self.extra_scopes]))
        headers = {"Authorization": self._basic} if self._basic else {}
        for n in range(self.retry_limit + 1):
            try:
                with self._client.stream("GET", realm, params=params, headers=headers) as resp:
                    status = resp.status_code
                    body = read_window(resp, 0, MAX_TOKEN_RESPONSE + 1) if status == 200 else b""
                break
            except httpx.RequestError as exc:
                if n == self.retry_limit:
                    raise BackendError(
                        f"registry {self.host}: token service unreachable: {transport_reason(exc)}"
                    ) from None
                time.sleep(RETRY_BASE_DELAY * (2**n))
        if status in (401, 403):
            raise self._auth_failed()
        if status != 200 or len(body) > MAX_TOKEN_RESPONSE:
            raise BackendError(f"registry {self.host}: token service answered HTTP {status}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            ttl = doc.get("expires_in", DEFAULT_TOKEN_TTL)
        except (ValueError, AttributeError):
            raise BackendError(f"registry {self.host}: token service answer is not a JSON object") from None
        if not isinstance(token, str) or not token:
            raise BackendError(f"registry {self.host}: token service answer has no token")
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl <= 0:
            ttl = DEFAULT_TOKEN_TTL
        self._authorization = f"Bearer {token}"
        self._bearer = (challenge, time.monotonic() + max(ttl - TOKEN_EXPIRY_MARGIN, 1))

    def _expect(self, resp: httpx.Response, ok: tuple[int, ...], what: str) -> None:
        if resp.status_code in ok:
            return
        if resp.status_code in (401, 403):
            raise self._auth_failed(resp.status_code)
        raise BackendError(f"registry {self._where()}: {what}: unexpected HTTP {resp.status_code}")

    def _check_id(self, blob_id: str) -> None:
        if not isinstance(blob_id, str) or not BLOB_ID.fullmatch(blob_id):
            raise BackendError(f"invalid blob id {blob_id!r}: a registry blob id is 64 lower-case hex digits")

    def _not_found(self, blob_id: str) -> BlobNotFoundError:
        return BlobNotFoundError(f"blob {blob_id} not found in registry {self._where()}")

    def _auth_failed(self, status: int = 401) -> BackendError:
        return BackendError(f"registry {self.host}: authentication failed ({status}) for {self.repo}")

    def _where(self) -> str:
        return f"{self.host}/{self.repo}"


@functools.cache
def _verifying_context() -> ssl.SSLContext:
    """One certificate-verifying TLS context per process: loading the CA bundle costs about as much
    CPU as the rest of a client, and an image apply opens one client per repository."""
    return httpx.create_ssl_context()


@contextmanager
def _closing(resp: httpx.Response) -> Iterator[httpx.Response]:
    try:
        yield resp
    except httpx.RequestError as exc:
        raise _Retryable(transport_reason(exc)) from None
    finally:
        resp.close()


def read_window(resp: httpx.Response, skip: int, limit: int) -> bytes:
    """Bytes ``skip .. skip+limit`` of a streamed body (fewer if it ends first).

    Bytes before ``skip`` are dropped as they arrive and reading stops at the window's end, so a
    huge or endless answer is never buffered whole.
    """
    parts: list[bytes] = []
    got = 0
    for part in resp.iter_bytes():
        if skip:
            dropped = min(skip, len(part))
            part, skip = part[dropped:], skip - dropped
        if part:
            parts.append(part)
            got += len(part)
        if got >= limit:
            break
    return b"".join(parts)[:limit]


class UploadStream:
    """A blob's bytes sent into an upload session while the blob is still being written (apply's
    new blobs on their way to an image's target registry), so that sending overlaps writing.

    Parts of ``upload_chunk_size`` go out as PATCHes on a worker thread, at most two waiting
    behind the one being sent. Nothing is committed here: the session becomes the blob only when
    ``upload_blob(..., streamed=)`` finishes it with the digest PUT, after the blob was checked
    and published. Any failure just leaves the blob to be uploaded from its file."""

    PENDING = 2

    def __init__(self, backend: RegistryBackend):
        self._backend = backend
        self._part = bytearray()
        self._sent = 0
        self._location: str | None = None
        self._failed = False
        self._closed = False
        self._pool = ThreadPoolExecutor(1, "upload-stream")
        self._pending: list[Future] = []

    def write(self, data: bytes | memoryview) -> None:
        if self._failed:
            return
        self._part += data
        if len(self._part) >= self._backend.upload_chunk_size:
            self._hand_over()

    def close(self) -> None:
        """The last bytes are written: send them and wait for every part."""
        if not self._failed and self._part:
            self._hand_over()
        for future in self._pending:
            future.result()
        self._pool.shutdown()
        self._closed = True

    def abort(self) -> None:
        """The blob will not be finished: send nothing more (the registry drops the session)."""
        self._failed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def sent(self) -> tuple[str, int] | None:
        """(session location, bytes sent) once closed with every part sent, else None."""
        if not self._closed or self._failed or self._location is None:
            return None
        return self._location, self._sent

    def _hand_over(self) -> None:
        part, self._part = bytes(self._part), bytearray()
        while len(self._pending) >= self.PENDING:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._patch, part))

    def _patch(self, part: bytes) -> None:
        if self._failed:
            return
        try:
            if self._location is None:
                self._location = self._backend._start_upload("(streamed while written)")
            self._location = self._backend._patch_upload("(streamed while written)", self._location, self._sent, part)
            self._sent += len(part)
        except BackendError:  # the file is uploaded later, as if nothing was streamed
            self._failed = True


def transport_reason(exc: httpx.RequestError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


def _sha256_file(path: Path, blob_id: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
                size += len(block)
    except OSError as exc:
        raise BackendError(f"blob {blob_id}: cannot read {path}: {exc.strerror or exc}") from None
    return h.hexdigest(), size


def _rechunk(parts: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Parts of ``size`` bytes (the last one shorter) from parts of any size."""
    buf = bytearray()
    for part in parts:
        if not buf and len(part) == size:
            yield part  # already one whole part (a file read in parts of this size): no copies
            continue
        buf += part
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def _file_parts(f, size: int, path: Path, blob_id: str, part_size: int) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    """The file's ``size`` bytes in parts of ``part_size``; a file that shrank is an error."""
    done = 0
    while done < size:
        data = read_full(f, min(part_size, size - done), path, blob_id)
        done += len(data)
        yield data
