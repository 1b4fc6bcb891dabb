"""Where cached results live: in memory, or in a SQLite file that outlives the process.

A store maps a 32-byte key to a payload (the pickled result) and remembers, for each entry,
the unit it belongs to, its size, when it was written and when it was last read. It knows
nothing about units or pickling: :mod:`._cache` makes the keys and the payloads.

:class:`SQLiteStore` policy:

* **Atomic entries.** Each entry is written whole, with a checksum (CRC-32 of key and
  payload). An entry whose checksum does not match (bit rot, a hand edit, a torn
  write from a broken file system) is deleted and reported missing, never returned.
* **Crash safety.** Write-ahead logging (``journal_mode=WAL``, ``synchronous=NORMAL``): a
  committed entry survives the death of the process (``kill -9``); a power cut may lose the
  last few, never corrupt the file.
* **Background checkpoints.** A checkpointer thread with a connection of its own folds the
  write-ahead log into the file (a passive checkpoint) once ``_CHECKPOINT_ROWS`` rows were
  committed since the last one and after each run (``flush``), so that the log is reused
  instead of growing; ``close`` waits for one under way, then closing the last connection
  copies the rest: the file alone then holds every entry.
* **Group commit.** ``put`` only queues the entry (``get`` sees it at once); a writer thread
  lets the writes of a burst gather for ``_COMMIT_DELAY`` (10 ms) after the first, or until
  ``_COMMIT_BATCH`` (1,000) are queued, and commits them in one transaction, each entry
  stamped with its time; the writes that arrive meanwhile go into the next one. So a write
  is committed within about 10 ms plus a transaction's time, a burst of short units shares
  a few large transactions (one per unit would cost three times the CPU), and the caller's
  thread waits for neither; ``flush`` (the
  end of every run, interrupted or not), ``close`` and a normal interpreter exit commit what
  is left at once. A ``kill -9`` can lose only the results handed over in the last 10 ms or
  so before the kill.
* **Several processes.** Readers never block; writers take the lock with ``BEGIN IMMEDIATE``
  and wait for it up to ``timeout`` seconds (``busy_timeout``).
* **Versioned format.** A ``meta`` table holds ``format_version``. A version 1 or 2 file
  (which differed in its checksum and had an index on ``unit``) is upgraded in place,
  keeping its valid entries; a file of another version, or one that is not a cache (a
  SQLite database without a format version, or not a SQLite database), raises
  ``ValueError`` on opening and is left untouched (checked before anything is written).
* **One b-tree per write.** ``entries`` has no index but its key's (each would be one more
  b-tree per write) until a store with a size limit adds the one on ``accessed`` that
  eviction reads; listing or clearing one unit's entries reads the whole table.
* **Owner only.** A new file is created with mode 0o600 before anything is written into it.
  A ``path`` that is a symbolic link is refused (the file would be created, or read, wherever
  the link points); an existing file that others may write gets an
  :class:`InsecureCacheWarning`. A path that cannot be a store (a directory, a file this
  process cannot read and write) raises an ``OSError`` naming it, before SQLite opens it.
* **Bulk reads.** ``prefetch`` (before a run, with the keys the run will look up) reads
  those entries in a few ``IN (...)`` queries instead of one query per lookup: a key it did
  not find is a miss without a query, a payload it found is checked and served from memory
  once (payloads over ``_PREFETCH_ENTRY_BYTES``, or beyond ``_PREFETCH_BYTES`` in all, are
  read when looked up). What it holds is dropped by ``flush`` (the end of the run). A key
  another process writes meanwhile is recomputed once; an entry it deletes meanwhile may
  still be served (it was valid: keys are content addresses).
* **LRU.** With ``size_limit`` (bytes of payload), entries least recently read or written
  are evicted after a write that goes over it (or the first write after another process
  changed the file, whose writes it cannot count). Once summed, the total is kept exact
  from each batch's sizes and those of the entries it replaces (its own keys read), so a
  store at its limit does not sum every entry's size at each commit. Read times are batched
  in memory and written by the writer thread every 10,000 reads and after each run
  (``close``, a listing and an eviction write them first), so a hit costs no write
  transaction and nobody waits for one.
  A batch is stamped with the time it is written, not each read with its own: the order
  between runs is what eviction needs, and a hit then reads no clock.

State: one connection per store and per process (reopened after a fork), guarded by a lock,
since lookups come from several threads at once; a forked child makes its stores' locks anew.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import itertools
import logging
import math
import operator
import os
import sqlite3
import stat
import threading
import time
import warnings
import weakref
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

if TYPE_CHECKING:
    from collections.abc import Collection
    from types import TracebackType

__all__ = ["CacheEntry", "CacheStore", "InsecureCacheWarning", "MemoryStore", "SQLiteStore"]

LOGGER = logging.getLogger("quantum_partitioner")

#: The on-disk format this version reads and writes (see docs/caching.md). Version 3: the
#: checksum is an INTEGER (version 2: 4 bytes), and ``entries`` has no index on ``unit``
#: (version 1: the checksum was BLAKE2b-128, four times the cost of CRC-32).
FORMAT_VERSION: Final = 3
_TOUCH_BATCH: Final = 10_000
# prefetch: keys per IN (...) query (below SQLite's oldest limit of 999 parameters), the
# largest payload it reads ahead, and how many payload bytes it holds at most.
_PREFETCH_CHUNK: Final = 500
_PREFETCH_ENTRY_BYTES: Final = 1 << 20
_PREFETCH_BYTES: Final = 64 << 20
_PREFETCH_QUERY: Final = (
    "SELECT key, CASE WHEN size <= ? THEN payload END, checksum FROM entries WHERE key IN ({})"
)
_TOUCH_QUERY: Final = "UPDATE entries SET accessed = MAX(accessed, ?) WHERE key IN ({})"
_TOTAL_QUERY: Final = "SELECT COALESCE(SUM(size), 0) FROM entries"
_REPLACED_QUERY: Final = "SELECT COALESCE(SUM(size), 0) FROM entries WHERE key IN ({})"
# A store with at most _SCAN_RATIO entries per key wanted is read whole instead (a scan costs
# a quarter of a keyed read per row), keeping the wanted rows; payloads over _SCAN_ENTRY_BYTES
# are left out of the scan (it reads every row's) and read by key afterwards.
_SCAN_RATIO: Final = 2
_SCAN_ENTRY_BYTES: Final = 16 << 10
_SCAN_QUERY: Final = "SELECT key, size, CASE WHEN size <= ? THEN payload END, checksum FROM entries"
_BYTES_ONLY: Final = frozenset({bytes})
# How long an idle writer thread of a SQLiteStore waits for more writes before it ends.
_WRITER_LINGER: Final = 0.5
# Group commit: the writer lets writes gather for up to _COMMIT_DELAY seconds after the first
# one of a batch, or until _COMMIT_BATCH are queued. A transaction costs as much CPU as some
# fifty rows: a commit per unit costs eight times the CPU per row of a large batch, ten per
# transaction three times. The delay is the bound docs/caching.md states for a kill -9.
_COMMIT_DELAY: Final = 0.01
_COMMIT_BATCH: Final = 1_000
# Background checkpoints: once this many rows were committed since the last one, and after
# each run's last commit, a thread of the store with a connection of its own copies the
# write-ahead log into the file (PRAGMA wal_checkpoint(PASSIVE): it never blocks a writer
# or a reader, and SQLite lets go of the GIL meanwhile). Keys are random, so each commit
# rewrites nearly every page of the key's index: a run of 10,000 entries left a WAL of
# 8-10 MB from ~25 commits, which close() then had to fsync and copy (55-68 ms); checkpointed
# as the run goes on, the WAL is reused from its start and close() finds little or nothing
# left. Rows, not commits: a trickle of small commits is not checkpointed at each one.
_CHECKPOINT_ROWS: Final = 1_000
_INSERT: Final = (
    "INSERT OR REPLACE INTO entries (key, unit, payload, checksum, size, created, accessed)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Rows per INSERT statement at most (7 parameters each, below SQLite's oldest limit of 999).
# A batch goes in statements of 128 rows, then one each of 64, 32, ... for its rest, as
# its binary digits say: a few statements per batch, and few distinct ones (each is compiled
# once and kept in the connection's statement cache). (Plain "?" parameters: numbered ones
# reused in a row, "?5" for the created time too, cost SQLite half as much again.)
_ROWS_PER_INSERT: Final = 128
_INSERTS: Final = {
    rows: _INSERT + ", (?, ?, ?, ?, ?, ?, ?)" * (rows - 1)
    for rows in (1 << bit for bit in range(_ROWS_PER_INSERT.bit_length()))
}
# Keys and payloads up to this size are handed to SQLite as bytearray copies: the sqlite3
# module binds a bytearray at once, but bytes only after looking for an adapter for them
# (a tuple, a dict lookup and two attribute lookups per value, a third of the CPU of a small
# row). Over it, the copy would cost more than the look-up.
_COPY_BYTES: Final = 4096
# Connections a forked child inherited from its parent: never used, never closed.
_INHERITED: list[sqlite3.Connection] = []
# This process's id, kept current in a forked child, so that a write checks for a fork
# without a system call.
_this_process = os.getpid()


def _note_fork() -> None:
    global _this_process  # noqa: PLW0603 - one process id, read on every write
    _this_process = os.getpid()
    # Locks of their own: the thread that held one at the fork (a writer thread committing,
    # a lookup under way) does not exist in the child, and would never let go of it.
    for store in list(_LIVE_STORES):
        store._new_locks()
    for memory in list(_MEMORY_STORES.values()):
        memory._new_locks()


# Checkpointer locks held across a fork (see _hold_checkpoints).
_HELD_FOR_FORK: list[threading.Lock] = []


def _hold_checkpoints() -> None:
    """Before a fork: wait for the checkpoints under way, and start none until it is done.

    A thread inside SQLite at the fork (a checkpoint's connect or fsync) holds SQLite's own
    mutexes, which the child inherits held, with no thread to let go of them: the child's
    first connection would wait for them for ever. (A checkpoint follows every run, so a
    PROCESS pool forked for the next run would often meet one.)
    """
    for store in list(_LIVE_STORES):
        lock = store._checkpoint_lock
        lock.acquire()
        _HELD_FOR_FORK.append(lock)


def _let_checkpoints_go() -> None:
    """After a fork, in the parent: let the checkpointers go on."""
    while _HELD_FOR_FORK:
        _HELD_FOR_FORK.pop().release()


def _forget_held_checkpoints() -> None:
    """After a fork, in the child: its stores have locks of their own (see _note_fork)."""
    _HELD_FOR_FORK.clear()


os.register_at_fork(after_in_child=_note_fork)
os.register_at_fork(
    before=_hold_checkpoints,
    after_in_parent=_let_checkpoints_go,
    after_in_child=_forget_held_checkpoints,
)

# Each index is one more b-tree every write updates; ``entries`` has only its primary key's.
# A rowid table (rows appended in write order) with the key's index beside it, not a table
# clustered on the key (WITHOUT ROWID): random keys would spread each transaction's rows
# over all of its pages, and a commit writes every page it changed (a third more CPU).
# ``clear(unit)`` and ``entries(unit)`` read the whole table (rare, and linear); the index
# on ``accessed`` that eviction reads is made by the first store that has a size limit (see
# _index_for_eviction), so that stores without one do not pay for it.
# The payload is the last column: SQLite reads a row's columns in order, and a payload
# larger than a page goes on in overflow pages, so that one before the others would have a
# query of sizes or times (the total eviction checks, the LRU order, a listing) read every
# page of every payload. (A file made before kept its order: columns are named, not counted.)
_ENTRIES: Final = (
    "CREATE TABLE IF NOT EXISTS entries ("
    " key BLOB PRIMARY KEY,"
    " unit TEXT NOT NULL,"
    " checksum INTEGER NOT NULL,"
    " size INTEGER NOT NULL,"
    " created REAL NOT NULL,"
    " accessed REAL NOT NULL,"
    " payload BLOB NOT NULL)"
)
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    _ENTRIES,
)
_ACCESSED_INDEX: Final = "CREATE INDEX IF NOT EXISTS entries_accessed ON entries (accessed)"
# The page size of a new store (SQLite's default is 4 KiB): a commit writes each page it
# changed with one system call, and a batch of small rows changes about as many pages of the
# key's index whatever their size; 16 KiB pages take a fifth less CPU per row.
_PAGE_SIZE: Final = 16384


# Upgrading a version 1 or 2 store, a few rows at a time (by rowid): payloads up to
# _UPGRADE_ENTRY_BYTES come with their row, larger ones are read (and copied) one by one.
_UPGRADE_CHUNK: Final = 256
_UPGRADE_ENTRY_BYTES: Final = 16 << 10
_UPGRADE_QUERY: Final = (
    "SELECT rowid, key, unit, CASE WHEN size <= ? THEN payload END, checksum, size, created,"
    " accessed FROM entries_old WHERE rowid > ? ORDER BY rowid LIMIT ?"
)


def _old_checksum_holds(version: str, key: object, payload: object, stored: object) -> bool:
    """Whether an entry of a version 1 or 2 store is intact, by that version's checksum."""
    if not (isinstance(key, bytes) and isinstance(payload, bytes)):
        return False
    if version == "1":  # BLAKE2b-128 of key || payload
        hasher = hashlib.blake2b(key, digest_size=16)
        hasher.update(payload)  # not key + payload: no copy of a large payload
        return hasher.digest() == stored
    return checksum(key, payload).to_bytes(4, "big") == stored


def _upgrade(connection: sqlite3.Connection, version: str) -> None:
    """Turn a version 1 or 2 store into this version, in the caller's transaction.

    Both differed in their checksum (version 1: BLAKE2b-128 of key || payload; version 2:
    the CRC-32 as 4 bytes) and had an index on ``unit``. The table is made anew: each entry
    whose old checksum holds is copied with this version's, a damaged one is dropped (it is
    recomputed when needed), so an upgrade keeps every valid result. A process of an older
    library still writing to the file afterwards writes checksums that read here as damage:
    its entries are recomputed, never served wrong. The store is read a few rows at a time:
    it may hold more than the memory.
    """
    connection.execute("ALTER TABLE entries RENAME TO entries_old")
    connection.execute(_ENTRIES)
    kept = damaged = 0
    last = -1 << 63
    while rows := connection.execute(
        _UPGRADE_QUERY, (_UPGRADE_ENTRY_BYTES, last, _UPGRADE_CHUNK)
    ).fetchall():
        small = []
        for rowid, key, unit, inline, stored, size, created, accessed in rows:
            payload = inline
            if payload is None:  # large (or not a blob): read alone
                (payload,) = connection.execute(
                    "SELECT payload FROM entries_old WHERE rowid = ?", (rowid,)
                ).fetchone()
            if not _old_checksum_holds(version, key, payload, stored):
                damaged += 1
                continue
            kept += 1
            row = (key, unit, payload, checksum(key, payload), size, created, accessed)
            if inline is None:
                connection.execute(_INSERT, row)  # at once: not kept in memory
            else:
                small.append(row)
            del payload, row
        connection.executemany(_INSERT, small)
        last = rows[-1][0]
        del rows, small
    connection.execute("DROP TABLE entries_old")  # and its indexes
    connection.execute(
        "UPDATE meta SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION),)
    )
    LOGGER.info(
        "cache store: upgraded from format version %s to %d (%d entries kept, %d damaged dropped)",
        version,
        FORMAT_VERSION,
        kept,
        damaged,
    )


def _intact(key: bytes, payload: object, stored: object) -> bool:
    """Whether a row read from the file holds a payload whose checksum matches."""
    return isinstance(payload, bytes) and checksum(key, payload) == stored


def _storable(name: str) -> bool:
    """Whether SQLite can store ``name``, as UTF-8 (a lone surrogate cannot be)."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checksum(key: bytes, payload: bytes) -> int:
    """The checksum stored beside a payload: CRC-32 of the key and the payload.

    It guards against damage (bit rot, a torn write, a hand edit), not against whoever may
    write the file: they can make it run code anyway (results are pickles).
    """
    return zlib.crc32(payload, zlib.crc32(key))


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
        write_errors: How many results a deferred write failed to store after ``put``
            returned (logged; they are recomputed when next needed).

    .. versionadded:: 0.1
    """

    size_limit: int | None = None
    corrupt: int = 0
    write_errors: int = 0

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

    def prefetch(self, keys: Collection[bytes]) -> None:  # noqa: B027 - optional hook
        """A hint before a run: these keys are about to be looked up.

        A store may read them in bulk now, so that each ``get`` is served from memory
        (until the next :meth:`flush`). It must still never return a payload other than the
        one ``put`` stored under that key.
        """

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


# A MemoryStore entry: (unit, payload, created, accessed). A plain tuple of a str, a bytes
# and two floats, not an object with attributes: the garbage collector stops tracking such
# a tuple the first time it sees it, where ten thousand entry objects alive for the life of
# the store were traversed by every full collection (and set them going: a tenth of what
# caching a no-op unit costs). A read replaces the tuple (its time changes).
_MemoryEntry = tuple[str, bytes, float, float]


# The MemoryStores of this process, for _note_fork.
_MEMORY_STORES: weakref.WeakValueDictionary[int, MemoryStore] = weakref.WeakValueDictionary()


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
        _MEMORY_STORES[id(self)] = self  # by id: a subclass need not be hashable

    def _new_locks(self) -> None:
        """In a forked child: a lock of its own (see _note_fork)."""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        """Count the entries."""
        return f"MemoryStore(entries={len(self)}, size_limit={self.size_limit})"

    def get(self, key: bytes) -> bytes | None:
        """The payload under ``key``, now the most recently used, or None.

        A miss (every lookup of a cold run) takes no lock: a single dict lookup is atomic,
        and one that races a put of the same key is a lookup made just before it.
        """
        if key not in self._entries:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            unit, payload, created, _ = entry
            self._entries[key] = (unit, payload, created, time.time())
            self._entries.move_to_end(key)
            return payload

    def put(self, key: bytes, unit: str, payload: bytes) -> None:
        """Store ``payload``; evict least recently used entries over the size limit."""
        limit = self.size_limit
        if limit is not None and len(payload) > limit:
            return  # it would evict everything and still not fit
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._total -= len(old[1])
            now = time.time()
            self._entries[key] = (unit, payload, now, now)
            self._total += len(payload)
            if limit is not None:
                while self._total > limit:
                    _, evicted = self._entries.popitem(last=False)
                    self._total -= len(evicted[1])

    def discard(self, key: bytes, *, corrupt: bool = False) -> None:
        """Delete the entry under ``key``, if any."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._total -= len(entry[1])
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
            keys = [key for key, entry in self._entries.items() if entry[0] == unit]
            for key in keys:
                self._total -= len(self._entries.pop(key)[1])
            return len(keys)

    def entries(self, unit: str | None = None) -> list[CacheEntry]:
        """Every entry (or ``unit``'s), most recently used first."""
        with self._lock:
            return [
                CacheEntry(name, key.hex(), len(payload), created, accessed)
                for key, (name, payload, created, accessed) in reversed(self._entries.items())
                if unit is None or name == unit
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


# Primary SQLite result codes of a lock held by another connection: SQLITE_BUSY, SQLITE_LOCKED.
_LOCK_ERRORS: Final = frozenset({5, 6})


def _path_problem(error: sqlite3.Error) -> str | None:
    """Why SQLite could not use the file, if ``error`` says it is the path's fault."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else _PATH_ERRORS.get(code & 0xFF)


def _locked(error: sqlite3.Error) -> bool:
    """Whether ``error`` is SQLite's "database is locked" (SQLITE_BUSY or SQLITE_LOCKED)."""
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _LOCK_ERRORS


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


_SQLITE_HEADER: Final = b"SQLite format 3\0"


def _is_sqlite_file(path: Path) -> bool:
    """Whether the file at ``path`` (not a link) starts as every SQLite database does."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return os.read(fd, len(_SQLITE_HEADER)) == _SQLITE_HEADER
    finally:
        os.close(fd)


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


def _check_timeout(timeout: float) -> float:
    # Checked here: sqlite3 and the busy_timeout pragma turn a NaN or an infinite wait into
    # "cannot convert float NaN to integer" or an OverflowError that do not name it.
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"SQLiteStore: timeout must be a number of seconds, got {timeout!r}")
    if not 0 <= timeout < math.inf:
        raise ValueError(f"SQLiteStore: timeout must be >= 0 and finite, got {timeout!r}")
    return timeout


class SQLiteStore(CacheStore):
    """Entries in a SQLite file shared by runs, processes and restarts.

    See the module docstring for the guarantees (atomic checksummed entries, WAL, versioned
    format, owner-only file, LRU eviction).

    Args:
        path: The database file; created (mode 0o600, parent directories too) if missing.
            Not a symbolic link. A relative path is taken from the working directory now.
        size_limit: Bytes of payload to keep at most, or None for no limit.
        timeout: Seconds a writer waits for another process's write lock (finite, >= 0).

    Raises:
        TypeError: ``timeout`` is not a number.
        ValueError: The file is not a quantum-partitioner cache, or of another format
            version, or ``path`` is a symbolic link, or ``timeout`` is negative, NaN or
            infinite.
        OSError: ``path`` is a directory, or cannot be created, read or written (the
            message names it).
        TimeoutError: Another connection held the file's write lock for longer than
            ``timeout`` (a long write, or an upgrade by another process).

    Warns:
        InsecureCacheWarning: The file exists and its group or others may write it.

    .. versionadded:: 0.1
    """

    def __init__(
        self, path: str | os.PathLike[str], size_limit: int | None = None, *, timeout: float = 30.0
    ) -> None:
        """Open (or create) the store and check its format."""
        # Absolute, not resolved (a link is refused, not followed): a connection opened
        # later (a forked child's) must open this file whatever the working directory then.
        self.path = Path(path).absolute()
        self.size_limit = _check_limit(size_limit)
        self.corrupt = 0
        self.timeout = _check_timeout(timeout)
        self._lock = threading.RLock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = -1
        # Keys read since the read times were last written; they are stamped when written.
        self._touched: list[bytes] = []
        # Set (under _queue_mutex) when the writer thread is to write the read times.
        self._touches_due = False
        # True while the writer thread commits a batch of results (see flush).
        self._committing = False
        # Queued writes, key -> payload and key -> unit (two dicts, not a tuple per write:
        # objects that live until the commit are what sets the garbage collector going),
        # and the writer thread; guarded by
        # _queue_mutex, which is never held while taking _lock (the writer takes _lock
        # first, then it), and only for a few operations on them.
        self._queued: dict[bytes, bytes] = {}
        self._queued_units: dict[bytes, str] = {}
        self._queue_mutex = threading.Lock()
        self._writer: threading.Thread | None = None
        # The checkpointer thread (see _CHECKPOINT_ROWS), whether it is due to checkpoint
        # (both under _queue_mutex), what wakes it, rows committed since it was last asked
        # (the writer's), and its connection (a list, for a forked child: see _connection).
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_due = False
        self._checkpoint_wake = threading.Event()
        # Held by the checkpointer while it is inside SQLite, and by a fork meanwhile.
        self._checkpoint_lock = threading.Lock()
        self._uncheckpointed = 0
        self._checkpoint_connections: list[sqlite3.Connection] = []
        self._stopping_checkpoints = False
        # Wakes the writer thread. Not a Condition on _queue_mutex: a thread woken from a
        # Condition holds its lock while it waits for the GIL, and every write behind it
        # waits too (with the run's threads holding the GIL, for milliseconds).
        self._wake = threading.Event()
        self.write_errors = 0
        self._known_total: int | None = None
        self._summed_version = -1  # PRAGMA data_version when _known_total was summed
        self._indexed = False  # the index on accessed is known to exist (see _evict)
        self._unchecked = 0
        # What prefetch found: key -> its payload, checked, or None when the payload was left
        # to be read at the lookup; and the keys it asked for and did not find. (Payloads,
        # not (payload, checksum) tuples: ten thousand objects kept for the length of a run
        # would set the garbage collector going a dozen times.)
        self._prefetched: dict[bytes, bytes | None] = {}
        self._absent: set[bytes] = set()
        self._finalizer = weakref.finalize(self, _close_quietly, self._connections)
        # At exit _close_live_stores closes the store, under its lock: the finalizer must
        # not close the connection under the writer thread's feet first.
        self._finalizer.atexit = False
        self._connection()
        _LIVE_STORES.add(self)

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
            _INHERITED.extend(self._checkpoint_connections)
            self._connections.clear()
            self._checkpoint_connections = []
            self._checkpointer = None
            self._checkpoint_due = False
            self._uncheckpointed = 0
            self._touched.clear()
            self._forget_prefetched()
            # The parent commits its own queue; the child has no writer thread.
            self._queued = {}
            self._queued_units = {}
            self._writer = None
        checked = _open_private_file(self.path)
        if checked.st_size and not _is_sqlite_file(self.path):
            # SQLite itself would take a file of one byte for an empty database, and write one.
            raise ValueError(
                f"{str(self.path)!r} is not a quantum-partitioner cache store (it is not a "
                "SQLite database); use another cache_path"
            )
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
        self._opened = checked  # the file the checkpointer must find at the path too
        self._pid = os.getpid()
        self._summed_version = -1  # each connection counts its own data versions
        return connection

    def _new_locks(self) -> None:
        """In a forked child: locks of its own (see _note_fork)."""
        self._lock = threading.RLock()
        self._queue_mutex = threading.Lock()
        self._wake = threading.Event()
        self._checkpoint_wake = threading.Event()
        self._checkpoint_lock = threading.Lock()

    def _prepare(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            # Before anything is written: switching to WAL is a lasting change to the file.
            self._stored_version(connection)
            # Only a new (empty) file takes it: an existing one keeps its page size.
            connection.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            self._enable_wal(connection)
            connection.execute("PRAGMA synchronous = NORMAL")
            # A statement of many rows inside a transaction keeps a statement journal (to
            # undo that statement alone); past 64 KiB SQLite spills it to a temporary file,
            # written and read back for every large insert: a third of the insert's CPU.
            connection.execute("PRAGMA temp_store = MEMORY")
            connection.execute("BEGIN IMMEDIATE")
            try:
                self._check_or_create(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            if _path_problem(error) is not None:
                raise self._unusable(error) from error
            if _locked(error):  # a store, another connection's write under way too long
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    "cannot open the cache store: it stayed locked by another connection's "
                    f"write for longer than timeout ({self.timeout:g} s)",
                    str(self.path),
                ) from error
            raise ValueError(
                f"{str(self.path)!r} is not a quantum-partitioner cache store ({error})"
            ) from error

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

    def _stored_version(self, connection: sqlite3.Connection) -> str | None:
        """The file's format version (None: a new file), if it is one this version reads.

        A store has a ``meta`` table with its format version from the transaction that made
        it; a ``meta`` table without one is another application's.

        Raises:
            ValueError: The file is a SQLite database other than a store, or a store of a
                format version other than 1, 2 or 3.
        """
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            return None
        row = None
        if "meta" in tables:
            with contextlib.suppress(sqlite3.OperationalError):  # a meta of another shape
                query = "SELECT value FROM meta WHERE key = 'format_version'"
                row = connection.execute(query).fetchone()
        if row is None:
            raise ValueError(
                f"{str(self.path)!r} is a SQLite database but not a quantum-partitioner cache "
                f"store (it has tables {sorted(tables)}); use another cache_path"
            )
        version = str(row[0])
        if version not in {"1", "2", str(FORMAT_VERSION)}:
            raise ValueError(
                f"cache store {str(self.path)!r} has format version {version}; this version of "
                f"quantum-partitioner reads version {FORMAT_VERSION}. Use another cache_path, "
                "or delete the file (its results will be recomputed)."
            )
        return version

    def _check_or_create(self, connection: sqlite3.Connection) -> None:
        # Again, in the write transaction: another process may have made it meanwhile.
        version = self._stored_version(connection)
        for statement in _SCHEMA:  # (a table dropped by hand is made again)
            connection.execute(statement)
        if version is None:
            connection.execute(
                "INSERT INTO meta (key, value) VALUES ('format_version', ?)",
                (str(FORMAT_VERSION),),
            )
        elif version in {"1", "2"}:
            _upgrade(connection, version)
        if self.size_limit is not None:
            self._index_for_eviction(connection)

    def _index_for_eviction(self, connection: sqlite3.Connection) -> None:
        """Make the index on ``accessed`` that eviction reads, if no store made it yet.

        A store with a size limit makes it when it opens (so that the time goes there, not
        into a run), or at its first eviction if the limit was set afterwards. Once made,
        every process's writes keep it up to date.
        """
        if not self._indexed:
            connection.execute(_ACCESSED_INDEX)
            self._indexed = True

    # -- entries ---------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The payload under ``key`` if its checksum matches, else None (and it is dropped).

        What is queued or prefetched is served without the lock (single dict and set
        operations are atomic); only a query takes it, so a commit under way delays only
        the lookups that need the file.
        """
        queued = self._queued.get(key)
        if queued is not None:
            return queued
        if key in self._absent:
            return None
        payload = self._prefetched.pop(key, None)  # checked by prefetch
        if payload is None:
            with self._lock:
                row = (
                    self._connection()
                    .execute("SELECT payload, checksum FROM entries WHERE key = ?", (key,))
                    .fetchone()
                )
            if row is None:
                return None
            payload, stored = row
            if not _intact(key, payload, stored):
                self._drop_damaged(key)
                return None
        touched = self._touched
        touched.append(key)
        if len(touched) >= _TOUCH_BATCH:
            self._hand_touches_over()
        return payload

    def _drop_damaged(self, key: bytes) -> None:
        LOGGER.warning(
            "cache store %s: entry %s is damaged (checksum mismatch); it will be recomputed",
            self.path,
            key.hex(),
        )
        self.discard(key, corrupt=True)
        self._absent.add(key)

    def prefetch(self, keys: Collection[bytes]) -> None:
        """Read the entries under ``keys`` in bulk (see "Bulk reads" in the module docstring).

        A failure is logged and forgotten: the lookups then read one by one.
        """
        with self._lock:
            try:
                self._prefetch(keys)
            except (sqlite3.Error, OSError, ValueError) as error:
                LOGGER.warning("cache store %s: could not read ahead: %s", self.path, error)
                self._forget_prefetched()

    def _prefetch(self, keys: Collection[bytes]) -> None:
        connection = self._connection()
        prefetched, absent = self._prefetched, self._absent
        # (A run's first read ahead, the common case, finds nothing read yet: a copy.)
        wanted = [key for key in keys if key not in prefetched] if prefetched else list(keys)
        if not wanted:
            return
        budget = _PREFETCH_BYTES - sum(len(payload) for payload in prefetched.values() if payload)
        damaged: list[bytes] = []
        if len(wanted) >= _PREFETCH_CHUNK:
            (count,) = connection.execute("SELECT COUNT(*) FROM entries").fetchone()
            if count == 0:  # a new store: every key is a miss
                absent.update(wanted)
                return
            if count <= _SCAN_RATIO * len(wanted):
                wanted, budget = self._scan(connection, wanted, budget, damaged)
        for start in range(0, len(wanted), _PREFETCH_CHUNK):
            chunk = wanted[start : start + _PREFETCH_CHUNK]
            # Marked missing once the query says so, not before: a lookup on another thread
            # (another run on this store) reads _absent meanwhile, without the lock.
            missing = set(chunk)
            largest = max(0, min(_PREFETCH_ENTRY_BYTES, budget))
            placeholders = ",".join("?" * len(chunk))
            rows = connection.execute(_PREFETCH_QUERY.format(placeholders), (largest, *chunk))
            for key, payload, stored in rows:
                missing.discard(key)
                if payload is None:
                    prefetched[key] = None  # present, but read when looked up
                elif _intact(key, payload, stored):
                    prefetched[key] = payload
                    budget -= len(payload)
                else:
                    damaged.append(key)
            absent.update(missing)
        for key in damaged:  # once no query is under way
            self._drop_damaged(key)

    def _scan(
        self, connection: sqlite3.Connection, wanted: list[bytes], budget: int, damaged: list[bytes]
    ) -> tuple[list[bytes], int]:
        """Read the whole table, keeping the rows ``wanted``; return those left, and the budget.

        Left: the wanted keys found with a payload the scan did not read (over
        ``_SCAN_ENTRY_BYTES``), for the keyed reads to decide about. The keys of damaged
        entries are added to ``damaged``.

        The rows come a few hundred at a time (never the whole store in memory at once). A
        chunk of small payloads within the budget (a warm run's, row after row) is checked
        and kept in C loops, one pass per column instead of a Python loop per row; any other
        chunk goes row by row.
        """
        prefetched = self._prefetched
        looking = set(wanted)
        left: list[bytes] = []
        crc32 = zlib.crc32
        cursor = connection.execute(_SCAN_QUERY, (_SCAN_ENTRY_BYTES,))
        while rows := cursor.fetchmany(_PREFETCH_CHUNK):
            keys, sizes, payloads, stored = zip(*rows, strict=True)
            if set(map(type, payloads)) == _BYTES_ONLY and sum(sizes) <= budget:
                wanted_here = list(map(looking.__contains__, keys))
                intact = list(map(operator.eq, map(crc32, payloads, map(crc32, keys)), stored))
                kept = list(map(operator.and_, wanted_here, intact))
                prefetched.update(itertools.compress(zip(keys, payloads, strict=True), kept))
                budget -= sum(itertools.compress(sizes, kept))
                if not all(intact):
                    checked = zip(keys, wanted_here, intact, strict=True)
                    damaged.extend(key for key, want, ok in checked if want and not ok)
                continue
            for key, size, payload, check in rows:
                if key not in looking:
                    continue
                if payload is None:
                    left.append(key)
                elif size > budget:
                    prefetched[key] = None  # present, but read when looked up
                elif type(payload) is bytes and crc32(payload, crc32(key)) == check:  # _intact
                    prefetched[key] = payload
                    budget -= size
                else:
                    damaged.append(key)
        # Marked missing after the scan, not before (see _prefetch): what it did not find.
        self._absent.update(looking.difference(prefetched, left, damaged))
        return left, budget

    def _forget_prefetched(self) -> None:
        self._prefetched = {}
        self._absent = set()

    def put(self, key: bytes, unit: str, payload: bytes) -> None:
        """Queue the entry for the writer thread, which commits it within 10 ms (group commit).

        A commit that fails later is logged and counted in ``write_errors``; the entries of
        that batch are recomputed by the next run that needs them.

        Raises:
            UnicodeEncodeError: ``unit`` cannot be written as UTF-8 (a lone surrogate).
        """
        limit = self.size_limit
        if limit is not None and len(payload) > limit:
            return  # it would evict everything and still not fit
        if not unit.isascii():
            # Refused here, not when its batch commits: SQLite stores names as UTF-8, and
            # one it cannot (a lone surrogate, from os.fsdecode) would fail the whole batch.
            unit.encode("utf-8")
        if self._pid != _this_process:
            with self._lock:
                self._connection()  # a forked child: its own connection and queue first
        # Its checksum and time are the writer's work (see _insert), and so is taking its key
        # out of what prefetch found missing (see _commit_queued).
        with self._queue_mutex:
            queued = self._queued
            queued[key] = payload
            self._queued_units[key] = unit
            count = len(queued)
            writer = self._writer
            if writer is None:
                writer = self._writer = self._new_writer()
                count = 0
        if count == 0:  # started outside the lock: start() waits for the thread
            writer.start()
        elif count in {1, _COMMIT_BATCH}:  # the first write of a batch, or a full one
            self._wake.set()

    def _write_queued(self) -> None:
        """The writer thread: commit whatever is queued, again and again (group commit).

        The first write of a batch waits up to ``_COMMIT_DELAY`` for others (until
        ``_COMMIT_BATCH`` are queued), and writes that arrive while a transaction commits
        wait for the next one: a burst of short units shares a few transactions. A daemon,
        so that it never delays the interpreter's exit (``_close_live_stores`` commits the
        last batch then); it ends once no write came for ``_WRITER_LINGER`` seconds.
        """
        wake = self._wake
        while True:
            if not (self._queued or self._touches_due):
                wake.wait(_WRITER_LINGER)
                with self._queue_mutex:
                    if not (self._queued or self._touches_due):
                        self._writer = None
                        return
            # Cleared before the count is read: a batch filled after it sets it again.
            wake.clear()
            if 0 < len(self._queued) < _COMMIT_BATCH:
                wake.wait(_COMMIT_DELAY)  # let a burst gather (a full batch wakes it)
            self._commit_queued()
            if self._uncheckpointed >= _CHECKPOINT_ROWS:
                self._request_checkpoint()
            if self._touches_due:
                self._touches_due = False
                self._write_touches()

    def _new_writer(self) -> threading.Thread:
        """The writer thread, not started yet (the caller holds ``_queue_mutex``)."""
        return threading.Thread(
            target=self._write_queued, name="quantum-partitioner cache writer", daemon=True
        )

    def _hand_touches_over(self) -> None:
        """Have the writer thread write the batched read times (hints: nobody waits)."""
        if self._pid != os.getpid():
            return  # a forked child writes its read times when it flushes or closes
        with self._queue_mutex:
            if self._touches_due:
                return
            self._touches_due = True
            writer = self._writer
            start = writer is None
            if writer is None:
                writer = self._writer = self._new_writer()
        if start:
            writer.start()
        else:
            self._wake.set()

    def _commit_queued(self) -> None:
        """Commit every queued write in one transaction, then evict over the size limit."""
        with self._lock:
            with self._queue_mutex:
                # Marked before the swap: whoever sees the queue empty sees the mark too.
                self._committing = bool(self._queued)
                # Not missing any more, before they leave the queue (get looks there first):
                # one set operation per batch instead of one per put.
                self._absent.difference_update(self._queued)
                batch, self._queued = self._queued, {}
                units, self._queued_units = self._queued_units, {}
            if not batch or self._pid != os.getpid():
                self._committing = False
                return
            try:
                connection = self._connection()
                with _Transaction(connection):
                    limit = self.size_limit
                    if limit is None:
                        _insert(connection, batch, units)
                    else:
                        added = sum(map(len, batch.values()))
                        replaced = self._replaced_size(connection, batch, limit, added)
                        _insert(connection, batch, units)
                        self._evict(connection, limit, next(reversed(batch)), added, replaced)
                self._uncheckpointed += len(batch)
            except Exception as error:  # any: the writer thread must live on (out of memory)
                self.write_errors += len(batch)
                LOGGER.warning(
                    "cache store %s: could not write %d results (they will be recomputed): %s",
                    self.path,
                    len(batch),
                    error,
                )
            finally:
                self._committing = False

    def _replaced_size(
        self, connection: sqlite3.Connection, batch: dict[bytes, bytes], limit: int, added: int
    ) -> int | None:
        """The payload bytes the batch replaces, when they decide whether it fits (in a write).

        Only when the total is known exactly (summed, or kept since, with no write of
        another process in between) and the batch may take it over the limit: the batch's
        keys are read, a few hundred per query, instead of the whole store's sizes (at the
        limit, every commit would sum them: linear in the store's rows). None otherwise.
        """
        known = self._known_total
        if known is None or self._unchecked or known + added <= limit:
            return None
        (version,) = connection.execute("PRAGMA data_version").fetchone()
        if version != self._summed_version:
            return None
        keys = list(batch)
        replaced = 0
        for start in range(0, len(keys), _PREFETCH_CHUNK):
            chunk = keys[start : start + _PREFETCH_CHUNK]
            query = _REPLACED_QUERY.format(",".join("?" * len(chunk)))
            (size,) = connection.execute(query, chunk).fetchone()
            replaced += size
        return replaced

    def _evict(
        self,
        connection: sqlite3.Connection,
        limit: int,
        keep: bytes,
        added: int,
        replaced: int | None,
    ) -> None:
        """Delete least recently used entries while the store is over ``limit`` (in a write).

        With ``replaced`` (see _replaced_size) the total is exact without reading the store.
        Otherwise it is summed only when the running estimate (which counts a replaced
        entry twice) says it may be over the limit, or another connection (process) changed
        the file since it was last summed: SQLite's ``data_version`` tells, without reading
        the file. Once summed, the total is kept exact through the evictions that follow.
        """
        if replaced is not None:
            assert self._known_total is not None  # (what gave a replaced size)
            total = self._known_total + added - replaced
            if total <= limit:
                self._known_total = total
                return
            self._apply_touches(connection)
        else:
            self._unchecked += added
            (version,) = connection.execute("PRAGMA data_version").fetchone()
            if (
                self._known_total is not None
                and self._known_total + self._unchecked <= limit
                and version == self._summed_version
            ):
                return
            self._summed_version = version
            self._apply_touches(connection)
            (total,) = connection.execute(_TOTAL_QUERY).fetchone()
        if total > limit:
            self._index_for_eviction(connection)  # the limit may have been set after opening
            doomed = []
            # rowid: the order of writes (each row is appended), among entries last used at
            # the same time (a batch's). Not ``created`` as well: the index on accessed holds
            # rowids in order, created would have every such group sorted first.
            for key, size in connection.execute(
                "SELECT key, size FROM entries WHERE key != ? ORDER BY accessed, rowid",
                (keep,),
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
            self._prefetched.pop(key, None)
            with self._queue_mutex:
                self._queued.pop(key, None)
                self._queued_units.pop(key, None)
            connection = self._connection()
            with _Transaction(connection):
                connection.execute("DELETE FROM entries WHERE key = ?", (key,))
            self._known_total = None  # summed again when a write may take it over the limit

    def clear(self, unit: str | None = None) -> int:
        """Delete every entry, or ``unit``'s; return how many."""
        if unit is not None and not _storable(unit):
            return 0  # put refuses such a name: it has no entries
        with self._lock:
            self._commit_queued()  # so that they are counted and deleted with the others
            self._forget_prefetched()
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
        if unit is not None and not _storable(unit):
            return []  # put refuses such a name: it has no entries
        self._write_everything()
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
            self._commit_queued()
            (count,) = self._connection().execute("SELECT COUNT(*) FROM entries").fetchone()
        return int(count)

    def total_size(self) -> int:
        """Bytes of payload stored."""
        with self._lock:
            self._commit_queued()
            (total,) = self._connection().execute(_TOTAL_QUERY).fetchone()
        return int(total)

    # -- batched read times ----------------------------------------------------------------

    def _apply_touches(self, connection: sqlite3.Connection) -> None:
        """Write the batched read times (inside a write transaction)."""
        if self._touched:
            # Swapped, not cleared: lookups add read keys without the lock meanwhile. They
            # are stamped now, one time for the batch (at most a run, or _TOUCH_BATCH reads,
            # after the read): the LRU order needs no finer one, and a hit no clock read.
            touched, self._touched = self._touched, []
            now = time.time()
            # A few hundred keys per statement, not a (time, key) row each: fewer hand-overs
            # of the GIL, and no tuple per read (ten thousand of them, alive at once, set the
            # garbage collector going a dozen times in the threads of the run under way).
            keys = [bytearray(key) for key in dict.fromkeys(touched)]  # see _COPY_BYTES
            for start in range(0, len(keys), _PREFETCH_CHUNK):
                chunk = keys[start : start + _PREFETCH_CHUNK]
                connection.execute(_TOUCH_QUERY.format(",".join("?" * len(chunk))), [now, *chunk])

    def _flush_touches(self, connection: sqlite3.Connection) -> None:
        try:
            with _Transaction(connection):
                self._apply_touches(connection)
        except Exception as error:  # read times are a hint: never fail a lookup for them
            LOGGER.warning("cache store %s: could not record read times: %s", self.path, error)
            self._touched = []

    def flush(self) -> None:
        """Commit the queued writes; drop what prefetch read; hand the read times over.

        The results are committed before it returns (at the end of a run, what completed
        is in the file); the read times, hints for the LRU order, are written by the writer
        thread meanwhile, or by :meth:`close` or the next listing, whichever comes first.
        """
        self._forget_prefetched()
        # The lock only when results wait or commit: not behind the writer's read times.
        if self._queued or self._committing:
            with self._lock:
                self._commit_queued()
        if self._uncheckpointed:
            self._request_checkpoint()  # what the run wrote, while the caller goes on
        if self._touched:
            self._hand_touches_over()

    def _write_touches(self) -> None:
        """Write the batched read times now."""
        with self._lock:
            if self._touched and self._pid == os.getpid() and self._connections:
                self._flush_touches(self._connections[-1])

    def _write_everything(self) -> None:
        """Commit the queued writes and write the read times, before returning."""
        with self._lock:
            self._forget_prefetched()
            self._commit_queued()
            self._write_touches()

    def close(self) -> None:
        """Write the queued results and read times, and close the connection.

        Closing the last connection to the file checkpoints what is left of the write-ahead
        log into it (see _CHECKPOINT_ROWS): once this returns, the file alone holds every
        result.
        """
        with self._lock:
            self._write_everything()
            self._stop_checkpoints()
            _close_quietly(self._connections)
            self._pid = -1

    # -- background checkpoints ------------------------------------------------------------

    def _request_checkpoint(self) -> None:
        """Have the checkpointer thread checkpoint the write-ahead log (nobody waits)."""
        self._uncheckpointed = 0
        if self._pid != _this_process or not self._connections:
            return  # a forked child (its close() checkpoints), or a store closed meanwhile
        with self._queue_mutex:
            if self._stopping_checkpoints:
                return
            self._checkpoint_due = True
            thread = self._checkpointer
            start = thread is None
            if thread is None:
                thread = self._checkpointer = threading.Thread(
                    target=self._checkpoint_loop,
                    name="quantum-partitioner cache checkpointer",
                    daemon=True,
                )
        if start:
            thread.start()
        else:
            self._checkpoint_wake.set()

    def _checkpoint_loop(self) -> None:
        """The checkpointer thread: checkpoint when asked; end after ``_WRITER_LINGER`` idle.

        A daemon, like the writer; ``close`` (also at exit) stops it and waits for the
        checkpoint under way, then closes the last connection, which checkpoints the rest.
        """
        wake = self._checkpoint_wake
        connections = self._checkpoint_connections
        try:
            while True:
                if not self._checkpoint_due:
                    wake.wait(_WRITER_LINGER)
                with self._queue_mutex:
                    if not self._checkpoint_due or self._stopping_checkpoints:
                        self._checkpointer = None
                        return
                    self._checkpoint_due = False
                    wake.clear()
                self._checkpoint(connections)
        finally:
            _close_quietly(connections)

    def _checkpoint(self, connections: list[sqlite3.Connection]) -> None:
        """One passive checkpoint, on the checkpointer's own connection (opened on first use).

        A failure is logged and forgotten: the log is checkpointed at close anyway.
        """
        with self._checkpoint_lock:  # never inside SQLite at a fork (see _hold_checkpoints)
            self._checkpoint_once(connections)

    def _checkpoint_once(self, connections: list[sqlite3.Connection]) -> None:
        try:
            if not connections:
                # Read-write, never created: a file deleted meanwhile is not made anew.
                uri = f"{self.path.as_uri()}?mode=rw"
                connection = sqlite3.connect(
                    uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False
                )
                connections.append(connection)
                connection.execute("PRAGMA schema_version")  # SQLite opens the file here
                _check_unchanged(self.path, self._opened)  # not a link swapped in since
            connections[-1].execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (sqlite3.Error, OSError, ValueError) as error:
            LOGGER.debug("cache store %s: background checkpoint failed: %s", self.path, error)
            _close_quietly(connections)

    def _stop_checkpoints(self) -> None:
        """Stop the checkpointer thread, after the checkpoint it may have under way."""
        with self._queue_mutex:
            thread = self._checkpointer
            self._stopping_checkpoints = True
        try:
            if thread is not None and thread is not threading.current_thread():
                self._checkpoint_wake.set()
                thread.join()
        finally:
            with self._queue_mutex:
                self._stopping_checkpoints = False
                self._checkpoint_due = False
            self._uncheckpointed = 0


_LIVE_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


@atexit.register
def _close_live_stores() -> None:
    """Commit what is still queued when the interpreter exits normally, and close."""
    for store in list(_LIVE_STORES):
        with contextlib.suppress(Exception):
            store.close()


def _insert(
    connection: sqlite3.Connection, batch: dict[bytes, bytes], units: dict[bytes, str]
) -> None:
    """Insert a batch of queued writes (key -> payload, key -> unit), up to 128 per statement.

    The entries are stamped with the time of their commit, all alike (a few milliseconds
    after their ``put`` at most): the order between batches is what eviction needs.

    The sqlite3 module lets go of the GIL while SQLite works, and takes it back after each
    statement: one statement per row (``executemany``) would have the writer thread wait
    for the GIL, and every thread of the run hand it over, once per row.
    """
    crc32 = zlib.crc32
    now = time.time()
    params: list[object] = []
    add = params.extend
    rows = 0
    left = len(batch)
    # The statement's size: 128 rows, or the largest power of two left (see _INSERTS).
    size = min(_ROWS_PER_INSERT, 1 << (left.bit_length() - 1))
    for key, payload in batch.items():
        value = bytearray(payload) if len(payload) <= _COPY_BYTES else payload
        check = crc32(payload, crc32(key))
        add((bytearray(key), units[key], value, check, len(payload), now, now))
        rows += 1
        if rows == size:
            connection.execute(_INSERTS[size], params)
            params.clear()
            left -= size
            rows = 0
            if left:
                size = min(_ROWS_PER_INSERT, 1 << (left.bit_length() - 1))


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
