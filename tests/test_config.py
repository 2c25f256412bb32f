"""The compact config: file form of compact.md §1.14, sizes, overrides, canonical JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nydus_compact.planner.config import CompactConfig, canonical_json, load_config_file, merge, parse_size
from nydus_compact.planner.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "compact.json") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_upstreams() -> None:
    assert CompactConfig() == CompactConfig(0, 10485760, 104857600, 0, None)


def test_upstream_file_with_version_2_and_unknown_keys(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        json.dumps(
            {
                "version": 2,
                "min_used_ratio": 5,
                "compact_blob_size": 10485760,
                "max_compact_size": 104857600,
                "layers_to_compact": 32,
                "blobs_dir": "/out",
                "backend": {"type": "localfs"},
            }
        ),
    )
    assert load_config_file(p) == CompactConfig(5, 10485760, 104857600, 32, "/out")


def test_missing_keys_take_defaults_and_blobs_dir_is_optional(tmp_path: Path) -> None:
    assert load_config_file(write(tmp_path, '{"min_used_ratio": 101}')) == CompactConfig(min_used_ratio=101)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"min_used_ratio": "abc"}', 'min_used_ratio: expected an integer 0..255, got "abc"'),
        ('{"min_used_ratio": 256}', "min_used_ratio: expected an integer 0..255, got 256"),
        ('{"min_used_ratio": true}', "min_used_ratio: expected an integer 0..255, got true"),
        ('{"compact_blob_size": -1}', "compact_blob_size: expected an integer 0..18446744073709551615, got -1"),
        ('{"max_compact_size": 1.5}', "max_compact_size: expected an integer"),
        ('{"layers_to_compact": null}', "layers_to_compact: expected an integer"),
        ('{"compact_blob_size": 18446744073709551616}', "compact_blob_size: expected an integer"),
        ('{"blobs_dir": 3}', "blobs_dir: expected a non-empty path string, got 3"),
        ('{"blobs_dir": ""}', "blobs_dir: expected a non-empty path string"),
        ('{"min_used_ratio": 1, "min_used_ratio": 2}', "invalid JSON: duplicate key 'min_used_ratio'"),
        ('{"min_used_ratio": NaN}', "invalid JSON: NaN is not valid JSON"),
        ('{"min_used_ratio": ', "invalid JSON: "),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_bad_files_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config_file(p)
    assert str(err.value).startswith(f"{p}: {message}")


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.json")
    p = tmp_path / "latin1.json"
    p.write_bytes(b'{"blobs_dir": "\xe9"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config_file(p)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("0", 0),
        ("10MiB", 10485760),
        ("10 mib", 10485760),
        ("100MB", 100_000_000),
        ("1.5GiB", 1610612736),
        ("2KiB", 2048),
        ("3KB", 3000),
        ("1TiB", 1 << 40),
        ("7B", 7),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "-1", "10XB", "1.5", "1.0000001KiB", "1e6", "ten", "0x10", "10 Mi B"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_merge_flags_override_the_file(tmp_path: Path) -> None:
    base = load_config_file(write(tmp_path, '{"min_used_ratio": 5, "layers_to_compact": 32, "blobs_dir": "/a"}'))
    cfg = merge(base, {"min_used_ratio": None, "layers_to_compact": 0, "compact_blob_size": "1MiB", "blobs_dir": "/b"})
    assert cfg == CompactConfig(5, 1 << 20, 104857600, 0, "/b")
    assert base.layers_to_compact == 32  # not modified in place


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_compact_size": "lots"}, '--max-compact-size: expected a size such as 4096, 10MiB or 100MB, got "lots"'),
        ({"min_used_ratio": 300}, "--min-used-ratio: expected an integer 0..255, got 300"),
        ({"min_used_ratio": "5"}, '--min-used-ratio: expected an integer 0..255, got "5"'),
        ({"chunk_size": 1}, "unknown config key 'chunk_size'"),
    ],
)
def test_merge_errors_name_the_flag(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        merge(CompactConfig(), overrides)
    assert str(err.value) == message


def test_direct_construction_is_checked() -> None:
    with pytest.raises(ConfigError, match="layers_to_compact: expected an integer"):
        CompactConfig(layers_to_compact=-3)


def test_canonical_json_is_sorted_and_stable() -> None:
    cfg = CompactConfig(min_used_ratio=5, blobs_dir="/out")
    raw = canonical_json(cfg)
    assert raw == (
        b'{"blobs_dir":"/out","compact_blob_size":10485760,"layers_to_compact":0,'
        b'"max_compact_size":104857600,"min_used_ratio":5}'
    )
    assert hashlib.sha256(raw).digest() == hashlib.sha256(canonical_json(CompactConfig(5, blobs_dir="/out"))).digest()
    assert canonical_json(CompactConfig(min_used_ratio=6, blobs_dir="/out")) != raw
