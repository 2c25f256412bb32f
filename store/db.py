"""Opening the state database, transactions, clock and error mapping.

Every sqlite3 failure that is about the database file (locked, corrupt, not a database,
disk full) leaves the store as a ``StoreError`` naming the file; integrity and programming
errors are our own bugs and are not disguised.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import StoreError
from .schema import APPLICATION, SCHEMA_VERSION, TABLES, create_schema

if TYPE_CHECKING:
    import sqlite_utils

_SQLITE_MAGIC = b"SQLite format 3\x00"
# Rows handed to sqlite3 per executemany call; bounds the Python tuples alive at once.
BATCH_ROWS = 50_000

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso_utc(moment: datetime) -> str:
    """ISO-8601 UTC with millisecond precision and a ``Z`` suffix; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def insert_sql(table: str, columns: Sequence[str]) -> str:
    return (
        f"INSERT INTO {quote(table)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)})"
    )


def select_sql(table: str, columns: Sequence[str], where: str, order: str = "") -> str:
    sql = f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table)} WHERE {where}"
    return f"{sql} ORDER BY {order}" if order else sql


def column_values(part: np.ndarray, name: str) -> list:
    """One field of a structured array as a list of Python values; raw (void) fields become bytes."""
    col = part[name]
    if col.dtype.kind != "V":
        return col.tolist()
    width = col.dtype.itemsize
    raw = np.ascontiguousarray(col).tobytes()
    return [raw[i : i + width] for i in range(0, len(raw), width)]


@dataclass(eq=False)
class Store:
    """An open state database. Use as a context manager or call ``close()``."""

    path: Path
    conn: sqlite3.Connection
    clock: Clock = field(default=utc_now)

    @cached_property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the same connection, for creating the schema and nested transactions.

        Imported on first use: it costs 50 ms of start-up, and apply, show and report, which
        open an existing store, never need it."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn, execute_plugins=False, recursive_triggers=False)

    def now(self) -> str:
        return iso_utc(self.clock())

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn failures caused by the database file into ``StoreError``."""
        try:
            yield
        except StoreError:
            raise
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise StoreError(f"{self.path}: state database is locked by another process ({text})") from None
            raise StoreError(f"{self.path}: {text}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        except OverflowError:
            raise StoreError(f"{self.path}: a value does not fit in a 64-bit SQLite integer") from None
        except UnicodeEncodeError:
            raise StoreError(f"{self.path}: a text value is not valid UTF-8") from None

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """One write transaction; the write lock is taken up front (BEGIN IMMEDIATE) so a
        concurrent writer is reported at once instead of failing half-way. Nested use is a savepoint."""
        conn = self.conn
        with self.guard():
            if conn.in_transaction:
                with self.db.atomic():
                    yield self
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def bulk(self) -> Iterator[Store]:
        """A transaction for large inserts: ``synchronous=NORMAL`` (still crash-safe under WAL,
        only the last commits may be lost on power failure), then back to FULL for checkpoints."""
        if self.conn.in_transaction:
            with self.transaction():
                yield self
            return
        with self.guard():
            self.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            with self.transaction():
                yield self
        finally:
            with self.guard():
                self.conn.execute("PRAGMA synchronous=FULL")

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        with self.guard():
            return self.conn.execute(sql, params)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self.guard():
            return self.conn.execute(sql, params).fetchall()

    def fetch_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.guard():
            cur = self.conn.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def fetch_array(self, sql: str, params: Sequence[Any], dtype: np.dtype, count: int) -> np.ndarray:
        """Read exactly ``count`` rows of a query into a structured array, batch by batch."""
        out = np.zeros(count, dtype=dtype)
        n = 0
        with self.guard():
            cur = self.conn.execute(sql, params)
            while batch := cur.fetchmany(BATCH_ROWS):
                if n + len(batch) > count:
                    raise StoreError(f"{self.path}: state database is inconsistent (more rows than recorded)")
                try:
                    out[n : n + len(batch)] = batch
                except (TypeError, ValueError, OverflowError) as exc:
                    raise StoreError(f"{self.path}: state database is inconsistent ({exc})") from None
                n += len(batch)
        if n != count:
            raise StoreError(f"{self.path}: state database is inconsistent ({n} rows, {count} recorded)")
        return out

    def insert_many(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Stream rows into ``table``; must run inside ``transaction()``/``bulk()``."""
        if not self.conn.in_transaction:
            raise RuntimeError("insert_many outside a transaction")
        with self.guard():
            self.conn.executemany(insert_sql(table, columns), rows)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _not_ours(path: Path, version: str | None = None) -> StoreError:
    suffix = f" (or incompatible version {version})" if version is not None else ""
    return StoreError(f"{path}: not a nydus-compact state database{suffix}")


def _check_header(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"{path}: cannot open state database: {exc.strerror or exc}") from None
    if head and head != _SQLITE_MAGIC:
        raise _not_ours(path)


def _connect(path: Path, create: bool, timeout: float) -> sqlite3.Connection:
    if path.exists():
        if not path.is_file():  # a FIFO would block the open forever, a device would be written
            raise StoreError(f"{path}: is a directory or special file, not a state database")
        _check_header(path)
    elif not create:
        raise StoreError(f"{path}: no such state database")
    target = str(path) if create else path.resolve().as_uri() + "?mode=rw"
    try:
        return sqlite3.connect(target, timeout=timeout, uri=not create)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open state database: {exc}") from None


def _init_or_check(store: Store, create: bool) -> None:
    # Checking is a plain read, so opening never waits behind another process's writer.
    tables = _table_names(store)
    if not tables:
        if not create:
            raise _not_ours(store.path)
        with store.transaction():
            if not _table_names(store):  # nobody initialised it while we waited for the lock
                create_schema(store.db)
                store.insert_many(
                    "meta",
                    ("key", "value"),
                    [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
                )
        tables = _table_names(store)
    if "meta" not in tables:
        raise _not_ours(store.path)
    meta = dict(store.fetchall('SELECT "key", "value" FROM "meta"'))
    if meta.get("application") != APPLICATION:
        raise _not_ours(store.path)
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise _not_ours(store.path, str(meta.get("schema_version")))
    if missing := sorted(set(TABLES) - tables):
        raise StoreError(f"{store.path}: state database is missing tables {missing}")


def _table_names(store: Store) -> set[str]:
    return {name for (name,) in store.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}


def open_store(path: Path, *, create: bool = True, timeout: float = 5.0, clock: Clock = utc_now) -> Store:
    """Open (and, with ``create``, initialise) the state database at ``path``.

    ``timeout`` is how long to wait for another process's write lock before giving up
    with a ``StoreError``; ``clock`` supplies every timestamp the store writes.
    """
    path = Path(path)
    conn = _connect(path, create, timeout)
    store = Store(path, conn, clock)
    try:
        with store.guard():
            conn.execute("PRAGMA foreign_keys=ON")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=wal")
            conn.execute("PRAGMA synchronous=FULL")
            _init_or_check(store, create)
    except BaseException:
        store.close()
        raise
    return store
