"""Hostile input: truncated and corrupted fixtures must load or fail with the format error, fast.

Deterministic (derandomize=True, no example database) and bounded so the module runs in well
under a minute. A hang is caught by an interval timer, not only by Hypothesis' deadline (which
only reports slow examples after they finish).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import struct
from collections.abc import Iterator
from datetime import timedelta

import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nydus_compact.rafs.errors import RafsFormatError
from nydus_compact.rafs.loader import MIN_BOOTSTRAP_SIZE, load_bootstrap, parse_bootstrap

BOOTSTRAPS = ("sha256-nocompress-repeatable", "blake3-lz4_block-non_repeatable", "rafs-v6-2.2.boot")
V6_BLOB = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
HANG_SECONDS = 10.0

FUZZ = settings(
    derandomize=True,
    database=None,
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=timedelta(seconds=3),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Values that break naive bounds arithmetic when written over a length or offset field.
NASTY_U32 = (0, 1, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0x2000, 0xFFFF, 0x10000,
             0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFF8, 0xFFFF_FFFF)  # fmt: skip
NASTY_U64 = NASTY_U32 + (1 << 32, 1 << 40, 1 << 44, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def load_or_format_error(data: bytes) -> None:
    """The property: parse succeeds or raises RafsFormatError. Anything else propagates."""
    with no_hang():
        try:
            bs = parse_bootstrap(data, "fuzz.boot")
        except RafsFormatError:
            return
    # A successful load must describe itself consistently.
    assert all(0 <= n.chunk_start and n.chunk_start + n.chunk_count <= len(bs.chunks) for n in bs.nodes)


_DATA = {name: (FIXTURES / name).read_bytes() for name in BOOTSTRAPS}


def _mutations(size: int) -> st.SearchStrategy:
    # Offsets biased towards the superblocks and tables, where lengths and offsets live.
    # (v5: superblock, tables, first records; v6: superblocks, blob table, root inode, chunk table.)
    offset = st.one_of(st.integers(0, 96), st.integers(1024, 1700), st.integers(4096, 4400),
                       st.integers(8192, 8700), st.integers(12288, 13000), st.integers(16384, 16600),
                       st.integers(0, size - 1)).map(lambda o: min(o, size - 1))  # fmt: skip
    flip = st.tuples(st.just("xor"), offset, st.integers(1, 255))
    smash = st.tuples(st.just("bytes"), offset, st.binary(min_size=1, max_size=64))
    u32 = st.tuples(st.just("u32"), offset.map(lambda o: o & ~3), st.sampled_from(NASTY_U32))
    u64 = st.tuples(st.just("u64"), offset.map(lambda o: o & ~7), st.sampled_from(NASTY_U64))
    return st.lists(st.one_of(flip, smash, u32, u64), min_size=1, max_size=6)


def _apply(data: bytes, mutations: list[tuple]) -> bytes:
    buf = bytearray(data)
    for kind, offset, value in mutations:
        if kind == "xor":
            buf[offset] ^= value
        elif kind == "bytes":
            buf[offset : offset + len(value)] = value[: max(0, len(buf) - offset)]
        elif kind == "u32" and offset + 4 <= len(buf):
            struct.pack_into("<I", buf, offset, value)
        elif kind == "u64" and offset + 8 <= len(buf):
            struct.pack_into("<Q", buf, offset, value)
    return bytes(buf[: len(data)])


@pytest.mark.parametrize("name", BOOTSTRAPS)
def test_fixture_loads_unmodified(name: str) -> None:
    load_bootstrap(FIXTURES / name)


@pytest.mark.parametrize("name", BOOTSTRAPS)
def test_truncation_sweep(name: str) -> None:
    data = _DATA[name]
    for end in range(MIN_BOOTSTRAP_SIZE, len(data), 8):
        load_or_format_error(data[:end])
    for end in (0, 1, 4, 1027, 1028, 4096, MIN_BOOTSTRAP_SIZE - 1):
        with pytest.raises(RafsFormatError):
            parse_bootstrap(data[:end], "fuzz.boot")


@pytest.mark.parametrize("name", BOOTSTRAPS)
def test_truncation_and_extension(name: str) -> None:
    data = _DATA[name]

    @FUZZ
    @given(end=st.integers(MIN_BOOTSTRAP_SIZE, len(data) + 8192), fill=st.sampled_from([b"\0", b"\xff", b"A"]))
    def check(end: int, fill: bytes) -> None:
        load_or_format_error((data + fill * 8192)[:end])

    check()


@pytest.mark.parametrize("name", BOOTSTRAPS)
def test_corruption(name: str) -> None:
    data = _DATA[name]

    @FUZZ
    @given(mutations=_mutations(len(data)))
    def check(mutations: list[tuple]) -> None:
        load_or_format_error(_apply(data, mutations))

    check()


@pytest.mark.parametrize("name", BOOTSTRAPS)
def test_every_byte_of_the_header_flipped(name: str) -> None:
    data = _DATA[name]
    start = 0 if name != "rafs-v6-2.2.boot" else 1024
    for offset in range(start, start + 512):
        for mask in (0x01, 0x80, 0xFF):
            buf = bytearray(data)
            buf[offset] ^= mask
            load_or_format_error(bytes(buf))


# -- v6 blob meta ------------------------------------------------------------------------------


class OutOfRange(Exception):
    """read_blob_meta asked for bytes outside the blob: a reader bug, not a format error."""


class MemoryBlob:
    def __init__(self, data: bytes):
        self.data = data
        self.name = "fuzz.blob"

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise OutOfRange(f"read({offset}, {size}) of a {len(self.data)}-byte blob")
        return self.data[offset : offset + size]


def _blob_meta_case(blob: bytes, info) -> None:
    from nydus_compact.rafs.blob_meta import read_blob_meta

    with no_hang():
        try:
            read_blob_meta(MemoryBlob(blob), info, len(blob))
        except RafsFormatError:
            pass


@pytest.fixture(scope="module")
def v6_blob_info():
    return load_bootstrap(FIXTURES / "rafs-v6-2.2.boot").blobs[0]


def test_blob_meta_corruption(v6_blob_info) -> None:
    from nydus_compact.rafs.blob_meta import read_blob_meta

    blob = (FIXTURES / V6_BLOB).read_bytes()
    read_blob_meta(MemoryBlob(blob), v6_blob_info, len(blob))  # the fixture itself is valid

    @FUZZ
    @given(mutations=st.lists(
        st.tuples(st.sampled_from(["xor", "u32", "u64"]),
                  st.one_of(st.integers(7802, 8346 + 64), st.integers(12954, len(blob) - 1),
                            st.integers(0, len(blob) - 1)),
                  st.integers(1, 255)),
        min_size=1, max_size=4))  # fmt: skip
    def check(mutations: list[tuple]) -> None:
        fixed = [
            (kind, off & ~3 if kind == "u32" else off & ~7 if kind == "u64" else off,
             value if kind == "xor" else NASTY_U64[value % len(NASTY_U64)] & (0xFFFF_FFFF if kind == "u32" else ~0))
            for kind, off, value in mutations
        ]  # fmt: skip
        _blob_meta_case(_apply(blob, fixed), v6_blob_info)

    check()


def test_blob_meta_hostile_table_entry(v6_blob_info) -> None:
    blob = (FIXTURES / V6_BLOB).read_bytes()
    fields = ("chunk_count", "ci_offset", "ci_compressed_size", "ci_uncompressed_size", "ci_compressor",
              "blob_toc_size", "features", "compressed_size", "uncompressed_size")  # fmt: skip

    @FUZZ
    @given(changes=st.dictionaries(st.sampled_from(fields), st.sampled_from(NASTY_U64), min_size=1, max_size=3),
           cut=st.sampled_from([0, 1, 512, 4096]))  # fmt: skip
    def check(changes: dict[str, int], cut: int) -> None:
        _blob_meta_case(blob[: len(blob) - cut], dataclasses.replace(v6_blob_info, **changes))

    check()
