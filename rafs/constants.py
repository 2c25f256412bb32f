"""Numbers of the RAFS formats that more than one module needs, defined once (rafs-v5.md, rafs-v6.md,
blob-v6.md, compact.md). Numbers private to one on-disk record stay beside that record's layout."""

RAFS_V5_MAGIC = 0x5241_4653  # rafs-v5.md §2: "RAFS" at offset 0
RAFS_V5_VERSION = 0x500
RAFS_V6_MAGIC = 0xE0F5_E1E2  # EROFS_SUPER_MAGIC_V1 (rafs-v6.md §2)
RAFS_V6_SB_OFFSET = 1024  # the EROFS superblock's offset in a v6 bootstrap

# The EROFS block (rafs-v6.md §2): v6 metadata is laid out in it and v6 blobs align the uncompressed
# offset of every chunk to it (blob-v6.md §4); nydus-image also rounds directory sizes up to it.
BLOCK_SIZE = 4096

# Chunk sizes nydus accepts: powers of two in [4 KiB, 16 MiB] (rafs-v5.md §2 block_size, rafs-v6.md §3).
MIN_CHUNK_SIZE = 0x1000
MAX_CHUNK_SIZE = 0x100_0000

# Blob-table entries per bootstrap: v5's u8-indexed chunk-dict map takes 256 (compact.md §1.2 step 3);
# a v6 chunk address stores blob_index + 1 in one byte, so 255.
MAX_BLOBS = {5: 256, 6: 255}

# A v6 blob's chunk-info index is 24 bits (blob-v6.md §3).
MAX_CI_ENTRIES = 1 << 24

# The compactor's extended table E (source blobs plus chunk-dict blobs) is indexed by the builder's u8
# chunk-dict map (compact.md §1.2 step 3, "TooManyBlobs").
MAX_EXTENDED_BLOBS = 256
