"""Where cached results live: in memory, or in a SQLite file that outlives the process.

A store maps a 32-byte key to a payload (the pickled result) and remembers, for each entry,
the unit it belongs to, its size, when it was written and when it was last read. It knows
nothing about units or pickling: :mod:`._cache` makes the keys and the payloads.

:class:`SQLiteStore` policy:

* **Atomic entries.** Each entry is written in one transaction, with a checksum (BLAKE2b of
  key and payload). An entry whose checksum does not match (bit rot, a hand edit, a torn
  write from a broken file system) is deleted and reported missing, never returned.
* **Crash safety.** Write-ahead logging (``journal_mode=WAL``, ``synchronous=NORMAL``): a
  committed entry survives the death of the process (``kill -9``); a power cut may lose the
  last few, never corrupt the file.
* **Several processes.** Readers never block; writers take the lock with ``BEGIN IMMEDIATE``
  and wait for it up to ``timeout`` seconds (``busy_timeout``).
* **Versioned format.** A ``meta`` table holds ``format_version``. A file of another version,
  or one that is not a cache, raises ``ValueError`` on opening and is left untouched.
* **Owner only.** A new file is created with mode 0o600 before anything is written into it.
  A ``path`` that is a symbolic link is refused (the file would be created, or read, wherever
  the link points); an existing file that others may write gets an
  :class:`InsecureCacheWarning`. A path that cannot be a store (a directory, a file this
  process cannot read and write) raises an ``OSError`` naming it, before SQLite opens it.
* **LRU.** With ``size_limit`` (bytes of payload), entries least recently read or written
  are evicted after a write that goes over it. Read times are batched in memory and written
  at the end of a run (or every 1,000 reads), so a hit costs no write transaction.

State: one connection per store and per process (reopened after a fork), guarded by a lock,
since lookups come from several threads at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import sqlite3
import stat
import threading
import time
import warnings
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["CacheEntry", "CacheStore", "InsecureCacheWarning", "MemoryStore", "SQLiteStore"]

LOGGER = logging.getLogger("quantum_partitioner")

#: The on-disk format this version reads and writes (see docs/caching.md).
FORMAT_VERSION: Final = 1
_TOUCH_BATCH: Final = 1000
# Connections a forked child inherited from its parent: never used, never closed.
_INHERITED: list[sqlite3.Connection] = []

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    (
        "CREATE TABLE IF NOT EXISTS entries ("
        " key BLOB PRIMARY KEY,"
        " unit TEXT NOT NULL,"
        " payload BLOB NOT NULL,"
        " checksum BLOB NOT NULL,"
        " size INTEGER NOT NULL,"
        " created REAL NOT NULL,"
        " accessed REAL NOT NULL)"
    ),
    "CREATE INDEX IF NOT EXISTS entries_unit ON entries (unit)",
    "CREATE INDEX IF NOT EXISTS entries_accessed ON entries (accessed)",
)


def checksum(key: bytes, payload: bytes) -> bytes:
    """The 16-byte checksum stored beside a payload: BLAKE2b of the key and the payload."""
    return hashlib.blake2b(key + payload, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stored result, as :meth:`CacheStore.entries` lists it.

    Attributes:
        unit: The unit whose result it is.
        key: The entry's cache key, in hex.
        size: Bytes of payload (the pickled result).
        created: When it was written, in seconds since the epoch.
        accessed: When it was last read or written, in seconds since the epoch.

    .. versionadded:: 0.1
    """

    unit: str
    key: str
    size: int
    created: float
    accessed: float

    @property
    def age(self) -> float:
        """Seconds since the entry was written."""
        return max(0.0, time.time() - self.created)

    @property
    def idle(self) -> float:
        """Seconds since the entry was last read or written."""
        return max(0.0, time.time() - self.accessed)


