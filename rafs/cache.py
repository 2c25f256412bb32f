"""Uncompressed blob caches: what the EROFS kernel and ``fsck.erofs --device`` read (blob-v6.md §12).

The cache of blob *i* is a file of ``uncompressed_size`` bytes with every chunk decompressed at its
``uncompressed_offset`` and zeros elsewhere, like nydusd's ``<blob_id>.blob.data``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .compression import decompress
from .digest import digest
from .errors import BlobDataError
from .flags import ChunkFlags
from .model import BlobInfo, Bootstrap


def materialize(bs: Bootstrap, blobs_dir: Path, out_dir: Path) -> list[Path]:
    """Write one cache file per blob of ``bs`` into ``out_dir``; returns them in blob-table order.

    Every chunk the bootstrap references is read from ``blobs_dir/<blob_id>``, decompressed and
    checked against its digest.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for idx, blob in enumerate(bs.blobs):
        rows = bs.chunks[bs.chunks["blob_index"] == idx]
        # Each physical chunk once, in blob order, so reads walk the blob forwards.
        _, first = np.unique(rows["compressed_offset"], return_index=True)
        rows = rows[first]
        src = Path(blobs_dir) / blob.blob_id
        dst = out_dir / f"{blob.blob_id}.blob.data"
        try:
            fin = open(src, "rb")
        except OSError as exc:
            raise BlobDataError(blob.blob_id, f"cannot open {src}: {exc.strerror}") from None
        with fin, open(dst, "wb") as fout:
            fout.truncate(blob.uncompressed_size)
            for row in rows:
                fout.seek(int(row["uncompressed_offset"]))
                fout.write(_chunk_bytes(fin, blob, row))
        outputs.append(dst)
    return outputs


def _chunk_bytes(fin: BinaryIO, blob: BlobInfo, row: np.void) -> bytes:
    blob_id, cache_size = blob.blob_id, blob.uncompressed_size
    coff, csize = int(row["compressed_offset"]), int(row["compressed_size"])
    uoff, usize = int(row["uncompressed_offset"]), int(row["uncompressed_size"])
    where = f"chunk {int(row['index'])} at {coff}"
    if uoff + usize > cache_size:
        raise BlobDataError(blob_id, f"{where}: uncompressed end {uoff + usize} past uncompressed_size {cache_size}")
    stored = os.pread(fin.fileno(), csize, coff)
    if len(stored) != csize:
        raise BlobDataError(blob_id, f"{where}: short read ({len(stored)} of {csize} bytes)")
    if int(row["flags"]) & ChunkFlags.COMPRESSED:
        try:
            data = decompress(blob.compressor, stored, usize)
        except ValueError as exc:
            raise BlobDataError(blob_id, f"{where}: {exc}") from None
    elif csize == usize:
        data = stored
    else:
        raise BlobDataError(blob_id, f"{where}: raw chunk with compressed_size {csize} != {usize}")
    if digest(blob.digester, data) != bytes(row["block_id"]):
        raise BlobDataError(blob_id, f"{where}: digest mismatch")
    return data
