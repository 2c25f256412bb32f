"""On-disk layouts of the RAFS v6 blob meta (blob-v6.md §4–§11) and their validating reader.

A v6 data blob ends with the chunk-info ("ci") array, its 4096-byte header and, with HAS_TOC,
reversed-tar framed regions: a chunk digest array and a table of contents. The same codecs are
used by the blob writer, so a blob written here reads back through ``read_blob_meta``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import zstandard

from .compression import Compressor, decompress
from .constants import BLOCK_SIZE, MAX_CI_ENTRIES
from .errors import RafsFormatError
from .flags import BlobFeatures
from .model import BlobInfo

BLOB_META_MAGIC = 0xB10BB10B
HEADER_SIZE = 4096
TAR_BLOCK = 512
TOC_ENTRY_SIZE = 128
DIGEST_SIZE = 32
# validate_header: the 4K-aligned ci array must stay below these (v1 / v2).
MAX_CI_V1_BYTES = 256 << 20
MAX_CI_V2_BYTES = 384 << 20
# TocLocation bounds on blob_toc_size.
MAX_TOC_SIZE = 64 << 10

CI_V1_SIZE = 16
CI_V2_SIZE = 24

# Decoded chunk-info entry, one per ci index. ``flags`` uses the v2 bits (1 COMPRESSED,
# 2 ZRAN); for v1 COMPRESSED is derived from the sizes. ``data`` is the v2 zran word.
CI_DTYPE = np.dtype(
    [
        ("compressed_offset", "<u8"),
        ("compressed_size", "<u4"),
        ("uncompressed_offset", "<u8"),
        ("uncompressed_size", "<u4"),
        ("flags", "u1"),
        ("data", "<u8"),
    ]
)

CI_V2_COMPRESSED = 0x01
CI_V2_ZRAN = 0x02

_U8 = np.uint64


class BlobReader(Protocol):
    """Random access to a blob: ``read`` returns exactly ``size`` bytes or raises."""

    def read(self, offset: int, size: int) -> bytes: ...


class FileBlobReader:
    """Exact positional reads from a local blob file."""

    def __init__(self, path: str | Path):
        self.name = str(path)
        self._path = path

    def read(self, offset: int, size: int) -> bytes:
        with open(self._path, "rb") as f:
            data = os.pread(f.fileno(), size, offset)
            while len(data) < size:
                more = os.pread(f.fileno(), size - len(data), offset + len(data))
                if not more:
                    raise RafsFormatError(self.name, f"blob too short: wanted {size} bytes", offset)
                data += more
        return data


# ---------------------------------------------------------------------------------------
# Chunk-info arrays (blob-v6.md §4)


def encode_ci(ci: np.ndarray, *, v2: bool, name: str = "<ci>") -> bytes:
    """Serialize a CI_DTYPE array; refuses values the format cannot hold."""
    coff = ci["compressed_offset"].astype(_U8)
    csize = ci["compressed_size"].astype(_U8)
    uoff = ci["uncompressed_offset"].astype(_U8)
    usize = ci["uncompressed_size"].astype(_U8)
    compressed = (ci["flags"] & CI_V2_COMPRESSED) != 0
    if np.any(uoff & _U8(0xFFF)) or np.any(uoff >= _U8(1 << 44)):
        raise RafsFormatError(name, "ci uncompressed_offset must be 4K-aligned and below 2^44")
    if np.any(coff >= _U8(1 << 40)):
        raise RafsFormatError(name, "ci compressed_offset must be below 2^40")
    if np.any(usize == 0) or np.any(usize > _U8(MAX_CI_ENTRIES)):
        raise RafsFormatError(name, "ci uncompressed_size must be in 1..16 MiB")
    # v1 stores size-1 in 24 bits, v2 the size itself (blob-v6.md §14.3).
    max_csize = MAX_CI_ENTRIES - 1 if v2 else MAX_CI_ENTRIES
    if np.any(csize == 0) or np.any(csize > _U8(max_csize)):
        raise RafsFormatError(name, "ci compressed_size out of range")
    if np.any(~compressed & (csize != usize)):
        raise RafsFormatError(name, "an uncompressed chunk must have compressed_size == uncompressed_size")
    out = np.empty((len(ci), 3 if v2 else 2), dtype="<u8")
    if v2:
        out[:, 0] = (uoff >> _U8(12)) | ((usize - _U8(1)) << _U8(32)) | (ci["flags"].astype(_U8) << _U8(56))
        out[:, 1] = coff | (csize << _U8(40))
        out[:, 2] = ci["data"]
    else:
        # v1 has no compressed flag: it is implied by csize != usize (blob-v6.md §14.2).
        if np.any(compressed & (csize == usize)):
            raise RafsFormatError(name, "ci v1 cannot hold a compressed chunk as large as its data")
        um1 = usize - _U8(1)
        cm1 = csize - _U8(1)
        out[:, 0] = uoff | ((um1 & _U8(0xFFFFF)) << _U8(44)) | ((um1 & _U8(0xF00000)) >> _U8(12))
        out[:, 1] = coff | ((cm1 & _U8(0xFFFFF)) << _U8(44)) | ((cm1 & _U8(0xF00000)) << _U8(20))
    return out.tobytes()


def decode_ci(raw: bytes, *, v2: bool, name: str = "<ci>") -> np.ndarray:
    width = CI_V2_SIZE if v2 else CI_V1_SIZE
    if len(raw) % width:
        raise RafsFormatError(name, f"ci array size {len(raw)} is not a multiple of {width}")
    words = np.frombuffer(raw, dtype="<u8").reshape(-1, width // 8)
    u = words[:, 0]
    c = words[:, 1]
    ci = np.zeros(len(words), dtype=CI_DTYPE)
    if v2:
        ci["uncompressed_offset"] = (u & _U8(0xFFFF_FFFF)) << _U8(12)
        ci["uncompressed_size"] = ((u >> _U8(32)) & _U8(0xFF_FFFF)) + _U8(1)
        ci["flags"] = u >> _U8(56)
        ci["compressed_offset"] = c & _U8(0xFF_FFFF_FFFF)
        ci["compressed_size"] = c >> _U8(40)
        ci["data"] = words[:, 2]
    else:
        ci["uncompressed_offset"] = u & _U8(0x0000_0FFF_FFFF_F000)
        ci["uncompressed_size"] = (((u & _U8(0xF00)) << _U8(12)) | (u >> _U8(44))) + _U8(1)
        ci["compressed_offset"] = c & _U8(0xFF_FFFF_FFFF)
        ci["compressed_size"] = (((c & _U8(0xF00_0000_0000)) >> _U8(20)) | (c >> _U8(44))) + _U8(1)
        ci["flags"] = np.where(ci["compressed_size"] != ci["uncompressed_size"], CI_V2_COMPRESSED, 0)
    return ci


# ---------------------------------------------------------------------------------------
# The 4096-byte BlobCompressionContextHeader (blob-v6.md §5)

_HEADER = struct.Struct("<IIIIQQQQQI4032sI")
assert _HEADER.size == HEADER_SIZE


@dataclass(slots=True)
class BlobMetaHeader:
    features: int
    ci_compressor: int
    ci_entries: int
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    ci_zran_offset: int = 0
    ci_zran_size: int = 0
    ci_zran_count: int = 0

    def pack(self) -> bytes:
        return _HEADER.pack(
            BLOB_META_MAGIC,
            self.features,
            self.ci_compressor,
            self.ci_entries,
            self.ci_offset,
            self.ci_compressed_size,
            self.ci_uncompressed_size,
            self.ci_zran_offset,
            self.ci_zran_size,
            self.ci_zran_count,
            bytes(4032),
            BLOB_META_MAGIC,
        )

    @classmethod
    def unpack(cls, raw: bytes, name: str, offset: int) -> "BlobMetaHeader":
        (magic, features, comp, entries, ci_off, ci_csize, ci_usize, z_off, z_size, z_count, _, magic2) = (
            _HEADER.unpack(raw)
        )
        if magic != BLOB_META_MAGIC or magic2 != BLOB_META_MAGIC:
            raise RafsFormatError(name, "blob meta header: bad magic", offset)
        return cls(features, comp, entries, ci_off, ci_csize, ci_usize, z_off, z_size, z_count)


def compress_ci(raw: bytes, allow_zstd: bool) -> tuple[bytes, int]:
    """zstd the ci array when that makes it smaller (blob-v6.md §5.2); returns (bytes, ci_compressor)."""
    if allow_zstd:
        packed = zstandard.ZstdCompressor(level=3).compress(raw)
        if len(packed) < len(raw):
            return packed, int(Compressor.ZSTD)
    return raw, int(Compressor.NONE)


# ---------------------------------------------------------------------------------------
# GNU tar headers (blob-v6.md §7)

_GNU_MAGIC = b"ustar  \x00"


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte header Rust ``tar::Header::new_gnu()`` produces for the builder's regions."""
    h = bytearray(TAR_BLOCK)
    raw = name.encode()
    if len(raw) > 100:
        raise ValueError(f"tar name too long: {name!r}")
    h[0 : len(raw)] = raw
    h[124:136] = b"%011o\x00" % size
    h[136:148] = b"00000000000\x00"
    h[156] = ord("0")
    h[257:265] = _GNU_MAGIC
    h[148:156] = b" " * 8
    h[148:156] = b"%07o\x00" % sum(h)
    return bytes(h)