class CacheStore(ABC):
    """Keyed storage for cached results; subclass it for another backing store.

    Every method may be called from several threads at once. ``get`` must never return a
    payload other than the one ``put`` stored under that key: a damaged entry is dropped
    (counted in :attr:`corrupt`) and reported missing.

    Attributes:
        size_limit: Bytes of payload to keep at most (least recently used go first), or None.
        corrupt: How many damaged entries were found and dropped.

    .. versionadded:: 0.1
    """

    size_limit: int | None = None
    corrupt: int = 0

    @abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """The payload stored under ``key`` (marking it used), or None."""

    @abstractmethod
    def put(self, key: bytes, unit: str, payload: bytes) -> None:
        """Store ``payload`` under ``key``, replacing any entry, then evict over the limit."""

    @abstractmethod
    def discard(self, key: bytes, *, corrupt: bool = False) -> None:
        """Delete the entry under ``key``; ``corrupt`` counts it as damaged."""

    @abstractmethod
    def clear(self, unit: str | None = None) -> int:
        """Delete every entry, or only ``unit``'s; return how many were deleted."""

    @abstractmethod
    def entries(self, unit: str | None = None) -> list[CacheEntry]:
        """Every entry (or ``unit``'s), most recently used first."""

    @abstractmethod
    def __len__(self) -> int:
        """How many entries are stored."""

    @abstractmethod
    def total_size(self) -> int:
        """Bytes of payload stored."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Write out what is batched in memory (read times); called after each run."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release resources; the store is not used afterwards."""

    def __enter__(self) -> Self:
        """Use the store in a ``with`` block that closes it."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        self.close()


def _check_limit(size_limit: int | None) -> int | None:
    if size_limit is None:
        return None
    if isinstance(size_limit, bool) or not isinstance(size_limit, int):
        raise TypeError(
            f"cache_size_limit must be a positive int (bytes) or None, not {size_limit!r}"
        )
    if size_limit < 1:
        raise ValueError(f"cache_size_limit must be greater than 0, got {size_limit}")
    return size_limit


class _MemoryEntry:
    __slots__ = ("accessed", "created", "payload", "unit")

    def __init__(self, unit: str, payload: bytes, now: float) -> None:
        self.unit = unit
        self.payload = payload
        self.created = now
        self.accessed = now


class MemoryStore(CacheStore):
    """Entries in a dict, for the life of the process (the default store).

    Payloads are kept pickled, as in :class:`SQLiteStore`, so a hit returns a fresh copy that
    the caller may change without changing the cache, and the size limit counts real bytes.

    Args:
        size_limit: Bytes of payload to keep at most, or None for no limit.

    .. versionadded:: 0.1
    """

    def __init__(self, size_limit: int | None = None) -> None:
        """Create an empty store."""
        self.size_limit = _check_limit(size_limit)
        self.corrupt = 0
        self._entries: OrderedDict[bytes, _MemoryEntry] = OrderedDict()  # oldest use first
        self._total = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        """Count the entries."""
        return f"MemoryStore(entries={len(self)}, size_limit={self.size_limit})"

    def get(self, key: bytes) -> bytes | None:
        """The payload under ``key``, now the most recently used, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            entry.accessed = time.time()
            self._entries.move_to_end(key)
            return entry.payload

    def put(self, key: bytes, unit: str, payload: bytes) -> None:
        """Store ``payload``; evict least recently used entries over the size limit."""
        limit = self.size_limit
        if limit is not None and len(payload) > limit:
            return  # it would evict everything and still not fit
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._total -= len(old.payload)
            self._entries[key] = _MemoryEntry(unit, payload, time.time())
            self._total += len(payload)
            if limit is not None:
                while self._total > limit:
                    _, evicted = self._entries.popitem(last=False)
                    self._total -= len(evicted.payload)

    def discard(self, key: bytes, *, corrupt: bool = False) -> None:
        """Delete the entry under ``key``, if any."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._total -= len(entry.payload)
            if corrupt:
                self.corrupt += 1

    def clear(self, unit: str | None = None) -> int:
        """Delete every entry, or ``unit``'s; return how many."""
        with self._lock:
            if unit is None:
                count = len(self._entries)
                self._entries.clear()
                self._total = 0
                return count
            keys = [key for key, entry in self._entries.items() if entry.unit == unit]
            for key in keys:
                self._total -= len(self._entries.pop(key).payload)
            return len(keys)

    def entries(self, unit: str | None = None) -> list[CacheEntry]:
        """Every entry (or ``unit``'s), most recently used first."""
        with self._lock:
            return [
                CacheEntry(e.unit, key.hex(), len(e.payload), e.created, e.accessed)
                for key, e in reversed(self._entries.items())
                if unit is None or e.unit == unit
            ]

    def __len__(self) -> int:
        """How many entries are stored."""
        return len(self._entries)

    def total_size(self) -> int:
        """Bytes of payload stored."""
        return self._total


