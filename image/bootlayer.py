"""The bootstrap layer: a gzip'd tar holding ``image/image.boot`` (spec oci-image.md §1).

Written reproducibly: USTAR entries ``image/`` (0755) then ``image/image.boot`` (0444), uid/gid
0, mtime 0, no user or group names, gzip with mtime 0, no file name and level 6 — the same
bootstrap always gives the same layer bytes. Read leniently: any tar flavour, gzip or not; only
``image/image.boot`` is taken.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib

from .errors import ImageError

BOOTSTRAP_MEMBER = "image/image.boot"
GZIP_LEVEL = 6
MAX_BOOTSTRAP = 4 << 30


def _entry(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, size
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def build_bootstrap_layer(bootstrap: bytes) -> tuple[bytes, str]:
    """(layer bytes, diff id = sha256 of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_entry("image", tarfile.DIRTYPE, 0o755))
        tar.addfile(_entry(BOOTSTRAP_MEMBER, tarfile.REGTYPE, 0o444, len(bootstrap)), io.BytesIO(bootstrap))
    data = raw.getvalue()
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0), "sha256:" + hashlib.sha256(data).hexdigest()


def extract_bootstrap(layer: bytes, where: str) -> bytes:
    """The bytes of ``image/image.boot`` in a bootstrap layer."""
    data = layer
    if layer[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(layer)
        except (OSError, EOFError, zlib.error) as exc:
            raise ImageError(f"{where}: bootstrap layer is not valid gzip ({exc})") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.name.lstrip("./").rstrip("/") == BOOTSTRAP_MEMBER and member.isreg():
                    if member.size > MAX_BOOTSTRAP:
                        raise ImageError(f"{where}: {BOOTSTRAP_MEMBER} is {member.size} bytes, too large")
                    f = tar.extractfile(member)
                    assert f is not None
                    return f.read()
    except tarfile.TarError as exc:
        raise ImageError(f"{where}: bootstrap layer is not a valid tar ({exc})") from None
    raise ImageError(f"{where}: bootstrap layer holds no {BOOTSTRAP_MEMBER}")
