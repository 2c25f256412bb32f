"""On-disk records declared once, with the spec's field names, for the reader and the writer alike.

A ``Record`` is a little-endian ``struct.Struct`` whose fields have names: ``unpack_from`` gives a
named tuple, ``pack`` takes the fields by name. A field can therefore never be read at one offset
and written at another, and a writer that forgets a field fails instead of writing zeros; only the
reserved and padding fields (named ``reserved*`` / ``padding*``) default to zeros.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

_ZEROED = ("reserved", "padding", "s_reserved", "s_padding")


class Record:
    __slots__ = ("name", "fields", "size", "_struct", "_tuple", "_zeroed")

    def __init__(self, name: str, fields: Sequence[tuple[str, str]], size: int) -> None:
        self.name = name
        self.fields = tuple(field for field, _ in fields)
        self._struct = struct.Struct("<" + "".join(fmt for _, fmt in fields))
        if self._struct.size != size:
            raise AssertionError(f"{name}: fields take {self._struct.size} bytes, the spec says {size}")
        self.size = size
        self._tuple = namedtuple(name, self.fields)  # type: ignore[misc]
        self._zeroed = {
            field: bytes(struct.calcsize(fmt)) if fmt.endswith("s") else 0
            for field, fmt in fields
            if field.startswith(_ZEROED)
        }

    def unpack_from(self, buffer: Any, offset: int = 0) -> Any:
        return self._tuple._make(self._struct.unpack_from(buffer, offset))

    def pack(self, **values: Any) -> bytes:
        fields = {**self._zeroed, **values}
        if fields.keys() != set(self.fields):
            missing, unknown = set(self.fields) - fields.keys(), fields.keys() - set(self.fields)
            raise TypeError(f"{self.name}: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
        return self._struct.pack(*(fields[field] for field in self.fields))
