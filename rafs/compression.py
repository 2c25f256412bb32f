"""Chunk compressors (blob-v6.md §3, rafs-v5.md §14.2). Numbering is nydus's compress::Algorithm."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable
from enum import IntEnum

import lz4.block
import zstandard


class Compressor(IntEnum):
    NONE = 0
    LZ4_BLOCK = 1
    GZIP = 2
    ZSTD = 3

    @property
    def label(self) -> str:
        return _LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> "Compressor":
        for algo, name in _LABELS.items():
            if name == label:
                return algo
        raise ValueError(f"unknown compressor {label!r} (expected one of {', '.join(_LABELS.values())})")


_LABELS = {
    Compressor.NONE: "none",
    Compressor.LZ4_BLOCK: "lz4_block",
    Compressor.GZIP: "gzip",
    Compressor.ZSTD: "zstd",
}

_ZSTD_LEVEL = 3
# One zstd decompression context per thread (a context is not safe to share between threads):
# making one costs ~10 times the decompression of a 4 KiB chunk.
_local = threading.local()


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "zstd", None)
    if dec is None:
        dec = _local.zstd = zstandard.ZstdDecompressor()
    return dec


def compress(algo: Compressor, data: bytes) -> tuple[bytes, bool]:
    """Compress one chunk as nydus-image does: keep the raw bytes unless the output is smaller.

    Returns (stored bytes, compressed?).
    """
    if algo == Compressor.NONE or not data:
        return data, False
    if algo == Compressor.LZ4_BLOCK:
        out = lz4.block.compress(data, mode="default", store_size=False)
    elif algo == Compressor.ZSTD:
        out = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)
    else:
        out = gzip.compress(data, mtime=0)
    if len(out) < len(data):
        return out, True
    return data, False


def decompress(algo: Compressor, data: bytes, uncompressed_size: int) -> bytes:
    """Decompress into exactly ``uncompressed_size`` bytes; raises ValueError on any mismatch."""
    return decompressor(algo)(data, uncompressed_size)


def decompressor(algo: Compressor) -> Callable[[bytes | memoryview, int], bytes]:
    """``decompress`` for one algorithm, looked up once for a loop over many chunks. Call it on the
    thread that asked for it: it holds that thread's zstd context."""
    if algo == Compressor.NONE:
        return _exact
    if algo == Compressor.LZ4_BLOCK:
        return _lz4
    if algo == Compressor.ZSTD:
        dctx = _zstd_decompressor()

        def zstd(data: bytes | memoryview, uncompressed_size: int) -> bytes:
            try:
                out = dctx.decompress(data, max_output_size=uncompressed_size)
            except zstandard.ZstdError as exc:
                raise ValueError(f"zstd: {exc}") from None
            return _exact(out, uncompressed_size)

        return zstd
    return _gzip


def _exact(out: bytes | memoryview, uncompressed_size: int) -> bytes:
    if len(out) != uncompressed_size:
        raise ValueError(f"decompressed to {len(out)} bytes, expected {uncompressed_size}")
    return out  # type: ignore[return-value]


def _lz4(data: bytes | memoryview, uncompressed_size: int) -> bytes:
    try:
        out = lz4.block.decompress(data, uncompressed_size=uncompressed_size)
    except lz4.block.LZ4BlockError as exc:
        raise ValueError(f"lz4_block: {exc}") from None
    return _exact(out, uncompressed_size)


def _gzip(data: bytes | memoryview, uncompressed_size: int) -> bytes:
    try:
        out = zlib.decompressobj(wbits=31).decompress(data, uncompressed_size + 1)
    except zlib.error as exc:
        raise ValueError(f"gzip: {exc}") from None
    return _exact(out, uncompressed_size)