def parse_tar_header(raw: bytes, name: str, offset: int) -> tuple[str, int]:
    """(entry name, size) of a GNU regular-file header, checksum verified."""
    if len(raw) != TAR_BLOCK or raw[257:265] != _GNU_MAGIC or raw[156] != ord("0"):
        raise RafsFormatError(name, "not a GNU regular-file tar header", offset)
    h = bytearray(raw)
    h[148:156] = b" " * 8
    try:
        size = int(raw[124:136].rstrip(b"\x00 ") or b"0", 8)
        checksum = int(raw[148:156].rstrip(b"\x00 ") or b"0", 8)
        entry = raw[0:100].split(b"\x00", 1)[0].decode()
    except (ValueError, UnicodeDecodeError):
        raise RafsFormatError(name, "malformed tar header field", offset) from None
    if checksum != sum(h):
        raise RafsFormatError(name, "tar header checksum mismatch", offset)
    return entry, size


# ---------------------------------------------------------------------------------------
# ToC entries (blob-v6.md §10)

_TOC_ENTRY = struct.Struct("<II16s32sQQQ44s4s")
assert _TOC_ENTRY.size == TOC_ENTRY_SIZE

TOC_COMPRESSION_NONE = 0x1
TOC_COMPRESSION_ZSTD = 0x2
TOC_COMPRESSION_LZ4_BLOCK = 0x4
_TOC_FLAG_OF = {
    Compressor.NONE: TOC_COMPRESSION_NONE,
    Compressor.ZSTD: TOC_COMPRESSION_ZSTD,
    Compressor.LZ4_BLOCK: TOC_COMPRESSION_LZ4_BLOCK,
}


