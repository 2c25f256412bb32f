"""An OCI image layout directory as an image source and destination (spec oci-image.md §5).

Blobs are written first (temp + fsync + rename under ``blobs/sha256/``), ``index.json`` last,
rewritten under a lock on the directory with temp + rename and touching only the entry of the
tag being published: the one sanctioned write to an input.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nydus_compact.backends.base import BlobBackend
from nydus_compact.backends.localfs import LocalFsBackend
from nydus_compact.safeio import OutputGuard, atomic_writer, check_regular

from .errors import ImageError
from .registry import not_its_digest
from .manifest import ANN_REF_NAME, INDEX_TYPES, OCI_INDEX, descriptor, dumps, load_json, sha256_digest

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
PART = 1 << 20


class LayoutRepo:
    def __init__(self, path: str | Path, *, create: bool = False):
        self.path = Path(path)
        self.blobs = self.path / "blobs" / "sha256"
        if not (self.path / LAYOUT_FILE).is_file():
            if not create:
                raise ImageError(f"{self.path}: not an OCI image layout (no {LAYOUT_FILE} file)")
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                raise ImageError(f"{self.path}: exists and is neither an OCI image layout nor an empty directory")
            self.blobs.mkdir(parents=True, exist_ok=True)
            with atomic_writer(self.path / LAYOUT_FILE) as fp:
                fp.write(json.dumps(LAYOUT_VERSION).encode())

    def location(self) -> str:
        return str(self.path)

    def close(self) -> None:
        """Nothing stays open between calls (a registry repository's counterpart closes its client)."""

    # ---- index.json ---------------------------------------------------------------------------

    def index(self) -> dict:
        path = self.path / INDEX_FILE
        if not path.exists():
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from None
        doc = load_json(data, str(path))
        if not isinstance(doc.get("manifests"), list):
            raise ImageError(f"{path}: index without a manifests list")
        return doc

    def tag_entry(self, tag: str | None) -> dict | None:
        """The index.json entry a tag names (no tag: the only entry), None if absent."""
        entries = self.index()["manifests"]
        if tag is None:
            if len(entries) == 1:
                return entries[0]
            if not entries:
                return None
            raise ImageError(f"{self.path}: holds {len(entries)} images; name one as oci:{self.path}:TAG")
        found = [e for e in entries if isinstance(e, dict) and (e.get("annotations") or {}).get(ANN_REF_NAME) == tag]
        return found[-1] if found else None

    def get_manifest(self, reference: str | None) -> tuple[bytes, str | None] | None:
        if reference is not None and reference.startswith("sha256:"):
            path = self.blobs / reference.split(":", 1)[1]
            return (self._read(path), None) if path.is_file() else None
        entry = self.tag_entry(reference)
        if entry is None:
            return None
        d = descriptor(entry, f"{self.path / INDEX_FILE}: entry {reference}")
        path = self.blobs / d.hex
        if not path.is_file():
            raise ImageError(f"{self.path}: {reference} names {d.digest}, which is missing from blobs/sha256")
        return self._read(path), d.media_type

    def put_manifest(self, data: bytes, media_type: str, reference: str, platform: dict | None = None) -> None:
        digest = sha256_digest(data)
        self.put_blob_bytes(digest.split(":", 1)[1], data)
        if reference.startswith("sha256:"):
            return
        entry = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if platform:
            entry["platform"] = platform
        entry["annotations"] = {ANN_REF_NAME: reference}
        with self._locked():
            index = self.index()
            entries = index["manifests"]
            for i, e in enumerate(entries):
                if isinstance(e, dict) and (e.get("annotations") or {}).get(ANN_REF_NAME) == reference:
                    old_ann = {k: v for k, v in (e.get("annotations") or {}).items() if k != ANN_REF_NAME}
                    entry["annotations"] = {**old_ann, ANN_REF_NAME: reference}
                    entries[i] = entry
                    break
            else:
                entries.append(entry)
            if index.get("mediaType") not in INDEX_TYPES:
                index.setdefault("mediaType", OCI_INDEX)
            index_path = OutputGuard().output(self.path / INDEX_FILE, "the layout's index.json", rewrites_input=True)
            with atomic_writer(index_path) as fp:
                fp.write(dumps(index))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ---- blobs --------------------------------------------------------------------------------------

    def blob_backend(self) -> LayoutBlobs:
        return LayoutBlobs(self.blobs)

    def stat_blob(self, hex_id: str) -> int | None:
        path = self.blobs / hex_id
        return path.stat().st_size if path.is_file() else None

    def blob_bytes(self, hex_id: str, size_limit: int) -> bytes:
        path = self.blobs / hex_id
        if not path.is_file():
            raise ImageError(f"{self.path}: blob sha256:{hex_id} is missing from blobs/sha256")
        if path.stat().st_size > size_limit:
            raise ImageError(f"{path}: {path.stat().st_size} bytes, more than {size_limit} expected")
        return self._read(path)

    def iter_blob(self, hex_id: str) -> Iterator[bytes]:
        path = self.blobs / hex_id
        try:
            with path.open("rb") as f:
                while part := f.read(PART):
                    yield part
        except OSError as exc:
            raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from None

    def put_blob_file(self, hex_id: str, path: Path, named_by_content: bool = False, streamed: object = None) -> bool:
        """``named_by_content`` changes nothing here: the copy is hashed as it is written anyway; nothing
        is streamed to a layout (``streamed`` is always None)."""

        def parts() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while part := f.read(PART):
                    yield part

        return self._write_blob(hex_id, parts())

    def put_blob_bytes(self, hex_id: str, data: bytes) -> bool:
        return self._write_blob(hex_id, iter([data]))

    def receive_blob(self, hex_id: str, size: int, source: object) -> str:
        if self.stat_blob(hex_id) == size:
            return "present"
        self._write_blob(hex_id, source.iter_blob(hex_id))  # type: ignore[attr-defined]
        return "copied"

    def _write_blob(self, hex_id: str, parts: Iterator[bytes]) -> bool:
        """Store content under its digest, checking the digest; False if it was already there."""
        final = self.blobs / hex_id
        check_regular(final, f"blob sha256:{hex_id} of the layout")
        if final.is_file():
            return False
        h = hashlib.sha256()
        with atomic_writer(final) as fp:
            for part in parts:
                h.update(part)
                fp.write(part)
            if h.hexdigest() != hex_id:
                raise ImageError(not_its_digest(hex_id, h.hexdigest()))
        return True

    @staticmethod
    def _read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from None


class LayoutBlobs(BlobBackend):
    """A layout's blobs for plan and apply. Not a LocalFsBackend on purpose: apply locks the local
    blobs dirs it reads with a lock file, and a layout is an input nothing may write into (its
    index.json entry of the target tag is the one sanctioned write)."""

    max_gap = LocalFsBackend.max_gap

    def __init__(self, blobs: Path):
        self._files = LocalFsBackend(dir=blobs)
        self.dir = blobs

    def blob_size(self, blob_id: str) -> int:
        return self._files.blob_size(blob_id)

    def read_exact(self, blob_id: str, offset: int, size: int) -> bytes:
        return self._files.read_exact(blob_id, offset, size)

    def describe(self) -> dict[str, Any]:
        return {"type": "oci-layout", "dir": str(self.dir)}

    def close(self) -> None:
        self._files.close()
