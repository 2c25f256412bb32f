"""Bit sets shared by v5 and v6: RafsSuperFlags, BlobFeatures, BlobChunkFlags (rafs-v5.md §2.1, §6.1;
rafs-v6.md §3; blob-v6.md §6)."""

from __future__ import annotations

from enum import IntFlag

from .compression import Compressor
from .digest import Digester


class SuperFlags(IntFlag):
    COMPRESSION_NONE = 0x1
    COMPRESSION_LZ4 = 0x2
    HASH_BLAKE3 = 0x4
    HASH_SHA256 = 0x8
    EXPLICIT_UID_GID = 0x10
    HAS_XATTR = 0x20
    COMPRESSION_GZIP = 0x40
    COMPRESSION_ZSTD = 0x80
    INLINED_CHUNK_DIGEST = 0x100


# PRESERVED_COMPAT_7..0: accepted, unused.
SUPER_FLAGS_PRESERVED = 0xFF00_0000
SUPER_FLAGS_KNOWN = 0x1FF | SUPER_FLAGS_PRESERVED

COMPRESSION_BITS = {
    SuperFlags.COMPRESSION_NONE: Compressor.NONE,
    SuperFlags.COMPRESSION_LZ4: Compressor.LZ4_BLOCK,
    SuperFlags.COMPRESSION_GZIP: Compressor.GZIP,
    SuperFlags.COMPRESSION_ZSTD: Compressor.ZSTD,
}
HASH_BITS = {SuperFlags.HASH_BLAKE3: Digester.BLAKE3, SuperFlags.HASH_SHA256: Digester.SHA256}


def compressor_from_flags(flags: int) -> Compressor:
    """Decoding priority of nydus 2.2: NONE, LZ4, GZIP, ZSTD; no bit means lz4_block."""
    for bit, algo in COMPRESSION_BITS.items():
        if flags & bit:
            return algo
    return Compressor.LZ4_BLOCK


def digester_from_flags(flags: int) -> Digester:
    """BLAKE3 if its bit (or no hash bit) is set, else SHA256."""
    if flags & SuperFlags.HASH_BLAKE3:
        return Digester.BLAKE3
    if flags & SuperFlags.HASH_SHA256:
        return Digester.SHA256
    return Digester.BLAKE3


def flags_for(compressor: Compressor, digester: Digester) -> int:
    """The compression|hash bits the builder sets for an algorithm pair."""
    comp = {v: k for k, v in COMPRESSION_BITS.items()}[compressor]
    dig = {v: k for k, v in HASH_BITS.items()}[digester]
    return int(comp | dig)


class BlobFeatures(IntFlag):
    ALIGNED = 0x0000_0001
    INLINED_FS_META = 0x0000_0002
    CHUNK_INFO_V2 = 0x0000_0004
    ZRAN = 0x0000_0008
    SEPARATE = 0x0000_0010
    INLINED_CHUNK_DIGEST = 0x0000_0020
    HAS_TAR_HEADER = 0x1000_0000
    HAS_TOC = 0x2000_0000
    CAP_TAR_TOC = 0x4000_0000
    V5_NO_EXT_BLOB_TABLE = 0x8000_0000


def blob_features_valid(features: int) -> bool:
    """BlobFeatures::try_from: low 16 bits only 0x3F, bit 31 never on disk."""
    return (features & 0xFFFF) & ~0x3F == 0 and not features & BlobFeatures.V5_NO_EXT_BLOB_TABLE


class ChunkFlags(IntFlag):
    COMPRESSED = 0x1
    HOLECHUNK = 0x2