def toc_flags(compressor: int) -> int:
    return _TOC_FLAG_OF[Compressor(compressor)]


@dataclass(slots=True)
class TocEntry:
    flags: int
    name: str
    digest: bytes  # sha256 of the uncompressed content
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int
    # The last 4 bytes of reserved2: uninitialised padding in 2.2-dev builds (blob-v6.md §0).
    tail: bytes = bytes(4)

    def pack(self) -> bytes:
        return _TOC_ENTRY.pack(
            self.flags,
            0,
            self.name.encode(),
            self.digest,
            self.compressed_offset,
            self.compressed_size,
            self.uncompressed_size,
            bytes(44),
            self.tail,
        )

    @classmethod
    def unpack(cls, raw: bytes, blob: str, offset: int) -> "TocEntry":
        flags, _, name, digest, coff, csize, usize, _, tail = _TOC_ENTRY.unpack(raw)
        try:
            text = name.split(b"\x00", 1)[0].decode()
        except UnicodeDecodeError:
            raise RafsFormatError(blob, "ToC entry name is not UTF-8", offset) from None
        return cls(flags, text, digest, coff, csize, usize, tail)


# ---------------------------------------------------------------------------------------
# Reading and validating a blob's meta


@dataclass(slots=True)
class BlobMeta:
    name: str
    header: BlobMetaHeader
    ci: np.ndarray  # CI_DTYPE, position = ci index
    ci_raw: bytes  # uncompressed ci array as stored
    compressed_data_size: int  # bound of chunk data (blob-v6.md §8)
    toc: list[TocEntry] | None = None
    digests: bytes | None = None  # 32 × chunk_count, ci order

    def digest(self, index: int) -> bytes | None:
        if self.digests is None:
            return None
        return self.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]


