"""The compactor configuration (compact.md §1.14): the v2.2.0 `--config` JSON, flags and sizes.

The file form is what `nydus-image compact --config` 2.2.0 reads through serde: unknown keys
(such as the `"version": 2` the B4 workaround needs) are ignored, duplicate keys are an error.
Unlike upstream, `blobs_dir` may be missing: the command line can supply it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from decimal import Decimal
from pathlib import Path

from .errors import ConfigError

MiB = 1 << 20
_U8_MAX = 0xFF
_USIZE_MAX = (1 << 64) - 1

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "TIB": 1 << 40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


@dataclass(frozen=True, slots=True)
class CompactConfig:
    min_used_ratio: int = 0  # percent, u8; 0 disables the rebuild step
    compact_blob_size: int = 10 * MiB  # merge candidates are smaller than this
    max_compact_size: int = 100 * MiB  # cap on the referenced bytes of a merged blob
    layers_to_compact: int = 0  # skip when the extended blob list is shorter
    blobs_dir: str | None = None  # where new blobs are written
    # Not upstream: after R, merge further until the new table holds at most this many blobs
    # (planner.max_blobs); None leaves R's decisions as they are.
    max_blobs: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            try:
                _check_value(f.name, getattr(self, f.name))
            except ValueError as exc:
                raise ConfigError(f"{f.name}: {exc}") from None


def _check_value(key: str, value: object) -> None:
    """Raise ValueError with the expectation when ``value`` is not valid for ``key``."""
    if key == "blobs_dir":
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"expected a non-empty path string, got {_show(value)}")
        return
    if key == "max_blobs":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"expected a positive blob count, got {_show(value)}")
        return
    limit = _U8_MAX if key == "min_used_ratio" else _USIZE_MAX
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError(f"expected an integer 0..{limit}, got {_show(value)}")


def _show(value: object) -> str:
    return json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__


_KEYS = frozenset(f.name for f in fields(CompactConfig))
_SIZE_KEYS = frozenset({"compact_blob_size", "max_compact_size"})
# Not compactor settings, but expected in the file: the `"version": 2` of the v2 config form.
_IGNORED_KEYS = frozenset({"version"})


def parse_size(text: str) -> int:
    """Bytes in "4096", "10MiB", "100MB", "1.5GiB" (binary KiB..TiB, decimal KB..TB, B; case-insensitive).

    A fraction must come out as a whole number of bytes.
    """
    m = _SIZE_RE.fullmatch(text) if isinstance(text, str) else None
    unit = _SIZE_UNITS.get(m.group(2).upper()) if m else None
    if m is None or unit is None:
        raise ValueError(f"expected a size such as 4096, 10MiB or 100MB, got {_show(text)}")
    amount = Decimal(m.group(1)) * unit
    if amount != amount.to_integral_value():
        raise ValueError(f"{text.strip()} is not a whole number of bytes")
    return int(amount)


def load_config_file(path: str | Path, warn: Callable[[str], None] | None = None) -> CompactConfig:
    """Read a compact config JSON file; every problem is a ConfigError naming the file (and key).

    Keys nydus-image does not know are ignored as upstream ignores them, but ``warn`` is told
    about each one: a misspelt ``min_used_ration`` would otherwise silently change nothing.
    """
    name = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not UTF-8 text") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ConfigError(f"{name}: invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: expected a JSON object, got {type(doc).__name__}")
    if warn is not None:
        for key in doc:
            if key not in _KEYS and key not in _IGNORED_KEYS:
                warn(f"{name}: unknown key {key!r} ignored (known: {', '.join(sorted(_KEYS))})")
    return _build(CompactConfig(), {k: v for k, v in doc.items() if k in _KEYS}, lambda key: f"{name}: {key}")


def merge(config: CompactConfig, overrides: Mapping[str, object]) -> CompactConfig:
    """``config`` with command-line values applied; None means "not given".

    Sizes may be strings for ``parse_size``. Errors name the flag (``--compact-blob-size: …``).
    """
    values: dict[str, object] = {}
    for key, value in overrides.items():
        if key not in _KEYS:
            raise ConfigError(f"unknown config key {key!r}")
        if value is None:
            continue
        if key in _SIZE_KEYS and isinstance(value, str):
            try:
                value = parse_size(value)
            except ValueError as exc:
                raise ConfigError(f"{_flag(key)}: {exc}") from None
        values[key] = value
    return _build(config, values, _flag)


def canonical_json(cfg: CompactConfig) -> bytes:
    """The config as compact JSON with sorted keys: the form whose sha256 a plan records.

    ``max_blobs`` appears only when set, so plans made without it keep their digests."""
    doc = asdict(cfg)
    if doc["max_blobs"] is None:
        del doc["max_blobs"]
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _build(base: CompactConfig, values: Mapping[str, object], where: Callable[[str], str]) -> CompactConfig:
    """``base`` with ``values`` applied; ``where(key)`` starts the message of a bad value."""
    for key in sorted(values):
        try:
            _check_value(key, values[key])
        except ValueError as exc:
            raise ConfigError(f"{where(key)}: {exc}") from None
    return replace(base, **values)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(token: str) -> object:
    raise ValueError(f"{token} is not valid JSON")