class InsecureCacheWarning(UserWarning):
    """An existing cache store may be written by other users (group or others can write it).

    Whoever can write a store can make it return anything, or run code in the process that
    loads it (results are pickles): make the file ``chmod 600``, or use another path.

    .. versionadded:: 0.1
    """


# Primary SQLite result codes that mean "this path cannot be used", not "this is no store".
_PATH_ERRORS: Final = {
    3: "permission denied",  # SQLITE_PERM
    8: "it is read-only for this process",  # SQLITE_READONLY
    10: "an I/O error",  # SQLITE_IOERR
    13: "the disk is full",  # SQLITE_FULL
    14: "SQLite cannot open it",  # SQLITE_CANTOPEN
}


def _path_problem(error: sqlite3.Error) -> str | None:
    """Why SQLite could not use the file, if ``error`` says it is the path's fault."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else _PATH_ERRORS.get(code & 0xFF)


def _open_private_file(path: Path) -> os.stat_result:
    """Make sure ``path`` is a regular file this process may use as a store; return its stat.

    A missing file is created empty with mode 0o600 (its directory too); ``O_NOFOLLOW``
    makes sure the new file is the path itself, not the target of a link planted there.

    Raises:
        ValueError: ``path`` is a symbolic link, or not a regular file.
        OSError: ``path`` is a directory, or cannot be created, read or written (its
            ``filename`` is the path).
    """
    name = str(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            info = os.lstat(path)
        else:
            try:
                return os.fstat(fd)
            finally:
                os.close(fd)
    except OSError as error:
        raise _path_error(error, f"cannot create the cache store {name!r}", name) from error
    if stat.S_ISLNK(info.st_mode):
        raise ValueError(
            f"cache_path {name!r} is a symbolic link (to {str(path.readlink())!r}); a store is "
            "never opened through a link. Pass the real path of the file."
        )
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "cache_path is a directory, not a file", name)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"cache_path {name!r} is not a regular file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise PermissionError(
            errno.EACCES, "cache_path is not readable and writable by this process", name
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        warnings.warn(
            InsecureCacheWarning(
                f"cache store {name!r} is writable by its group or by others (mode "
                f"{stat.filemode(info.st_mode)}): whoever can write it can run code in this "
                "process. Make it readable and writable by its owner only (chmod 600)."
            ),
            stacklevel=4,
        )
    return info


def _check_unchanged(path: Path, before: os.stat_result) -> None:
    """Refuse ``path`` if it became a link or another file while SQLite opened it."""
    after = os.lstat(path)
    if stat.S_ISLNK(after.st_mode) or (after.st_dev, after.st_ino) != (
        before.st_dev,
        before.st_ino,
    ):
        raise ValueError(
            f"cache_path {str(path)!r} was replaced (by a link or another file) while it was "
            "being opened; refusing it"
        )


def _path_error(error: OSError, what: str, name: str) -> OSError:
    """The same kind of ``OSError``, saying what could not be done with which path."""
    problem = error.strerror or str(error)
    return type(error)(error.errno or errno.EIO, f"{what}: {problem}", error.filename or name)


def _close_quietly(connections: list[sqlite3.Connection]) -> None:
    for connection in connections:
        with contextlib.suppress(sqlite3.Error):
            connection.close()
    connections.clear()


class SQLiteStore(CacheStore):
    """Entries in a SQLite file shared by runs, processes and restarts.

    See the module docstring for the guarantees (atomic checksummed entries, WAL, versioned
    format, owner-only file, LRU eviction).

    Args:
        path: The database file; created (mode 0o600, parent directories too) if missing.
            Not a symbolic link.
        size_limit: Bytes of payload to keep at most, or None for no limit.
        timeout: Seconds a writer waits for another process's write lock.

    Raises:
        ValueError: The file is not a quantum-partitioner cache, or of another format
            version, or ``path`` is a symbolic link.
        OSError: ``path`` is a directory, or cannot be created, read or written (the
            message names it).

    Warns:
        InsecureCacheWarning: The file exists and its group or others may write it.

    .. versionadded:: 0.1
    """

    def __init__(
        self, path: str | os.PathLike[str], size_limit: int | None = None, *, timeout: float = 30.0
    ) -> None:
        """Open (or create) the store and check its format."""
        self.path = Path(path)
        self.size_limit = _check_limit(size_limit)
        self.corrupt = 0
        self.timeout = timeout
        self._lock = threading.RLock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = -1
        self._touched: dict[bytes, float] = {}
        self._known_total: int | None = None
        self._unchecked = 0
        self._finalizer = weakref.finalize(self, _close_quietly, self._connections)
        self._connection()

    def __repr__(self) -> str:
        """Name the file."""
        return f"SQLiteStore({str(self.path)!r}, size_limit={self.size_limit})"

    # -- the connection --------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened (and the file checked) on first use."""
        if self._pid == os.getpid() and self._connections:
            return self._connections[-1]
        if self._connections:
            # A forked child: the parent's connection must be neither used nor closed here
            # (closing it could disturb the parent's locks), so it is kept, unused, for good.
            _INHERITED.extend(self._connections)
            self._connections.clear()
            self._touched.clear()
        checked = _open_private_file(self.path)
        try:
            connection = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise self._unusable(error) from error
        try:
            self._prepare(connection)  # SQLite opens the file here, at the first statement
            _check_unchanged(self.path, checked)
        except BaseException:
            connection.close()
            raise
        self._connections.append(connection)
        self._pid = os.getpid()
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._enable_wal(connection)
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("BEGIN IMMEDIATE")
            try:
                version = self._check_or_create(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            if _path_problem(error) is not None:
                raise self._unusable(error) from error
            raise ValueError(
                f"{str(self.path)!r} is not a quantum-partitioner cache store ({error})"
            ) from error
        if version != str(FORMAT_VERSION):
            raise ValueError(
                f"cache store {str(self.path)!r} has format version {version}; this version of "
                f"quantum-partitioner reads version {FORMAT_VERSION}. Use another cache_path, "
                "or delete the file (its results will be recomputed)."
            )

    def _unusable(self, error: sqlite3.Error) -> OSError:
        """An ``OSError`` naming the path, for a SQLite error that means it cannot be used."""
        reason = _path_problem(error) or "SQLite cannot use it"
        return OSError(
            errno.EIO,
            f"cannot open the cache store: {reason} ({error}); SQLite also needs to create "
            "its -wal and -shm files beside it",
            str(self.path),
        )

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        """Switch to WAL, waiting while another process holds the lock.

        Changing the journal mode needs an exclusive lock and SQLite does not always call the
        busy handler for it, so two processes opening a new store at once would see
        "database is locked": retry until ``timeout``.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            else:
                return

    def _check_or_create(self, connection: sqlite3.Connection) -> str:
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if tables and "meta" not in tables:
            raise ValueError(
                f"{str(self.path)!r} is a SQLite database but not a quantum-partitioner cache "
                f"store (it has tables {sorted(tables)}); use another cache_path"
            )
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('format_version', ?)",
            (str(FORMAT_VERSION),),
        )
        row = connection.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
        return "missing" if row is None else str(row[0])

    # -- entries ---------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The payload under ``key`` if its checksum matches, else None (and it is dropped)."""
        with self._lock:
            connection = self._connection()
            row = connection.execute(
                "SELECT payload, checksum FROM entries WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            payload, stored = row
            if not isinstance(payload, bytes) or checksum(key, payload) != stored:
                LOGGER.warning(
                    "cache store %s: entry %s is damaged (checksum mismatch); it will be "
                    "recomputed",
                    self.path,
                    key.hex(),
                )
                self.discard(key, corrupt=True)
                return None
            self._touched[key] = time.time()
            if len(self._touched) >= _TOUCH_BATCH:
                self._flush_touches(connection)
            return payload

    def put(self, key: bytes, unit: str, payload: bytes) -> None:
        """Write the entry in one transaction, then evict over the size limit."""
        limit = self.size_limit
        if limit is not None and len(payload) > limit:
            return  # it would evict everything and still not fit
        now = time.time()
        with self._lock:
            connection = self._connection()
            with _Transaction(connection):
                connection.execute(
                    "INSERT OR REPLACE INTO entries"
                    " (key, unit, payload, checksum, size, created, accessed)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, unit, payload, checksum(key, payload), len(payload), now, now),
                )
                self._touched.pop(key, None)
                if limit is not None:
                    self._evict(connection, limit, key, len(payload))

    def _evict(self, connection: sqlite3.Connection, limit: int, keep: bytes, added: int) -> None:
        """Delete least recently used entries while the store is over ``limit`` (in a write).

        The total is summed only when the running estimate says it may be over the limit:
        writes by other processes are seen at the next check.
        """
        self._unchecked += added
        if self._known_total is not None and self._known_total + self._unchecked <= limit:
            return
        self._apply_touches(connection)
        (total,) = connection.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()
        if total > limit:
            doomed = []
            for key, size in connection.execute(
                "SELECT key, size FROM entries WHERE key != ? ORDER BY accessed, created", (keep,)
            ):
                doomed.append((key,))
                total -= size
                if total <= limit:
                    break
            connection.executemany("DELETE FROM entries WHERE key = ?", doomed)
        self._known_total = total
        self._unchecked = 0

    def discard(self, key: bytes, *, corrupt: bool = False) -> None:
        """Delete the entry under ``key``, if any."""
        with self._lock:
            if corrupt:
                self.corrupt += 1
            self._touched.pop(key, None)
            connection = self._connection()
            with _Transaction(connection):
                connection.execute("DELETE FROM entries WHERE key = ?", (key,))

    def clear(self, unit: str | None = None) -> int:
        """Delete every entry, or ``unit``'s; return how many."""
        with self._lock:
            connection = self._connection()
            with _Transaction(connection):
                if unit is None:
                    cursor = connection.execute("DELETE FROM entries")
                    self._touched.clear()
                else:
                    cursor = connection.execute("DELETE FROM entries WHERE unit = ?", (unit,))
            self._known_total = None
            return max(0, cursor.rowcount)

    def entries(self, unit: str | None = None) -> list[CacheEntry]:
        """Every entry (or ``unit``'s), most recently used first."""
        self.flush()
        query = "SELECT unit, key, size, created, accessed FROM entries"
        params: tuple[str, ...] = ()
        if unit is not None:
            query += " WHERE unit = ?"
            params = (unit,)
        with self._lock:
            rows = self._connection().execute(query + " ORDER BY accessed DESC", params)
            return [
                CacheEntry(name, bytes(key).hex(), size, created, accessed)
                for name, key, size, created, accessed in rows
            ]

    def __len__(self) -> int:
        """How many entries are stored."""
        with self._lock:
            (count,) = self._connection().execute("SELECT COUNT(*) FROM entries").fetchone()
        return int(count)

    def total_size(self) -> int:
        """Bytes of payload stored."""
        with self._lock:
            (total,) = (
                self._connection().execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()
            )
        return int(total)

    # -- batched read times ----------------------------------------------------------------

    def _apply_touches(self, connection: sqlite3.Connection) -> None:
        """Write the batched read times (inside a write transaction)."""
        if self._touched:
            connection.executemany(
                "UPDATE entries SET accessed = MAX(accessed, ?) WHERE key = ?",
                [(when, key) for key, when in self._touched.items()],
            )
            self._touched.clear()

    def _flush_touches(self, connection: sqlite3.Connection) -> None:
        try:
            with _Transaction(connection):
                self._apply_touches(connection)
        except sqlite3.Error as error:  # read times are a hint: never fail a lookup for them
            LOGGER.warning("cache store %s: could not record read times: %s", self.path, error)
            self._touched.clear()

    def flush(self) -> None:
        """Write the batched read times."""
        with self._lock:
            if self._touched and self._pid == os.getpid() and self._connections:
                self._flush_touches(self._connections[-1])

    def close(self) -> None:
        """Write the batched read times and close the connection."""
        with self._lock:
            self.flush()
            _close_quietly(self._connections)
            self._pid = -1


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` if the block raised."""

    __slots__ = ("connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> sqlite3.Connection:
        self.connection.execute("BEGIN IMMEDIATE")
        return self.connection

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.connection.execute("COMMIT")
        else:
            with contextlib.suppress(sqlite3.Error):
                self.connection.execute("ROLLBACK")