def compressed_data_size(info: BlobInfo) -> int:
    """BlobInfo::compressed_data_size: where chunk data must end (blob-v6.md §8)."""
    if info.features & BlobFeatures.CAP_TAR_TOC and info.ci_compressed_size:
        if info.features & BlobFeatures.HAS_TAR_HEADER:
            return info.ci_offset - TAR_BLOCK
        return info.ci_offset
    return info.compressed_size


def read_blob_meta(
    source: str | Path | BlobReader, info: BlobInfo, blob_size: int, *, name: str | None = None
) -> BlobMeta:
    """Read the ci array + header (and with HAS_TOC the ToC and digest array) and validate them
    against the blob-table entry ``info`` (blob-v6.md §4.4, §5, §9, §10)."""
    if isinstance(source, (str, Path)):
        reader: BlobReader = FileBlobReader(source)
        name = name or str(source)
    else:
        reader = source
        name = name or getattr(source, "name", None) or info.blob_id
    v2 = bool(info.features & BlobFeatures.CHUNK_INFO_V2)
    count = info.chunk_count
    if not 0 < count <= MAX_CI_ENTRIES:
        raise RafsFormatError(name, f"chunk_count {count} outside 1..2^24")
    width = CI_V2_SIZE if v2 else CI_V1_SIZE
    zran = bool(info.features & BlobFeatures.ZRAN)
    if v2 and zran:
        ok_size = info.ci_uncompressed_size >= count * width
    else:
        ok_size = not zran and info.ci_uncompressed_size == count * width
    limit = MAX_CI_V2_BYTES if v2 else MAX_CI_V1_BYTES
    if not ok_size or _align(info.ci_uncompressed_size, BLOCK_SIZE) > limit:
        raise RafsFormatError(name, f"ci_uncompressed_size {info.ci_uncompressed_size} wrong for {count} entries")
    if info.ci_compressed_size > info.ci_uncompressed_size:
        raise RafsFormatError(name, "ci_compressed_size exceeds ci_uncompressed_size")
    end = info.ci_offset + info.ci_compressed_size + HEADER_SIZE
    if end > blob_size:
        raise RafsFormatError(name, f"ci array + header end at {end}, past the blob end {blob_size}", info.ci_offset)

    raw = reader.read(info.ci_offset, info.ci_compressed_size + HEADER_SIZE)
    header_off = info.ci_offset + info.ci_compressed_size
    header = BlobMetaHeader.unpack(raw[info.ci_compressed_size :], name, header_off)
    expected = (info.features, info.ci_compressor, count, info.ci_offset, info.ci_compressed_size,
                info.ci_uncompressed_size)  # fmt: skip
    got = (header.features, header.ci_compressor, header.ci_entries, header.ci_offset, header.ci_compressed_size,
           header.ci_uncompressed_size)  # fmt: skip
    if got != expected:
        raise RafsFormatError(name, f"blob meta header {got} disagrees with the blob table {expected}", header_off)
    try:
        algo = Compressor(info.ci_compressor)
        ci_raw = decompress(algo, raw[: info.ci_compressed_size], info.ci_uncompressed_size)
    except ValueError as exc:
        raise RafsFormatError(name, f"ci array does not decompress: {exc}", info.ci_offset) from None
    ci = decode_ci(ci_raw[: count * width], v2=v2, name=name)
    data_size = compressed_data_size(info)
    _validate_ci(ci, info, data_size, v2, name)

    meta = BlobMeta(name=name, header=header, ci=ci, ci_raw=ci_raw, compressed_data_size=data_size)
    if info.features & BlobFeatures.HAS_TOC:
        _read_toc(reader, info, blob_size, meta)
    return meta


