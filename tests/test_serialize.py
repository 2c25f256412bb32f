"""Bootstraps written in parts (issue 15): the parts are exactly the dump, and apply's streamed,
in-place rewrite writes exactly what the whole-buffer rewrite of the same plan dumps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers.compact_env import REBUILD_AND_MERGE, build, cli, plan

from nydus_compact.applier.apply import _new_bootstrap, prepare
from nydus_compact.planner.fleet import project
from nydus_compact.planner.planfile import load_plan
from nydus_compact.rafs import v5, v6
from nydus_compact.rafs.loader import dump_bootstrap, load_bootstrap, serialize_bootstrap

# Real nydus-image output, each of which the writers reproduce byte for byte.
FIXTURES = ["sha256-nocompress-repeatable", "blake3-lz4_block-non_repeatable", "rafs-v6-2.2.boot"]


def _joined(parts) -> bytes:
    return b"".join(bytes(p) for p in parts)


@pytest.mark.parametrize("name", FIXTURES)
def test_parts_are_the_real_bootstrap_and_the_dump(fixtures_dir, name):
    data = (fixtures_dir / name).read_bytes()
    bs = load_bootstrap(fixtures_dir / name)

    serialized = serialize_bootstrap(bs)
    parts = list(serialized.parts())

    assert sum(len(memoryview(p)) for p in parts) == serialized.size == len(data)
    assert _joined(parts) == data == dump_bootstrap(bs)
    assert _joined(serialized.parts()) == data  # parts can be produced again (a resume re-hashes them)


def test_v5_records_come_in_parts_of_bounded_size(fixtures_dir, monkeypatch):
    """Records are handed out as they are copied, never gathered into the whole file."""
    name = FIXTURES[0]
    data = (fixtures_dir / name).read_bytes()
    monkeypatch.setattr(v5, "PART_SIZE", 256)
    bs = load_bootstrap(fixtures_dir / name)

    header, *records = serialize_bootstrap(bs).parts()

    assert len(records) > 3 and max(len(p) for p in records) < len(data) // 4
    assert all(len(p) >= 256 for p in records[:-1])  # each part is handed out once it is full
    assert _joined([header, *records]) == data


def test_v6_chunk_table_comes_in_parts_copied_from_the_chunk_array(layers, tmp_path, monkeypatch):
    """Split every TABLE_PART records, the table still gives the builder's bytes."""
    image = build(layers, tmp_path / "image", 6)
    data = image.boot.read_bytes()
    bs = load_bootstrap(image.boot)
    monkeypatch.setattr(v6, "TABLE_PART", 3)

    metadata, *table, padding = serialize_bootstrap(bs).parts()

    assert len(table) > 3 and all(len(p) == 3 * v6.CHUNK_INFO_SIZE for p in table[:-1])
    assert _joined([metadata, *table, padding]) == data


@pytest.mark.parametrize("version", [5, 6])
def test_apply_writes_what_the_whole_buffer_rewrite_dumps(layers, tmp_path, version):
    """apply relocates the source records in place and writes the bootstrap in parts; the same plan
    relocated into a copy and dumped into one buffer gives the same bytes."""
    image = build(layers, tmp_path / "image", version)
    plan(image, *REBUILD_AND_MERGE)
    r = cli("apply", image.plan)
    assert r.rc == 0, r.err
    written = image.new_boot.read_bytes()
    new = load_bootstrap(image.new_boot)

    source = load_bootstrap(image.boot)
    before = source.chunks.copy()
    prep = prepare(load_plan(image.plan)[0], str(image.plan), [source])
    proj = project(prep.union, prep.layout, 0)
    assert np.array_equal(source.chunks, before)  # a copy: the source records are untouched
    new_blobs = {e.group: SimpleNamespace(info=new.blobs[e.new_index]) for e in proj.table if e.group is not None}
    assert new_blobs, "the plan writes new blobs"
    expected = dump_bootstrap(_new_bootstrap(source, proj, new_blobs, prep.infos))

    assert written == expected


def test_in_place_projection_gives_the_copy_s_records(layers, tmp_path):
    image = build(layers, tmp_path / "image", 6)
    plan(image, *REBUILD_AND_MERGE)
    source = load_bootstrap(image.boot)
    prep = prepare(load_plan(image.plan)[0], str(image.plan), [source])
    copied = project(prep.union, prep.layout, 0)

    in_place = project(prep.union, prep.layout, 0, in_place=True)

    assert np.shares_memory(in_place.chunks, source.chunks)
    assert np.array_equal(in_place.chunks, copied.chunks) and in_place.table == copied.table
    again = project(prep.union, prep.layout, 0, in_place=True)  # relocating twice changes nothing
    assert np.array_equal(again.chunks, copied.chunks)


@pytest.mark.parametrize("version", [5, 6])
def test_in_place_layout_relocates_the_source_records_as_the_copy_does(layers, tmp_path, version):
    image = build(layers, tmp_path / "image", version)
    plan(image, *REBUILD_AND_MERGE)
    the_plan = load_plan(image.plan)[0]
    copied = prepare(the_plan, str(image.plan), [load_bootstrap(image.boot)])
    source = load_bootstrap(image.boot)

    in_place = prepare(the_plan, str(image.plan), [source], in_place=True)

    a, b = copied.layout, in_place.layout
    assert np.array_equal(source.chunks, a.chunks)  # the records themselves now hold the new locations
    assert np.array_equal(b.chunks, a.chunks) and b.table == a.table
    assert (b.occurrences_remapped, b.identical, b.bytes_to_write) == (a.occurrences_remapped, a.identical, a.bytes_to_write)
    assert b.occurrences_remapped > 0
    for x, y in zip(a.new_blobs, b.new_blobs, strict=True):
        assert np.array_equal(x.chunks, y.chunks) and np.array_equal(x.reads, y.reads)
