"""Reading a freshly compacted image: new blobs from the output dir, kept blobs from the source backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nydus_compact.backends.base import BlobBackend
from nydus_compact.backends.localfs import LocalFsBackend


class NewImageBackend(BlobBackend):
    def __init__(self, blobs_dir: Path, source: BlobBackend):
        self._new = LocalFsBackend(dir=blobs_dir)
        self._source = source

    def _pick(self, blob_id: str) -> BlobBackend:
        return self._new if (self._new.dir / blob_id).is_file() else self._source

    def blob_size(self, blob_id: str) -> int:
        return self._pick(blob_id).blob_size(blob_id)

    def read_exact(self, blob_id: str, offset: int, size: int) -> bytes:
        return self._pick(blob_id).read_exact(blob_id, offset, size)

    def describe(self) -> dict[str, Any]:
        return {"type": "overlay", "new": self._new.describe(), "source": self._source.describe()}

    def close(self) -> None:
        self._new.close()