def _validate_ci(ci: np.ndarray, info: BlobInfo, data_size: int, v2: bool, name: str) -> None:
    coff = ci["compressed_offset"].astype(_U8)
    csize = ci["compressed_size"].astype(_U8)
    uoff = ci["uncompressed_offset"].astype(_U8)
    usize = ci["uncompressed_size"].astype(_U8)
    flags = ci["flags"]

    def fail(mask: np.ndarray, check: str) -> None:
        bad = np.flatnonzero(mask)
        if len(bad):
            raise RafsFormatError(name, f"ci entry {int(bad[0])}: {check}")

    if not info.features & BlobFeatures.SEPARATE:
        if data_size < 0:
            raise RafsFormatError(name, f"ci_offset {info.ci_offset} leaves no room for the data tar header")
        fail(coff + csize > _U8(data_size), f"compressed data past the data region ({data_size} bytes)")
        if v2:
            fail(csize == 0, "compressed_size is 0")
    cache_size = _U8(min(_align(info.uncompressed_size, BLOCK_SIZE), (1 << 64) - 1))
    fail(uoff + usize > cache_size, "past the blob's uncompressed_size")
    fail((flags & CI_V2_COMPRESSED == 0) & (csize != usize), "uncompressed chunk with csize != usize")
    if v2:
        fail(flags & ~np.uint8(CI_V2_COMPRESSED | CI_V2_ZRAN) != 0, "unknown chunk flags")
        if not info.features & BlobFeatures.ZRAN:
            fail(flags & CI_V2_ZRAN != 0, "ZRAN chunk in a non-ZRAN blob")
    if len(ci) > 1:
        fail(np.concatenate(([False], uoff[1:] <= uoff[:-1])), "uncompressed offsets not increasing")
        fail(np.concatenate(([False], coff[1:] <= coff[:-1])), "compressed offsets not increasing")
        aligned_end = (uoff[:-1] + usize[:-1] + _U8(4095)) & ~_U8(4095)
        fail(np.concatenate(([False], uoff[1:] != aligned_end)), "uncompressed space not 4K-contiguous")


def _read_toc(reader: BlobReader, info: BlobInfo, blob_size: int, meta: BlobMeta) -> None:
    name = meta.name
    size = info.blob_toc_size
    if not TAR_BLOCK + TOC_ENTRY_SIZE <= size <= MAX_TOC_SIZE or size % TOC_ENTRY_SIZE or size > blob_size:
        raise RafsFormatError(name, f"blob_toc_size {size} invalid")
    start = blob_size - size
    raw = reader.read(start, size)
    if any(info.blob_toc_digest) and hashlib.sha256(raw).digest() != info.blob_toc_digest:
        raise RafsFormatError(name, "ToC sha256 differs from blob_toc_digest", start)
    entry, entry_size = parse_tar_header(raw[-TAR_BLOCK:], name, blob_size - TAR_BLOCK)
    if entry != "rafs.blob.toc" or entry_size != size - TAR_BLOCK:
        raise RafsFormatError(name, f"ToC tar header names {entry!r} of {entry_size} bytes", blob_size - TAR_BLOCK)
    toc = [
        TocEntry.unpack(raw[o : o + TOC_ENTRY_SIZE], name, start + o) for o in range(0, entry_size, TOC_ENTRY_SIZE)
    ]
    meta.toc = toc
    by_name = {e.name: e for e in toc}
    checks = {
        "blob.meta": (info.ci_offset, info.ci_compressed_size, meta.ci_raw),
        "blob.meta.header": (info.ci_offset + info.ci_compressed_size, HEADER_SIZE, meta.header.pack()),
    }
    for entry_name, (offset, csize, content) in checks.items():
        e = by_name.get(entry_name)
        if e is None:
            continue
        if (e.compressed_offset, e.compressed_size) != (offset, csize) or hashlib.sha256(content).digest() != e.digest:
            raise RafsFormatError(name, f"ToC entry {entry_name} disagrees with the blob meta", start)

    digest_entry = by_name.get("blob.digest")
    if digest_entry is None:
        if info.features & BlobFeatures.INLINED_CHUNK_DIGEST:
            raise RafsFormatError(name, "INLINED_CHUNK_DIGEST blob without a blob.digest ToC entry", start)
        return
    want = DIGEST_SIZE * info.chunk_count
    d_off, d_size = digest_entry.compressed_offset, digest_entry.compressed_size
    if d_size != want or digest_entry.uncompressed_size != want or d_off + d_size > start:
        raise RafsFormatError(name, f"blob.digest is {d_size} bytes at {d_off}, expected {want} before the ToC", start)
    digests = reader.read(d_off, d_size)
    if hashlib.sha256(digests).digest() != digest_entry.digest:
        raise RafsFormatError(name, "blob.digest sha256 mismatch", d_off)
    meta.digests = digests


