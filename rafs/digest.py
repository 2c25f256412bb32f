"""Chunk and inode digests (rafs-v5.md §10, blob-v6.md §2). Numbering is nydus's digest::Algorithm."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from enum import IntEnum

import blake3


class Digester(IntEnum):
    BLAKE3 = 0
    SHA256 = 1

    @property
    def label(self) -> str:
        return "blake3" if self == Digester.BLAKE3 else "sha256"

    @classmethod
    def from_label(cls, label: str) -> "Digester":
        for algo in cls:
            if algo.label == label:
                return algo
        raise ValueError(f"unknown digester {label!r} (expected blake3 or sha256)")


def digest(algo: Digester, data: bytes) -> bytes:
    """32 raw bytes of H(data)."""
    return digest_function(algo)(data)


def digest_function(algo: Digester) -> Callable[[bytes | memoryview], bytes]:
    """``digest`` for one algorithm, looked up once for a loop over many chunks."""
    return _blake3 if algo == Digester.BLAKE3 else _sha256


def _blake3(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data).digest()


def _sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def hasher(algo: Digester):
    """An incremental hasher with update()/digest()."""
    return blake3.blake3() if algo == Digester.BLAKE3 else hashlib.sha256()
