"""An image reference as a bootstrap file plus the blob backend of its repository, for the
commands that read an image without publishing one (inspect, verify, gc --keep)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nydus_compact.backends.base import BlobBackend

from .planning import blob_backend
from .reference import parse_reference
from .source import Access, open_repo, read_bootstrap, resolve


@dataclass
class FetchedImage:
    ref: str
    manifest_digest: str
    bootstrap: Path  # a temporary copy of image/image.boot, gone after the block
    backend: BlobBackend  # the image's repository or layout


@contextlib.contextmanager
def fetched_image(text: str, access: Access, platform: str | None = None) -> Iterator[FetchedImage]:
    ref = parse_reference(text)
    repo = open_repo(ref, access)
    try:
        resolved = resolve(repo, ref, platform)
        with tempfile.TemporaryDirectory(prefix="compact-image-") as tmp:
            path = Path(tmp) / f"{resolved.manifest_digest.split(':')[1][:16]}.boot"
            path.write_bytes(read_bootstrap(repo, resolved))
            yield FetchedImage(str(ref), resolved.manifest_digest, path, blob_backend(repo))
    finally:
        repo.close()
