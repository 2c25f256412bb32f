"""The SQLite state store: schema, bootstrap index, plan recipes and apply checkpoints."""

from __future__ import annotations

import sqlite3
import stat
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester
from nydus_compact.rafs.model import CHUNK_DTYPE, BlobInfo, Bootstrap, Node
from nydus_compact.store import index as store_index
from nydus_compact.store.db import open_store
from nydus_compact.store.errors import StoreError
from nydus_compact.store.index import (
    dedup_chunks,
    find_image,
    index_bootstrap,
    load_blobs,
    load_image,
    load_occurrences,
    load_references,
    nodes_referencing,
)
from nydus_compact.store.plans import READ_RANGE_DTYPE, load_plan_recipe, save_plan
from nydus_compact.store.runs import (
    completed_steps,
    find_run,
    finish_run,
    list_runs,
    record_step,
    start_run,
    steps,
)
from nydus_compact.store.schema import SCHEMA_VERSION, TABLES

SHA_A = "a" * 64
SHA_B = "b" * 64


class TickClock:
    """A deterministic clock: 2024-01-01T00:00:00Z, one second later on every call."""

    def __init__(self) -> None:
        self.t = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        now = self.t
        self.t += timedelta(seconds=1)
        return now


def _digest(n: int) -> bytes:
    return n.to_bytes(4, "little") * 8


def _chunk(blob: int, index: int, coff: int, csize: int, digest: int, file_offset: int, usize: int = 4096) -> tuple:
    return (_digest(digest), blob, 1, csize, usize, coff, index * 4096, file_offset, index, 0)


def _blob(i: int, *, chunk_count: int, size: int) -> BlobInfo:
    return BlobInfo(
        blob_id=f"{i:064x}",
        chunk_count=chunk_count,
        compressed_size=size,
        uncompressed_size=chunk_count * 4096,
        features=0x4000_0001,
        compressor=Compressor.ZSTD,
        digester=Digester.BLAKE3,
        chunk_size=1 << 20,
        ci_offset=size,
        blob_meta_digest=bytes(range(32)),
    )


def _reg(path: bytes, start: int, count: int, *, link: int, nlink: int = 1) -> Node:
    return Node(
        name=path.rsplit(b"/", 1)[-1],
        path=path,
        mode=stat.S_IFREG | 0o644,
        size=count * 4096,
        nlink=nlink,
        link=link,
        chunk_start=start,
        chunk_count=count,
    )


def small_bootstrap() -> Bootstrap:
    """Three blobs; /a repeats a chunk, /dir/x shares one with /a, /h1 and /h2 are hard links
    with identical chunk records, and two records differ only in their digest."""
    nodes = [
        Node(name=b"/", path=b"/", mode=stat.S_IFDIR | 0o755, children=[1, 2, 3, 4, 5, 6]),
        _reg(b"/a", 0, 3, link=1),
        Node(name=b"dir", path=b"/dir", mode=stat.S_IFDIR | 0o755, parent=0, children=[7]),
        _reg(b"/empty", 3, 0, link=3),
        _reg(b"/h1", 3, 2, link=4, nlink=2),
        _reg(b"/h2", 5, 2, link=4, nlink=2),
        Node(name=b"sym", path=b"/sym", mode=stat.S_IFLNK | 0o777, symlink=b"a"),
        _reg(b"/dir/\xffx", 7, 3, link=7),  # a name that is not UTF-8
    ]
    chunks = np.array(
        [
            _chunk(0, 0, 0, 100, 1, 0),  # /a
            _chunk(1, 0, 0, 200, 2, 4096),
            _chunk(0, 0, 0, 100, 1, 8192),  # same chunk as /a's first, later in the file
            _chunk(0, 1, 100, 300, 4, 0),  # /h1
            _chunk(2, 0, 0, 50, 5, 4096),
            _chunk(0, 1, 100, 300, 4, 0),  # /h2: the same records again
            _chunk(2, 0, 0, 50, 5, 4096),
            _chunk(1, 0, 0, 200, 2, 0),  # /dir/\xffx shares /a's second chunk
            _chunk(2, 1, 50, 70, 6, 4096),
            _chunk(2, 1, 50, 70, 7, 8192),  # same location, different digest: a distinct record
        ],
        dtype=CHUNK_DTYPE,
    )
    blobs = [_blob(0, chunk_count=2, size=400), _blob(1, chunk_count=1, size=0), _blob(2, chunk_count=2, size=120)]
    return Bootstrap(version=6, flags=0x84, chunk_size=1 << 20, blobs=blobs, nodes=nodes, chunks=chunks)


