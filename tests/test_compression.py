"""Chunk decompression: zstd reuses one context per thread, which must not leak state between
chunks, between threads, or past a chunk that fails to decompress."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from nydus_compact.rafs.compression import Compressor, compress, decompress


def _chunks(seed: int, n: int = 64) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(1, 3000)) + bytes(rng.randrange(100, 5000)) for _ in range(n)]


def test_zstd_chunks_decompress_alike_on_many_threads_at_once():
    packed = [(s, c) for c in _chunks(1, 300) for s, ok in [compress(Compressor.ZSTD, c)] if ok]
    stored, chunks = [s for s, _ in packed], [c for _, c in packed]
    assert len(chunks) > 100

    def check(k: int) -> bool:
        return all(decompress(Compressor.ZSTD, s, len(c)) == c for s, c in zip(stored[k::4], chunks[k::4]))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, range(4)))


def test_zstd_decompresses_again_after_a_chunk_that_does_not():
    (chunk,) = _chunks(2, 1)
    stored, packed = compress(Compressor.ZSTD, chunk)
    assert packed
    with pytest.raises(ValueError, match="zstd"):
        decompress(Compressor.ZSTD, stored[:-3], len(chunk))
    with pytest.raises(ValueError):
        decompress(Compressor.ZSTD, stored, len(chunk) + 1)
    assert decompress(Compressor.ZSTD, stored, len(chunk)) == chunk
