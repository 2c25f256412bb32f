"""One repository of an OCI distribution registry as an image source and destination
(spec oci-image.md §4), built on the registry backend's HTTP client, auth and uploads."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx

from nydus_compact.backends.errors import BackendError
from nydus_compact.backends.registry import RegistryBackend, _closing, read_window

from .errors import ImageError
from .manifest import ACCEPT, MAX_MANIFEST


class RegistryRepo(RegistryBackend):
    # Blob uploads of an image flow go to the *target* repository through the publisher, never
    # through apply's backend upload step (that backend is the source repository).
    accepts_uploads = False

    def __init__(self, scheme: str, host: str, repo: str, *, auth: str | None = None,
                 extra_scopes: tuple[str, ...] = (), retry_limit: int = 2):
        super().__init__(scheme, host, repo, auth=auth, extra_scopes=extra_scopes, retry_limit=retry_limit,
                         timeout=60, connect_timeout=10)

    @property
    def base(self) -> str:
        return self._base

    def location(self) -> str:
        return f"{self.host}/{self.repo}"

    # ---- manifests ----------------------------------------------------------------------------

    def get_manifest(self, reference: str) -> tuple[bytes, str | None] | None:
        """The manifest bytes and served Content-Type, None if the registry has no such tag/digest."""
        url = f"{self._base}/v2/{self.repo}/manifests/{reference}"

        def once() -> tuple[bytes, str | None] | None:
            with _closing(self._send("GET", url, {"Accept": ACCEPT})) as resp:
                if resp.status_code == 404:
                    return None
                self._expect(resp, (200,), f"GET manifest {reference}")
                body = read_window(resp, 0, MAX_MANIFEST + 1)
                return body, resp.headers.get("Content-Type")

        return self._retrying(f"GET manifest {reference}", once)

    def put_manifest(self, data: bytes, media_type: str, reference: str) -> None:
        url = f"{self._base}/v2/{self.repo}/manifests/{reference}"
        what = f"PUT manifest {reference}"
        with _closing(self._send_once("PUT", url, {"Content-Type": media_type}, data, what)) as resp:
            self._expect(resp, (201,), what)

    # ---- blobs ------------------------------------------------------------------------------------

    def stat_blob(self, hex_id: str) -> int | None:
        return self._head_size(hex_id)

    def blob_bytes(self, hex_id: str, size_limit: int) -> bytes:
        size = self.blob_size(hex_id)
        if size > size_limit:
            raise ImageError(f"registry {self.location()}: blob {hex_id} is {size} bytes, more than {size_limit} expected")
        return self.read_exact(hex_id, 0, size) if size else b""

    def iter_blob(self, hex_id: str) -> Iterator[bytes]:
        """The whole blob, streamed."""
        size = self.blob_size(hex_id)
        done = 0
        while done < size:
            n = min(16 << 20, size - done)
            yield self.read_exact(hex_id, done, n)
            done += n

    def put_blob_file(self, hex_id: str, path, named_by_content: bool = False, streamed=None) -> bool:  # type: ignore[no-untyped-def]
        return self.upload_blob(hex_id, path, named_by_content=named_by_content, streamed=streamed)

    def put_blob_bytes(self, hex_id: str, data: bytes) -> bool:
        if self._head_size(hex_id) is not None:
            return False
        self.upload_stream(hex_id, len(data), iter([data]))
        return True

    def mount_blob(self, hex_id: str, from_repo: str) -> str | None:
        """Cross-repository mount: None if mounted, else the upload session to continue with."""
        url = f"{self._base}/v2/{self.repo}/blobs/uploads/"
        params = {"mount": f"sha256:{hex_id}", "from": from_repo}
        full = str(httpx.URL(url).copy_merge_params(params))

        def once() -> str | None:
            with _closing(self._send("POST", full, {"Content-Length": "0"})) as resp:
                self._expect(resp, (201, 202), f"mount blob {hex_id} from {from_repo}")
                if resp.status_code == 201:
                    return None
                return self._upload_location(resp, full, hex_id)

        return self._retrying(f"mount blob {hex_id}", once)

    def receive_blob(self, hex_id: str, size: int, source: object) -> str:
        """Make blob ``hex_id`` present here, taken from ``source`` (a RegistryRepo or LayoutRepo):
        "present", "mounted" (same registry, no byte moved) or "copied"."""
        if self._head_size(hex_id) is not None:
            return "present"
        location = None
        if isinstance(source, RegistryRepo) and source.base == self._base and source.repo != self.repo:
            location = self.mount_blob(hex_id, source.repo)
            if location is None:
                return "mounted"
        h = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for part in source.iter_blob(hex_id):  # type: ignore[attr-defined]
                h.update(part)
                yield part

        try:
            self.upload_stream(hex_id, size, hashed(), location)
        except BackendError:
            if h.hexdigest() != hex_id:  # what the registry refused: say why
                raise ImageError(not_its_digest(hex_id, h.hexdigest())) from None
            raise
        return "copied"


def not_its_digest(hex_id: str, actual: str) -> str:
    return (f"blob {hex_id}: its bytes have sha256 {actual}; an image stores blobs under the sha256 of "
            "their bytes, so this blob cannot be published under its id")