def blob_size_problem(reader: BlobReader, info: BlobInfo, blob_size: int, name: str | None = None) -> str | None:
    """Why a blob file of ``blob_size`` bytes does not fit its blob-table entry; None when it does.

    The file may be longer than ``compressed_size`` only by metadata the builder appends after
    the recorded part (blob-v6.md §1 B/C, §8, §10): the 2.2 compactor records only the data
    size, and an inlined-meta blob records where its bootstrap starts. Every byte past the
    recorded size must then belong to a region found where the spec puts it (tar headers named
    as the builder names them, the ci header, ToC entries), ending exactly at the end of the file.
    """
    recorded = info.compressed_size
    if not recorded or blob_size == recorded:
        return None
    where = f"{blob_size} bytes, the blob table says {recorded}"
    if blob_size < recorded:
        return f"{where}: the blob file is truncated"
    name = name or info.blob_id
    try:
        ends = _metadata_region_ends(reader, info, blob_size, name)
    except RafsFormatError as exc:
        return f"{where}, and the {blob_size - recorded} bytes past it are not blob metadata ({exc.check})"
    if ends is None or recorded not in ends or ends[-1] != blob_size:
        return f"{where}, and the {blob_size - recorded} bytes past it are not blob metadata the format describes"
    return None


def _metadata_region_ends(reader: BlobReader, info: BlobInfo, blob_size: int, name: str) -> list[int] | None:
    """Offsets where the chunk data and each region after it end, in file order; None for a blob
    without blob meta, after which nothing may follow."""
    if not (info.features & BlobFeatures.CAP_TAR_TOC and info.ci_compressed_size):
        return None
    tar = bool(info.features & BlobFeatures.HAS_TAR_HEADER)
    meta = read_blob_meta(reader, info, blob_size, name=name)  # ci array, its header and the ToC, validated
    pos = compressed_data_size(info)
    ends = [pos]

    def region(entry: str, offset: int, length: int, header_size: int | None = None) -> None:
        """``length`` bytes at ``offset`` (right where the previous region ended), then the tar
        header naming them when the blob has tar headers."""
        nonlocal pos
        if offset != pos:
            raise RafsFormatError(name, f"{entry} starts at {offset}, where the spec puts it is {pos}", offset)
        pos += length
        if tar:
            if pos + TAR_BLOCK > blob_size:
                raise RafsFormatError(name, f"no room for the {entry} tar header", pos)
            want = (entry, length if header_size is None else header_size)
            got = parse_tar_header(reader.read(pos, TAR_BLOCK), name, pos)
            if got != want:
                raise RafsFormatError(name, f"the tar header names {got[0]!r} of {got[1]} bytes, not {want[0]!r}", pos)
            pos += TAR_BLOCK
        ends.append(pos)

    if tar:
        region("image.blob", pos, 0, header_size=pos)  # the data's header follows the data
    region("blob.meta", info.ci_offset, info.ci_compressed_size + HEADER_SIZE)
    if meta.toc is not None:
        for entry in sorted((e for e in meta.toc if e.compressed_offset >= pos), key=lambda e: e.compressed_offset):
            if entry.name not in _APPENDED_ENTRIES:
                raise RafsFormatError(name, f"unexpected ToC entry {entry.name!r} after the blob meta", entry.compressed_offset)
            region(entry.name, entry.compressed_offset, entry.compressed_size)
        region("rafs.blob.toc", blob_size - info.blob_toc_size, info.blob_toc_size - TAR_BLOCK)
    elif info.features & BlobFeatures.INLINED_FS_META and tar and blob_size - pos >= TAR_BLOCK:
        # Without a ToC the inlined bootstrap and its tar header are the last region.
        _, size = parse_tar_header(reader.read(blob_size - TAR_BLOCK, TAR_BLOCK), name, blob_size - TAR_BLOCK)
        region("image.boot", pos, size)
    return ends


# Regions the builder appends between the blob meta and the ToC (blob-v6.md §1 C, §10).
_APPENDED_ENTRIES = frozenset({"blob.digest", "image.boot"})


def _align(x: int, n: int) -> int:
    return (x + n - 1) // n * n