def synthetic_bootstrap(n_files: int, per_file: int, n_unique: int, seed: int = 7) -> Bootstrap:
    rng = np.random.default_rng(seed)
    n = n_files * per_file
    ids = rng.integers(0, n_unique, n)
    chunks = np.zeros(n, dtype=CHUNK_DTYPE)
    chunks["blob_index"] = ids % 4
    chunks["index"] = ids // 4
    chunks["compressed_offset"] = (ids // 4) * 1000
    chunks["uncompressed_offset"] = (ids // 4) * 4096
    chunks["compressed_size"] = 1000
    chunks["uncompressed_size"] = 4096
    chunks["flags"] = 1
    digests = np.zeros((n, 32), dtype=np.uint8)
    digests[:, :8] = ids.astype("<u8").view(np.uint8).reshape(n, 8)
    chunks["block_id"] = digests.view("V32").ravel()
    chunks["file_offset"] = (np.arange(n) % per_file) * (1 << 20)
    nodes = [Node(name=b"/", path=b"/", mode=stat.S_IFDIR | 0o755)]
    nodes += [_reg(b"/f%06d" % i, i * per_file, per_file, link=i + 1) for i in range(n_files)]
    blobs = [_blob(i, chunk_count=n_unique // 4, size=n_unique // 4 * 1000) for i in range(4)]
    return Bootstrap(version=5, flags=0x6, chunk_size=1 << 20, blobs=blobs, nodes=nodes, chunks=chunks)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def boot_file(tmp_path: Path) -> Path:
    path = tmp_path / "image.boot"
    path.write_bytes(b"\0" * 8192)
    return path


def _count(store, table: str) -> int:
    return store.fetchall(f'SELECT COUNT(*) FROM "{table}"')[0][0]


# --- opening --------------------------------------------------------------------------


def test_new_store_has_schema_wal_and_foreign_keys(db_path: Path) -> None:
    with open_store(db_path) as store:
        assert set(TABLES) <= set(store.db.table_names())
        assert dict(store.fetchall('SELECT "key", "value" FROM "meta"'))["schema_version"] == str(SCHEMA_VERSION)
        assert store.fetchall("PRAGMA journal_mode")[0][0] == "wal"
        assert store.fetchall("PRAGMA foreign_keys")[0][0] == 1
        assert "ux_images_sha256" in {i.name for i in store.db.table("images").indexes}
        for table in ("blobs", "nodes", "read_ranges"):  # one B-tree per row, no rowid + key index
            assert store.db.table(table).schema.endswith("WITHOUT ROWID")
        for table in ("chunks", "refs"):  # blobopen writes their BLOBs in place by rowid
            assert not store.db.table(table).schema.endswith("WITHOUT ROWID")
    with open_store(db_path, create=False) as store:
        assert find_image(store, SHA_A) is None


def test_missing_store_is_not_created_without_create(db_path: Path) -> None:
    with pytest.raises(StoreError, match="no such state database"):
        open_store(db_path, create=False)
    assert not db_path.exists()


def test_garbage_file_is_refused(db_path: Path) -> None:
    db_path.write_bytes(b"this is a bootstrap, not a database" * 100)
    with pytest.raises(StoreError, match=r"state\.db: not a nydus-compact state database$"):
        open_store(db_path)
    assert db_path.read_bytes().startswith(b"this is a bootstrap")


def test_other_sqlite_database_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a nydus-compact state database"):
        open_store(db_path)


def test_other_schema_version_is_refused(db_path: Path) -> None:
    open_store(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"not a nydus-compact state database \(or incompatible version 99\)"):
        open_store(db_path)


def test_locked_database_names_the_file(db_path: Path) -> None:
    open_store(db_path).close()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with open_store(db_path, timeout=0.05) as store:  # reading still works
            with pytest.raises(StoreError, match=r"state\.db: state database is locked"):
                start_run(store, "d" * 64, outputs={}, inputs={})
            assert list_runs(store) == []
    finally:
        other.execute("ROLLBACK")
        other.close()


# --- bootstrap index ------------------------------------------------------------------


def test_index_round_trips_occurrences_blobs_and_nodes(db_path: Path, boot_file: Path) -> None:
    bs = small_bootstrap()
    observed = {f"{1:064x}": (777, "backend")}
    with open_store(db_path, clock=TickClock()) as store:
        image_id = index_bootstrap(store, boot_file, bs, SHA_A, observed)
        assert find_image(store, SHA_A) == image_id
        # 10 occurrences, 6 distinct records (the /h2 copies, /a's repeat and the shared chunk fold).
        assert _count(store, "refs") == 1  # one segment row holds them all
        assert _count(store, "chunks") == 1
        # columnar: one array per field, in that field's dtype, chunk ids by first appearance
        (idx, sizes, block_ids) = store.fetchall('SELECT "idx", "compressed_size", "block_id" FROM "chunks"')[0]
        first = [0, 1, 3, 4, 8, 9]
        assert np.frombuffer(idx, "<u4").tolist() == bs.chunks["index"][first].tolist()
        assert np.frombuffer(sizes, "<u4").tolist() == bs.chunks["compressed_size"][first].tolist()
        assert block_ids == bs.chunks["block_id"][first].tobytes()
        chunk_id, file_offset = load_references(store, image_id)
        assert chunk_id.tolist() == [0, 1, 0, 2, 3, 2, 3, 1, 4, 5]
        assert file_offset.tolist() == bs.chunks["file_offset"].tolist()
        occ = load_occurrences(store, image_id)
        assert occ.dtype == CHUNK_DTYPE
        assert np.array_equal(occ, bs.chunks)

        image = load_image(store, image_id)
        assert image["sha256"] == SHA_A
        assert image["size"] == 8192
        assert (image["version"], image["chunk_size"], image["flags"]) == (6, 1 << 20, 0x84)
        assert (image["compressor"], image["digester"]) == ("zstd", "blake3")
        assert (image["node_count"], image["occurrence_count"]) == (8, 10)
        assert image["indexed_at"] == "2024-01-01T00:00:00.000Z"

        blobs = load_blobs(store, image_id)
        for row, blob in zip(blobs, bs.blobs, strict=True):
            expected = asdict(blob) | {"compressor": "zstd", "digester": "blake3"}
            assert {k: row[k] for k in expected} == expected
        assert [(b["observed_size"], b["size_source"]) for b in blobs] == [
            (400, "table"),
            (777, "backend"),
            (120, "table"),
        ]

        nodes = store.fetch_dicts('SELECT * FROM "nodes" ORDER BY "pos"')
        assert [n["path"] for n in nodes] == [n.path for n in bs.nodes]
        assert [n["kind"] for n in nodes] == ["dir", "file", "dir", "file", "file", "file", "symlink", "file"]
        assert [n["link"] for n in nodes][4:6] == [4, 4]
        assert [(n["chunk_start"], n["chunk_count"]) for n in nodes] == [
            (n.chunk_start, n.chunk_count) for n in bs.nodes
        ]


def test_nodes_referencing_ranks_files_by_bytes_in_blob(db_path: Path, boot_file: Path) -> None:
    with open_store(db_path) as store:
        image_id = index_bootstrap(store, boot_file, small_bootstrap(), SHA_A, None)
        # blob 2: /dir/\xffx has 70 + 70, /h1 and /h2 50 each (tie broken by node order).
        assert nodes_referencing(store, image_id, 2, 10) == [(b"/dir/\xffx", 140), (b"/h1", 50), (b"/h2", 50)]
        assert nodes_referencing(store, image_id, 0, 1) == [(b"/h1", 300)]
        assert nodes_referencing(store, image_id, 3, 10) == []


def test_reindexing_same_content_reuses_the_image(db_path: Path, boot_file: Path) -> None:
    bs = small_bootstrap()
    with open_store(db_path) as store:
        first = index_bootstrap(store, boot_file, bs, SHA_A, None)
    with open_store(db_path) as store:
        again = index_bootstrap(store, boot_file, synthetic_bootstrap(2, 2, 4), SHA_A, None)
        assert again == first
        assert (_count(store, "images"), _count(store, "chunks")) == (1, 1)
        other = index_bootstrap(store, boot_file, bs, SHA_B, None)
        assert other != first
        assert np.array_equal(load_occurrences(store, other), load_occurrences(store, first))
        assert nodes_referencing(store, other, 2, 10) == nodes_referencing(store, first, 2, 10)


@pytest.mark.parametrize("name", ["sha256-nocompress-repeatable", "rafs-v6-2.2.boot"])
def test_real_bootstraps_round_trip(db_path: Path, fixtures_dir: Path, name: str) -> None:
    from nydus_compact.rafs.loader import bootstrap_sha256, load_bootstrap

    path = fixtures_dir / name
    bs = load_bootstrap(path)
    with open_store(db_path) as store:
        image_id = index_bootstrap(store, path, bs, bootstrap_sha256(path), None)
        assert load_image(store, image_id)["size"] == path.stat().st_size
        assert np.array_equal(load_occurrences(store, image_id), bs.chunks)
        top = nodes_referencing(store, image_id, 0, 1)
        assert top and top[0][0] in {n.path for n in bs.nodes if n.is_reg}


def test_occurrences_outside_every_node_round_trip(db_path: Path, boot_file: Path) -> None:
    bs = small_bootstrap()
    bs.nodes[7].chunk_count = 1  # the last two occurrences now belong to no node
    with open_store(db_path) as store:
        image_id = index_bootstrap(store, boot_file, bs, SHA_A, None)
        assert np.array_equal(load_occurrences(store, image_id), bs.chunks)
        # /dir/\xffx keeps only its first chunk (blob 1): nobody owns the two in blob 2.
        assert nodes_referencing(store, image_id, 2, 10) == [(b"/h1", 50), (b"/h2", 50)]
        assert nodes_referencing(store, image_id, 1, -1) == [(b"/a", 200), (b"/dir/\xffx", 200)]


def test_shared_and_overlapping_ranges_count_for_the_lowest_node(db_path: Path, boot_file: Path) -> None:
    bs = small_bootstrap()
    bs.nodes[5].chunk_start = 3  # /h2 shares /h1's range, as v6 hard links do
    with open_store(db_path) as store:
        image_id = index_bootstrap(store, boot_file, bs, SHA_A, None)
        assert nodes_referencing(store, image_id, 0, 10) == [(b"/h1", 300), (b"/a", 200)]

    # Ranges overlapping every which way: each occurrence counts for the lowest node covering it.
    rng = np.random.default_rng(3)
    big = synthetic_bootstrap(n_files=60, per_file=5, n_unique=40)
    n_occ = len(big.chunks)
    for nd in big.nodes[1:]:
        nd.chunk_start = int(rng.integers(0, n_occ))
        nd.chunk_count = int(rng.integers(0, min(40, n_occ - nd.chunk_start) + 1))
    owner = [-1] * n_occ
    for pos, nd in reversed(list(enumerate(big.nodes))):
        owner[nd.chunk_start : nd.chunk_start + nd.chunk_count] = [pos] * nd.chunk_count
    with open_store(db_path) as store:
        image_id = index_bootstrap(store, boot_file, big, SHA_B, None)
        for blob in range(4):
            used: dict[int, int] = {}
            for occ, pos in enumerate(owner):
                if pos >= 0 and big.chunks["blob_index"][occ] == blob:
                    used[pos] = used.get(pos, 0) + int(big.chunks["compressed_size"][occ])
            expected = sorted(used.items(), key=lambda item: (-item[1], item[0]))
            assert nodes_referencing(store, image_id, blob, -1) == [(big.nodes[p].path, n) for p, n in expected]
            assert nodes_referencing(store, image_id, blob, 3) == [(big.nodes[p].path, n) for p, n in expected[:3]]


def test_dedup_survives_hash_collisions() -> None:
    chunks = np.repeat(small_bootstrap().chunks[:1], 6)
    words = chunks.view("<u8").reshape(len(chunks), -1)
    # Keys differing in words 0 and 1 with equal (w0 * M) ^ w1 collide in the key hash.
    m = int(store_index._HASH_MULTIPLIER)
    a, b = 5, 7
    words[0::2, 0], words[0::2, 1] = a, b
    words[1::2, 0], words[1::2, 1] = a + 1, ((a * m) ^ b ^ ((a + 1) * m)) & (2**64 - 1)
    words[:, 8] = np.arange(6) * 4096  # file_offset is not part of the key
    assert len(set(store_index._key_hash(words).tolist())) == 1
    first, chunk_id = dedup_chunks(chunks)
    assert first.tolist() == [0, 1]
    assert chunk_id.tolist() == [0, 1, 0, 1, 0, 1]


def test_references_span_several_rows(db_path: Path, boot_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_index, "SEGMENT", 4)
    bs = small_bootstrap()
    with open_store(db_path) as store:
        image_id = index_bootstrap(store, boot_file, bs, SHA_A, None)
        assert store.fetchall('SELECT "seg", length("chunk_ids") FROM "refs" ORDER BY "seg"') == [
            (0, 32),
            (1, 32),
            (2, 16),
        ]
        # 6 distinct chunks: ids 4 and 5 live in the second row
        assert store.fetchall('SELECT "seg", length("flags"), length("block_id") FROM "chunks" ORDER BY "seg"') == [
            (0, 16, 128),
            (1, 8, 64),
        ]
        assert np.array_equal(load_occurrences(store, image_id), bs.chunks)
        assert nodes_referencing(store, image_id, 2, 10) == [(b"/dir/\xffx", 140), (b"/h1", 50), (b"/h2", 50)]


@pytest.mark.parametrize(
    ("corruption", "occurrences_too"),
    [
        ('UPDATE "refs" SET "chunk_ids" = x\'00\'', True),
        ('UPDATE "refs" SET "file_offsets" = 7', True),
        ('UPDATE "refs" SET "seg" = 1', True),
        ('DELETE FROM "refs"', True),
        ('UPDATE "images" SET "occurrence_count" = 1 << 60', True),
        ('DELETE FROM "chunks"', True),
        ('UPDATE "chunks" SET "seg" = 1', True),
        ('UPDATE "chunks" SET "blob_index" = substr("blob_index", 1, 20)', True),
        ('UPDATE "chunks" SET "blob_index" = substr("blob_index", 1, 22)', True),
        ('UPDATE "chunks" SET "compressed_size" = substr("compressed_size", 1, 20)', True),
        ('UPDATE "nodes" SET "chunk_count" = 99 WHERE "pos" = 7', False),
        ('UPDATE "nodes" SET "chunk_start" = \'x\' WHERE "pos" = 7', False),
    ],
)
def test_corrupt_index_is_a_store_error(db_path: Path, boot_file: Path, corruption: str, occurrences_too: bool) -> None:
    with open_store(db_path) as store:
        image_id = index_bootstrap(store, boot_file, small_bootstrap(), SHA_A, None)
    with sqlite3.connect(db_path) as conn:
        conn.execute(corruption)
    with open_store(db_path, create=False) as store:
        with pytest.raises(StoreError, match="inconsistent|outside the occurrence array"):
            nodes_referencing(store, image_id, 2, 10)
        if occurrences_too:
            with pytest.raises(StoreError, match="inconsistent"):
                load_occurrences(store, image_id)


def test_node_range_outside_the_array_is_refused(db_path: Path, boot_file: Path) -> None:
    bs = small_bootstrap()
    bs.nodes[7].chunk_count = 4
    with open_store(db_path) as store:
        with pytest.raises(StoreError, match="outside the occurrence array"):
            index_bootstrap(store, boot_file, bs, SHA_A, None)
        assert _count(store, "images") == 0


def test_offsets_beyond_sqlite_integers_are_refused(db_path: Path, boot_file: Path) -> None:
    bs = small_bootstrap()
    bs.chunks["compressed_offset"][0] = 1 << 63
    with open_store(db_path) as store:
        with pytest.raises(StoreError, match="compressed_offset exceeds"):
            index_bootstrap(store, boot_file, bs, SHA_A, None)


def test_large_synthetic_image_round_trips(db_path: Path, boot_file: Path) -> None:
    bs = synthetic_bootstrap(n_files=2_000, per_file=110, n_unique=60_000)
    assert len(bs.chunks) >= 200_000
    with open_store(db_path) as store:
        image_id = index_bootstrap(store, boot_file, bs, SHA_A, None)
    with open_store(db_path, create=False) as store:
        distinct = len(np.unique(bs.chunks[["block_id", "blob_index", "index"]]))
        assert store_index._distinct_count(store, image_id) == distinct
        assert np.array_equal(load_occurrences(store, image_id), bs.chunks)


# --- plans ----------------------------------------------------------------------------


def _recipe() -> tuple:
    blob_rows = [
        {"e_index": 0, "blob_id": "b0", "action": "KEEP", "reason": "KEEP", "used_bytes": 400, "size": 400,
         "size_source": "table", "ratio": 100.0, "grp": None, "new_index": 0},
        {"e_index": 1, "blob_id": "b1", "action": "REBUILD", "reason": "REBUILD_RATIO", "used_bytes": 200,
         "size": 777, "size_source": "backend", "ratio": 25.7, "grp": 0, "new_index": 1},
        {"e_index": 2, "blob_id": "b2", "action": "MERGE", "reason": "MERGED_INTO", "used_bytes": 120,
         "size": 120, "size_source": "table", "ratio": 100.0, "grp": 0, "new_index": 1},
    ]
    new_blobs = [(0, 1, 3, 320, 12288)]  # grp, new_index, chunk_count, compressed, uncompressed
    ranges = np.array([(0, 1, 0, 200, 0, 1), (0, 2, 0, 120, 1, 2)], dtype=READ_RANGE_DTYPE)
    return blob_rows, new_blobs, ranges


def test_plan_round_trip_and_idempotence(db_path: Path, boot_file: Path) -> None:
    blob_rows, new_blobs, ranges = _recipe()
    with open_store(db_path, clock=TickClock()) as store:
        image_id = index_bootstrap(store, boot_file, small_bootstrap(), SHA_A, None)
        plan_id = save_plan(store, "p" * 64, [image_id], '{"threshold":80}', '{"I3":true}', blob_rows, new_blobs,
                            ranges)
    with open_store(db_path, create=False) as store:
        recipe = load_plan_recipe(store, "p" * 64)
        assert recipe is not None
        assert (recipe.plan_id, recipe.image_ids) == (plan_id, [image_id])
        assert (recipe.config_json, recipe.flags_json) == ('{"threshold":80}', '{"I3":true}')
        assert recipe.created == "2024-01-01T00:00:01.000Z"  # the index took the first tick
        assert recipe.blobs == blob_rows
        assert recipe.new_blobs == [
            {"grp": 0, "new_index": 1, "chunk_count": 3, "compressed_size": 320, "uncompressed_size": 12288}
        ]
        assert recipe.read_ranges.dtype == READ_RANGE_DTYPE
        assert np.array_equal(recipe.read_ranges, ranges)

        again = save_plan(store, "p" * 64, [image_id], "{}", "{}", [], [], [])
        assert again == plan_id
        assert _count(store, "plans") == 1 and _count(store, "read_ranges") == 2
        assert load_plan_recipe(store, "q" * 64) is None


def test_plan_with_bad_rows_leaves_nothing_behind(db_path: Path) -> None:
    blob_rows, new_blobs, _ = _recipe()
    with open_store(db_path) as store:
        with pytest.raises(ValueError, match="recipe row has 2 values"):
            save_plan(store, "p" * 64, [], "{}", "{}", blob_rows, new_blobs, [(0, 1)])
        assert load_plan_recipe(store, "p" * 64) is None
        assert _count(store, "plan_blobs") == 0


# --- runs -----------------------------------------------------------------------------


def test_run_checkpoints_survive_reopen_and_resume(db_path: Path) -> None:
    digest = "d" * 64
    outputs = {"bootstrap": "/out/image.boot.compact", "blobs_dir": "/blobs"}
    inputs = {"bootstrap": SHA_A}
    clock = TickClock()
    with open_store(db_path, clock=clock) as store:
        run = start_run(store, digest, outputs=outputs, inputs=inputs)
        assert (run.status, run.resumes, run.started, run.finished) == ("running", 0, "2024-01-01T00:00:00.000Z", None)
        record_step(store, run.id, "blob:0", "running")
        done = record_step(store, run.id, "blob:0", "done", bytes=320, requests=2, blob_id="n0", size=4416,
                           sha256="e" * 64)
        assert (done.started, done.finished) == ("2024-01-01T00:00:01.000Z", "2024-01-01T00:00:02.000Z")
        record_step(store, run.id, "blob:1", "skipped", blob_id="n1", size=10, sha256="f" * 64)
        record_step(store, run.id, "bootstrap", "running")
        # the process dies here: no finish_run

    with open_store(db_path, create=False, clock=clock) as store:
        assert find_run(store, digest).status == "running"
        resumed = start_run(store, digest, outputs=dict(reversed(outputs.items())), inputs=inputs)
        assert (resumed.id, resumed.resumes, resumed.started) == (run.id, 1, run.started)
        complete = completed_steps(store, resumed.id)
        assert sorted(complete) == ["blob:0", "blob:1"]
        assert (complete["blob:0"].bytes, complete["blob:0"].sha256) == (320, "e" * 64)
        assert steps(store, run.id)["bootstrap"].status == "running"
        record_step(store, run.id, "bootstrap", "done")
        record_step(store, run.id, "json", "done")
        finished = finish_run(store, run.id, "succeeded")
        assert finished.status == "succeeded" and finished.finished is not None

        # A succeeded plan applied again, or another output, starts a new run.
        second = start_run(store, digest, outputs=outputs, inputs=inputs)
        assert second.id != run.id and completed_steps(store, second.id) == {}
        third = start_run(store, digest, outputs={"bootstrap": "/elsewhere"}, inputs=inputs)
        assert third.id not in (run.id, second.id)
        assert [r.id for r in list_runs(store, digest)] == [run.id, second.id, third.id]
        assert find_run(store, digest).id == third.id
        assert find_run(store, "0" * 64) is None


def test_bad_statuses_and_unknown_runs(db_path: Path) -> None:
    with open_store(db_path) as store:
        with pytest.raises(ValueError):
            finish_run(store, 1, "running")
        with pytest.raises(StoreError, match="no apply run 5"):
            record_step(store, 5, "json", "done")
        run = start_run(store, "d" * 64, outputs={}, inputs={})
        with pytest.raises(ValueError):
            record_step(store, run.id, "json", "finished")
