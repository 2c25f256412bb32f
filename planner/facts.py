"""The compaction policy's inputs: what a plan is computed from (compact.md §1.1, §1.15, §6.3).

Facts are plain data gathered by the caller (bootstrap readers, a backend stat/HEAD for blobs
whose table size is 0); the policy never reads a file. Chunk occurrences stay in one numpy array
of ``rafs.model.CHUNK_DTYPE``, never one Python object each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester
from nydus_compact.rafs.model import CHUNK_DTYPE, BlobInfo, Bootstrap

from .errors import PlanError

@dataclass(frozen=True, slots=True)
class SourceBlob:
    """One blob-table entry as the policy sees it."""

    blob_id: str
    compressed_size: int  # as stored in the blob table; 0 in old images
    observed_size: int | None  # stat/HEAD of the backend; None if not asked or unknown
    features: int
    compressor: Compressor
    digester: Digester
    chunk_count: int
    uncompressed_size: int

    @classmethod
    def from_blob_info(cls, info: BlobInfo, observed_size: int | None = None) -> "SourceBlob":
        return cls(
            blob_id=info.blob_id,
            compressed_size=info.compressed_size,
            observed_size=observed_size,
            features=info.features,
            compressor=info.compressor,
            digester=info.digester,
            chunk_count=info.chunk_count,
            uncompressed_size=info.uncompressed_size,
        )


@dataclass(frozen=True, slots=True, eq=False)
class DictFacts:
    """A chunk dictionary (compact.md §1.4).

    ``chunks`` are the dict's chunk records in the dict's build order; their ``blob_index`` is the
    position in the dict's own blob table. ``digester`` is the dict bootstrap's: chunks of dict
    blobs that use another digester are not looked up (None: all are).
    """

    blobs: list[SourceBlob]
    chunks: np.ndarray
    digester: Digester | None = None

    @classmethod
    def from_bootstrap(cls, boot: Bootstrap, observed_sizes: Mapping[str, int] | None = None) -> "DictFacts":
        observed = observed_sizes or {}
        return cls(
            blobs=[SourceBlob.from_blob_info(b, observed.get(b.blob_id)) for b in boot.blobs],
            chunks=boot.chunks,
            digester=boot.digester,
        )

    def __post_init__(self) -> None:
        _check_chunks(self.chunks, "chunk dict")


@dataclass(frozen=True, slots=True, eq=False)
class Facts:
    """Everything ``decide`` needs: the source's version, blob table and every chunk occurrence."""

    version: int
    blobs: list[SourceBlob]
    chunks: np.ndarray  # CHUNK_DTYPE, exactly Bootstrap.chunks (build order)
    chunk_dict: DictFacts | None = None

    def __post_init__(self) -> None:
        if self.version not in (5, 6):
            raise PlanError(f"unsupported RAFS version {self.version} (expected 5 or 6)")
        _check_chunks(self.chunks, "source bootstrap")


def _check_chunks(chunks: np.ndarray, what: str) -> None:
    if not isinstance(chunks, np.ndarray) or chunks.dtype != CHUNK_DTYPE or chunks.ndim != 1:
        raise PlanError(f"{what}: chunk records must be a 1-d CHUNK_DTYPE array")
