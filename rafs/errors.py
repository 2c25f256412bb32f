"""Errors raised while reading or writing RAFS bootstraps and blobs.

Every failure caused by the bytes of an input file is a ``RafsError``; the CLI turns
it into one line naming the file. Nothing else (IndexError, struct.error, ...) may
escape a reader for any input.
"""

from __future__ import annotations


class RafsError(Exception):
    """Root of the format layer's errors."""


class RafsFormatError(RafsError):
    """A bootstrap or blob violates a check of the format specs.

    ``offset`` is the byte offset in ``path`` where the offending structure starts
    (None when the check is about the file as a whole); ``check`` says which rule failed.
    """

    def __init__(self, path: str, check: str, offset: int | None = None):
        self.path = str(path)
        self.check = check
        self.offset = offset
        where = f" at offset {offset:#x}" if offset is not None else ""
        super().__init__(f"{self.path}: {check}{where}")


class UnsupportedLayoutError(RafsFormatError):
    """The file looks like RAFS but uses a layout nydusd 2.2 cannot read (e.g. pre-public v5 inodes)."""


class BlobDataError(RafsError):
    """A chunk read from a blob is short, fails to decompress or does not match its digest."""

    def __init__(self, blob: str, message: str):
        self.blob = str(blob)
        super().__init__(f"{self.blob}: {message}")
