"""The state database schema, declared in Python and created with sqlite-utils.

Three groups of tables:

* the content index of a bootstrap (``images``, ``blobs``, ``chunks``, ``nodes``, ``refs``),
  keyed by the bootstrap's sha256 so a file is indexed once;
* plan recipes written by the planner (``plans``, ``plan_blobs``, ``new_blobs``, ``read_ranges``;
  apply recomputes each new blob's chunk layout from the plan's decisions, so it is not stored);
* apply checkpoints (``runs``, ``steps``).

Neither the distinct chunks nor the occurrences (a million for a large image) are rows:
both are stored columnar, as little-endian numpy arrays in BLOBs, ``SEGMENT`` elements per row.
``chunks`` holds every RafsV5ChunkInfo field except ``file_offset`` and ``reserved`` of each
distinct chunk record; a chunk's id is its position in those arrays, in order of first
occurrence. ``refs`` gives each occurrence's ``chunk_id`` and its own ``file_offset``; which file
an occurrence belongs to follows from the ``nodes`` ranges (chunk_start, chunk_count). A row per
occurrence cost two B-tree inserts each and half of the plan's time; a row per distinct chunk
was still half of the indexing time.

Tables of small rows under a composite key are ``WITHOUT ROWID``: one B-tree instead of a rowid
table plus its primary-key index. ``chunks`` and ``refs`` keep their rowid: their rows are large
BLOBs, written in place through ``blobopen``, which needs a rowid.
Bump ``SCHEMA_VERSION`` on any change: there are no migrations, an old store is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

APPLICATION = "nydus-compact"
SCHEMA_VERSION = 4
# Array elements per ``chunks``/``refs`` row: at most 32 MiB per BLOB, far below SQLite's 1 GB value limit.
SEGMENT = 1 << 20

# sqlite-utils' foreign-key form: (columns, other table, other columns)
ForeignKey = tuple[str | tuple[str, ...], str, str | tuple[str, ...]]


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: dict[str, type]
    pk: str | tuple[str, ...]
    nullable: frozenset[str] = frozenset()
    foreign_keys: tuple[ForeignKey, ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()
    unique: tuple[tuple[str, ...], ...] = ()
    defaults: dict[str, object] = field(default_factory=dict)
    without_rowid: bool = False


_IMAGE_FK: ForeignKey = ("image_id", "images", "id")
_PLAN_FK: ForeignKey = ("plan_id", "plans", "id")
_GROUP_FK: ForeignKey = (("plan_id", "grp"), "new_blobs", ("plan_id", "grp"))

TABLE_SPECS: tuple[TableSpec, ...] = (
    TableSpec("meta", {"key": str, "value": str}, "key"),
    TableSpec(
        "images",
        {
            "id": int,
            "path": str,
            "sha256": str,
            "size": int,
            "version": int,
            "chunk_size": int,
            "flags": int,
            "compressor": str,  # Compressor.label
            "digester": str,  # Digester.label
            "node_count": int,
            "occurrence_count": int,
            "indexed_at": str,
        },
        "id",
        unique=(("sha256",),),
    ),
    TableSpec(
        "blobs",
        {
            "image_id": int,
            "blob_index": int,
            "blob_id": str,
            "chunk_count": int,
            "compressed_size": int,
            "uncompressed_size": int,
            "features": int,
            "compressor": str,
            "digester": str,
            "chunk_size": int,
            "readahead_offset": int,
            "readahead_size": int,
            "blob_toc_size": int,
            "ci_compressor": int,
            "ci_offset": int,
            "ci_compressed_size": int,
            "ci_uncompressed_size": int,
            "blob_toc_digest": bytes,
            "blob_meta_digest": bytes,
            "blob_meta_size": int,
            # The blob's size as the planner saw it, and where from ("table" or e.g. "backend").
            "observed_size": int,
            "size_source": str,
        },
        ("image_id", "blob_index"),
        foreign_keys=(_IMAGE_FK,),
        indexes=(("blob_id",),),
        without_rowid=True,
    ),
    TableSpec(
        "chunks",
        {
            "image_id": int,
            "seg": int,  # distinct chunks (chunk_id) [seg * SEGMENT, (seg + 1) * SEGMENT)
            # One CHUNK_DTYPE field per chunk, in that field's dtype:
            "blob_index": bytes,
            "idx": bytes,  # the chunk record's ``index`` inside its blob
            "block_id": bytes,
            "compressed_offset": bytes,
            "compressed_size": bytes,
            "uncompressed_offset": bytes,
            "uncompressed_size": bytes,
            "flags": bytes,
        },
        ("image_id", "seg"),
        foreign_keys=(_IMAGE_FK,),
    ),
    TableSpec(
        "nodes",
        {
            "image_id": int,
            "pos": int,
            "path": bytes,  # raw name bytes: paths need not be UTF-8
            "kind": str,
            "mode": int,
            "size": int,
            "nlink": int,
            "link": int,  # Node.link: first node of the hard-link group
            "chunk_start": int,
            "chunk_count": int,
        },
        ("image_id", "pos"),
        foreign_keys=(_IMAGE_FK,),
        without_rowid=True,
    ),
    TableSpec(
        "refs",
        {
            "image_id": int,
            "seg": int,  # occurrences [seg * SEGMENT, (seg + 1) * SEGMENT)
            "chunk_ids": bytes,  # <u8 per occurrence: its chunk_id
            "file_offsets": bytes,  # <u8 per occurrence
        },
        ("image_id", "seg"),
        foreign_keys=(_IMAGE_FK,),
    ),
    TableSpec(
        "plans",
        {
            "id": int,
            "plan_digest": str,
            "image_ids": str,  # JSON array: the bootstrap's image, then the chunk dict's if any
            "created": str,
            "config_json": str,
            "flags_json": str,
        },
        "id",
        unique=(("plan_digest",),),
    ),
    TableSpec(
        "plan_blobs",
        {
            "plan_id": int,
            "e_index": int,
            "blob_id": str,
            "action": str,
            "reason": str,
            "used_bytes": int,
            "size": int,
            "size_source": str,
            "ratio": float,
            "grp": int,
            "new_index": int,
        },
        ("plan_id", "e_index"),
        nullable=frozenset({"ratio", "grp", "new_index"}),
        foreign_keys=(_PLAN_FK,),
        without_rowid=True,
    ),
    TableSpec(
        "new_blobs",
        {
            "plan_id": int,
            "grp": int,
            "new_index": int,
            "chunk_count": int,
            "compressed_size": int,
            "uncompressed_size": int,
        },
        ("plan_id", "grp"),
        foreign_keys=(_PLAN_FK,),
    ),
    TableSpec(
        "read_ranges",
        {
            "plan_id": int,
            "grp": int,
            # The fields of planner.layout.READ_DTYPE, under the same names.
            "source": int,
            "offset": int,
            "length": int,
            "first": int,
            "count": int,
        },
        ("plan_id", "grp", "first"),
        foreign_keys=(_GROUP_FK,),
        without_rowid=True,
    ),
    TableSpec(
        "runs",
        {
            "id": int,
            "plan_digest": str,
            "started": str,
            "finished": str,
            "status": str,
            "resumes": int,
            "outputs": str,  # JSON object name -> path
            "inputs": str,  # JSON object name -> sha256
        },
        "id",
        nullable=frozenset({"finished"}),
        indexes=(("plan_digest",),),
        defaults={"resumes": 0},
    ),
    TableSpec(
        "steps",
        {
            "run_id": int,
            "key": str,  # "blob:<grp>", "bootstrap", "json"
            "status": str,
            "started": str,
            "finished": str,
            "bytes": int,
            "requests": int,
            "blob_id": str,
            "size": int,
            "sha256": str,
            "detail": str,
        },
        ("run_id", "key"),
        nullable=frozenset({"finished", "blob_id", "size", "sha256", "detail"}),
        foreign_keys=(("run_id", "runs", "id"),),
        defaults={"bytes": 0, "requests": 0},
    ),
)

TABLES: tuple[str, ...] = tuple(spec.name for spec in TABLE_SPECS)
COLUMNS: dict[str, tuple[str, ...]] = {spec.name: tuple(spec.columns) for spec in TABLE_SPECS}


def create_schema(db: sqlite_utils.Database) -> None:
    """Create every table and index; the caller holds the transaction."""
    for spec in TABLE_SPECS:
        sql = db.create_table_sql(
            spec.name,
            spec.columns,
            pk=spec.pk,
            not_null=[c for c in spec.columns if c not in spec.nullable],
            foreign_keys=list(spec.foreign_keys),
            defaults=spec.defaults,
        )
        if spec.without_rowid:  # sqlite-utils has no option for it
            sql = sql.rstrip().removesuffix(";") + " WITHOUT ROWID"
        db.execute(sql)
        table = db.table(spec.name)
        for cols in spec.unique:
            table.create_index(cols, index_name=f"ux_{spec.name}_{'_'.join(cols)}", unique=True)
        for cols in spec.indexes:
            table.create_index(cols, index_name=f"ix_{spec.name}_{'_'.join(cols)}")
