"""The http-proxy backend: blobs served by a plain HTTP server (nydus's ``http-proxy`` backend).

``addr`` is an ``http(s)://`` URL or the absolute path of a unix socket; a blob lives at
``{addr}{path}/{id}``. Read-only: sizes are ``HEAD`` → ``Content-Length``, reads ``GET`` with
``Range``. Retries follow nydus: ``retry_limit`` more attempts after a transport error or a 5xx,
with exponential backoff from 500 ms. The environment's proxy settings are ignored: the config
alone decides where requests go.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from .base import BlobBackend, check_http_limits, short_read_error
from .errors import BackendError, BlobNotFoundError
from .localfs import check_blob_id
from .registry import RETRY_BASE_DELAY, read_window, transport_reason

T = TypeVar("T")


class _Retryable(Exception):
    pass


class HttpProxyBackend(BlobBackend):
    max_gap = 64 << 10
    read_concurrency = 4

    def __init__(
        self,
        addr: str,
        path: str = "",
        *,
        skip_verify: bool = False,
        timeout: float = 5,
        connect_timeout: float = 5,
        retry_limit: int = 0,
    ):
        check_http_limits("http-proxy", timeout, connect_timeout, retry_limit)
        self.addr = addr
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        self.retry_limit = retry_limit
        if addr.startswith(("http://", "https://")):
            base, transport = addr.rstrip("/"), None
        elif addr.startswith("/"):
            # The host part is only the Host header: requests go to the socket.
            base, transport = "http://localhost", httpx.HTTPTransport(uds=addr)
        else:
            raise BackendError(f"http-proxy backend: addr {addr!r} is neither an http(s):// URL nor a socket path")
        self._base = base + self.path
        self._sizes: dict[str, int] = {}
        self._client = httpx.Client(
            verify=not skip_verify,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
            follow_redirects=True,
            trust_env=False,
            # Ranges address stored bytes: a compressed answer would shift every offset.
            headers={"Accept-Encoding": "identity", "User-Agent": "nydus-compact"},
        )

    def blob_size(self, blob_id: str) -> int:
        size = self._sizes.get(blob_id)
        if size is None:

            def once() -> int:
                resp = self._request("HEAD", blob_id, {})
                resp.close()
                length = resp.headers.get("Content-Length", "")
                if not (length.isascii() and length.isdigit()):
                    raise BackendError(f"{self._where()}: HEAD {self._url(blob_id)}: no valid Content-Length")
                return int(length)

            size = self._sizes[blob_id] = self._retrying(f"HEAD {self._url(blob_id)}", once)
        return size

    def read_exact(self, blob_id: str, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise BackendError(f"blob {blob_id}: invalid range offset {offset} size {size}")
        if size == 0:
            return b""
        headers = {"Range": f"bytes={offset}-{offset + size - 1}"}

        def once() -> bytes:
            resp = self._request("GET", blob_id, headers)
            try:
                # A 200 is the whole blob: skip to the range. One byte past a 206's range tells an
                # overlong answer from a correct one.
                partial = resp.status_code == 206
                return read_window(resp, 0 if partial else offset, size + 1 if partial else size)
            finally:
                resp.close()

        body = self._retrying(f"GET {self._url(blob_id)} range {offset}+{size}", once)
        if len(body) < size:
            raise short_read_error(blob_id, offset, size, len(body))
        if len(body) > size:
            raise BackendError(f"{self._where()}: GET blob {blob_id} range {offset}+{size} returned more bytes than asked for")
        return body

    def describe(self) -> dict[str, Any]:
        return {"type": "http-proxy", "addr": self.addr, "path": self.path}

    def close(self) -> None:
        self._client.close()

    def _url(self, blob_id: str) -> str:
        check_blob_id(blob_id)
        return f"{self._base}/{blob_id}"

    def _request(self, method: str, blob_id: str, headers: dict[str, str]) -> httpx.Response:
        """The streamed 200/206 answer, for the caller to close; 404 is BlobNotFoundError, 5xx and
        transport errors are retryable."""
        url = self._url(blob_id)
        try:
            resp = self._client.send(self._client.build_request(method, url, headers=headers), stream=True)
        except httpx.RequestError as exc:
            raise _Retryable(transport_reason(exc)) from None
        if resp.status_code in (200, 206):
            return resp
        resp.close()
        if resp.status_code == 404:
            raise BlobNotFoundError(f"blob {blob_id} not found at {self._where()} ({method} {url}: HTTP 404)")
        if resp.status_code == 416:
            raise BackendError(f"{self._where()}: {method} {url}: HTTP 416 (range beyond the blob's end)")
        if resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}")
        raise BackendError(f"{self._where()}: {method} {url}: unexpected HTTP {resp.status_code}")

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        for n in range(self.retry_limit + 1):
            try:
                return attempt()
            except httpx.RequestError as exc:  # raised while the body streams in
                reason = transport_reason(exc)
            except _Retryable as exc:
                reason = str(exc)
            if n == self.retry_limit:
                raise BackendError(f"{self._where()}: {what} failed: {reason}")
            time.sleep(RETRY_BASE_DELAY * (2**n))
        raise AssertionError("unreachable")

    def _where(self) -> str:
        return f"http-proxy {self.addr}"
