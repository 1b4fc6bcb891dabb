"""The cache at its edges: files that are not stores, locks, sizes, shared stores, closures.

Real files and real processes throughout: a foreign database, a lock held by another
connection, a store shared by runs on several threads, an upgrade killed halfway; and
closures whose cells change after ``add_unit``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sqlite3
import subprocess
import sys
import threading
import time
import zlib

import pytest

from quantum_partitioner import (
    CachingQuantumPartitioner,
    ExecutionMode,
    MemoryStore,
    SQLiteStore,
    _fingerprint,
)

SEQUENTIAL = ExecutionMode.SEQUENTIAL
THREAD = ExecutionMode.THREAD


def _journal_mode(path):
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("PRAGMA journal_mode").fetchone()[0]


def _tables(path):
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


# -- files that are not stores ----------------------------------------------------------------


def test_a_database_refused_as_not_a_store_keeps_its_journal_mode(tmp_path):
    """Someone else's SQLite database is refused before anything changes it: its journal
    mode is not switched to WAL (a lasting change to the file), no -wal file is made."""
    path = tmp_path / "app.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE users (name TEXT)")
    path.chmod(0o600)
    with pytest.raises(ValueError, match=r"not a quantum-partitioner cache.*users"):
        SQLiteStore(path)
    assert _journal_mode(path) == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite"]


def test_a_database_with_a_meta_table_of_its_own_is_not_taken_for_a_store(tmp_path):
    """A database with a ``meta (key, value)`` table (a common name) but no format version
    in it is not a store: it is refused, and gets neither an ``entries`` table nor a
    version."""
    path = tmp_path / "app.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("INSERT INTO meta VALUES ('app', 'mine')")
        db.execute("CREATE TABLE users (name TEXT)")
    path.chmod(0o600)
    with pytest.raises(ValueError, match=r"not a quantum-partitioner cache.*meta.*users"):
        SQLiteStore(path)
    assert _tables(path) == {"meta", "users"}
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT * FROM meta").fetchall() == [("app", "mine")]
    assert _journal_mode(path) == "delete"


@pytest.mark.parametrize("content", [b"x", b"\n"])
def test_a_one_byte_file_is_refused_not_overwritten(tmp_path, content):
    """SQLite reads a file of one byte as an empty database; it is not one, and is left as
    it was (not made into a store)."""
    path = tmp_path / "notes"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ValueError, match="not a quantum-partitioner cache store"):
        SQLiteStore(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


# -- locks ------------------------------------------------------------------------------------


def test_a_store_locked_past_the_timeout_is_a_timeout_naming_it_not_a_foreign_file(tmp_path):
    """Opening a store while another connection holds its write lock longer than
    ``timeout`` raises TimeoutError naming the path and the timeout; it is a store, and
    the error must not say otherwise."""
    path = tmp_path / "c.sqlite"
    SQLiteStore(path).close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(TimeoutError, match=r"locked.*0\.2 s") as info:
            SQLiteStore(path, timeout=0.2)
        other.execute("ROLLBACK")
    assert info.value.filename == str(path)
    SQLiteStore(path, timeout=0.2).close()  # once the lock is let go, it opens


# -- one store, several runs at once --------------------------------------------------------


def test_a_lookup_during_another_run_s_read_ahead_finds_what_is_stored(tmp_path):
    """Partitioners may share a store and run at once: one run's read-ahead must never make
    an entry that is in the file look missing to another run's lookup on another thread
    while its query runs (a key is marked missing once the read says so, not before)."""
    key = b"k" * 32
    others = [i.to_bytes(32, "big") for i in range(1400)]
    with SQLiteStore(tmp_path / "c.sqlite") as store:
        for other in others[:1000]:
            store.put(other, "u", b"x")
        store.put(key, "u", b"payload")
        store.flush()
        seen = []  # what a lookup on another thread would see while each query runs

        def on_statement(statement):
            if statement.startswith("SELECT key"):
                seen.append(key in store._absent)

        store._connection().set_trace_callback(on_statement)
        store.prefetch([*others[1000:], key])  # by key: one IN query
        assert store.get(key) == b"payload"
        store.flush()
        store.prefetch([*others[:700], key])  # a scan of the whole table
        assert store.get(key) == b"payload"
        assert seen == [False, False]


def test_partitioners_sharing_a_store_serve_every_hit_while_running_at_once(tmp_path):
    """Eight partitioners on one SQLite store, running at once on threads, each find every
    result the first one stored."""
    path = tmp_path / "c.sqlite"

    def build(store):
        p = CachingQuantumPartitioner(cache_store=store, default_execution_mode=THREAD)
        for i in range(300):
            p.add_unit(lambda ctx, i=i: i, name=f"u{i}", metadata={"cacheable": True})
        return p

    with SQLiteStore(path) as store:
        build(store).execute()
        partitioners = [build(store) for _ in range(8)]
        threads = [threading.Thread(target=p.execute) for p in partitioners]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [(p.cache_stats().hits, p.cache_stats().misses) for p in partitioners] == [
            (300, 0)
        ] * 8


# -- eviction and listing cost ------------------------------------------------------------


def _plans(path, statements):
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {
            statement: " / ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + statement))
            for statement in statements
        }


def test_eviction_reads_the_least_recently_used_in_index_order_without_sorting(tmp_path):
    """Eviction at the size limit reads the oldest entries through the index on
    ``accessed`` as it stands: no sort of the entries (of a whole batch's, or of the whole
    store's when one read batch stamped them all) before the first is deleted."""
    path = tmp_path / "c.sqlite"
    with SQLiteStore(path, size_limit=100 * 100) as store:
        for i in range(300):  # one batch: all written (and last used) at one time
            store.put(i.to_bytes(32, "big"), "u", b"p" * 100)
        statements = []
        store._connection().set_trace_callback(statements.append)
        store.flush()
        assert len(store) == 100
    evicting = [s for s in statements if s.startswith("SELECT") and "ORDER BY" in s]
    assert evicting
    for statement, plan in _plans(path, evicting).items():
        assert "TEMP B-TREE" not in plan, (statement, plan)


def test_sizes_and_times_are_read_without_reading_the_payloads(tmp_path):
    """The payload is the table's last column: listing the entries, or the total size that
    eviction checks, reads none of the payloads (a large one lies in overflow pages that
    SQLite would read through to reach a column after it)."""
    path = tmp_path / "c.sqlite"
    with SQLiteStore(path) as store:
        for i in range(16):
            store.put(i.to_bytes(32, "big"), "u", os.urandom(1 << 20))
        store.flush()
        columns = [row[1] for row in store._connection().execute("PRAGMA table_info(entries)")]
        assert columns[-1] == "payload"

        def cpu(task):
            best = math.inf
            for _ in range(3):
                start = time.process_time()
                task()
                best = min(best, time.process_time() - start)
            return best

        connection = store._connection()
        reading_payloads = cpu(lambda: connection.execute("SELECT payload FROM entries").fetchall())
        listing = cpu(lambda: (store.entries(), store.total_size()))
    assert listing < reading_payloads / 10  # with the payload before them: two thirds


# -- an upgrade killed halfway ----------------------------------------------------------------

# A process that opens a store and is stopped halfway through its upgrade: once it has
# checked half the entries, it says so (the marker file) and waits to be killed.
_UPGRADE_STOPPED_HALFWAY = """
import sys, time
from quantum_partitioner import _stores
checked = 0
real = _stores._old_checksum_holds
def counting(*args):
    global checked
    checked += 1
    if checked == int(sys.argv[3]):
        open(sys.argv[2], "w").close()
        time.sleep(600)
    return real(*args)
_stores._old_checksum_holds = counting
_stores.SQLiteStore(sys.argv[1])
"""
_OPEN_AND_COUNT = """
import sys
from quantum_partitioner import SQLiteStore
with SQLiteStore(sys.argv[1], size_limit=int(sys.argv[2]) or None) as store:
    print(len(store), store.get((7).to_bytes(32, "big")) == b"7" * 100)
"""


def test_an_upgrade_killed_halfway_is_done_again_by_the_next_opener_keeping_every_entry(
    tmp_path,
):
    """An upgrade from version 2 is one transaction: a process killed (-9) halfway leaves
    the file as it was, and the next openers (two processes at once, one with a size
    limit) upgrade it once, keeping every entry."""
    path = tmp_path / "c.sqlite"
    path.touch(mode=0o600)
    count = 600
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE entries (key BLOB PRIMARY KEY, unit TEXT NOT NULL, payload BLOB NOT"
            " NULL, checksum BLOB NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL,"
            " accessed REAL NOT NULL)"
        )
        db.execute("CREATE INDEX entries_unit ON entries (unit)")
        db.execute("INSERT INTO meta VALUES ('format_version', '2')")
        for i in range(count):
            key, payload = i.to_bytes(32, "big"), b"%d" % i * 100
            stored = zlib.crc32(payload, zlib.crc32(key)).to_bytes(4, "big")
            db.execute(
                "INSERT INTO entries VALUES (?, 'u', ?, ?, ?, 1.0, 1.0)",
                (key, payload, stored, len(payload)),
            )
    marker = tmp_path / "halfway"
    upgrading = subprocess.Popen(
        [sys.executable, "-c", _UPGRADE_STOPPED_HALFWAY, str(path), str(marker), str(count // 2)]
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert upgrading.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        upgrading.kill()
        upgrading.wait()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("2",)
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_AND_COUNT, str(path), limit],
            stdout=subprocess.PIPE,
            text=True,
        )
        for limit in ("0", "1000000000")
    ]
    outputs = [opener.communicate(timeout=120)[0] for opener in openers]
    assert [opener.returncode for opener in openers] == [0, 0]
    assert outputs == [f"{count} True\n"] * 2
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("3",)
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert indexes >= {"entries", "entries_accessed"}  # made by the opener with a limit
    assert not indexes & {"entries_old", "entries_unit"}


# -- payload sizes -----------------------------------------------------------------------------


def test_payloads_around_the_copy_bound_and_the_page_size_are_stored_whole(tmp_path):
    """Payloads up to 4 KiB are bound as copies, larger ones as they are; 16 KiB is the page
    size, and the read-ahead scan leaves out those over it: each size is read back whole,
    by key, read ahead by key and read ahead by a scan."""
    sizes = [0, 1, 4095, 4096, 4097, 16383, 16384, 16385, 1 << 20]
    payloads = {i.to_bytes(32, "big"): os.urandom(size) for i, size in enumerate(sizes)}
    absent = [os.urandom(32) for _ in range(600)]
    with SQLiteStore(tmp_path / "c.sqlite") as store:
        for key, payload in payloads.items():
            store.put(key, "u", payload)
        store.flush()
        for ahead in ([], list(payloads), [*payloads, *absent]):  # none, by key, a scan
            store.prefetch(ahead)
            assert {key: store.get(key) for key in payloads} == payloads
            store.flush()
        assert sorted(entry.size for entry in store.entries()) == sizes
        assert store.corrupt == 0


# -- counters and the writer thread ------------------------------------------------------------


def test_counters_are_exact_with_many_threads(tmp_path):
    """64 threads looking up and writing at once: every hit, miss and write counted once."""
    with SQLiteStore(tmp_path / "c.sqlite") as store:
        p = CachingQuantumPartitioner(64, THREAD, cache_store=store)
        for i in range(500):
            p.add_unit(lambda ctx, i=i: i, name=f"u{i}", metadata={"cacheable": True})
        first = p.execute()
        assert first == {f"u{i}": i for i in range(500)}
        assert p.execute() == first
        stats = p.cache_stats()
    assert (stats.hits, stats.misses, stats.writes, stats.entries) == (500, 500, 500, 500)


def test_a_run_that_raises_leaves_every_completed_result_in_the_file(tmp_path):
    """A run that fails keeps what completed: committed when it ends, failure or not; a
    store closed twice, the first time from another thread, has written everything."""
    path = tmp_path / "c.sqlite"
    store = SQLiteStore(path)
    p = CachingQuantumPartitioner(8, THREAD, cache_store=store)
    for i in range(100):
        p.add_unit(lambda ctx, i=i: i, name=f"u{i}", metadata={"cacheable": True})

    def fails(ctx):
        raise RuntimeError("boom")

    p.add_unit(fails, name="fails", dependencies=["u0"])
    with pytest.raises(Exception, match="boom"):
        p.execute(raise_on_error=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone() == (100,)
    store.put(b"k" * 32, "late", b"payload")
    closing = threading.Thread(target=store.close)
    closing.start()
    closing.join()
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone() == (101,)


# -- closures whose cells change after add_unit ------------------------------------------------


class _Text(str):
    __slots__ = ()


class _Number(int):
    __slots__ = ()


def _closure(start):
    """A unit closing over ``value``, and functions that rebind and delete it afterwards."""
    value = start

    def unit(ctx):
        return value

    def rebind(new):
        nonlocal value
        value = new

    def delete():
        nonlocal value
        del value

    return unit, rebind, delete


def _replace_code(unit):
    value = None

    def other(ctx):
        return [value]

    unit.__code__ = other.__code__


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda unit, rebind, delete: rebind([1]), id="int-to-list"),
        pytest.param(lambda unit, rebind, delete: delete(), id="cell-emptied"),
        pytest.param(lambda unit, rebind, delete: _replace_code(unit), id="code-replaced"),
    ],
)
def test_closures_are_keyed_as_they_were_when_added_whatever_changes_after(change):
    """A closure's key is its fingerprint when it was added (a closure of a code seen
    before keeps its cells' plain values and is digested at the first run): a cell that
    changes type, is emptied, or a ``__code__`` replaced afterwards changes nothing, as
    for the first closure (fingerprinted at once). Values alike but of other types (bool
    and int, -0.0 and 0.0, a str or int subclass) or hard to encode (NaN, an int of more
    digits than str() allows) are each keyed as the closure taken alone."""
    starts = [1, True, 0, False, -0.0, 0.0, math.nan, 10**5000, "a", _Text("a"), _Number(1)]
    p = CachingQuantumPartitioner(cache_store=MemoryStore(), default_execution_mode=SEQUENTIAL)
    closures, when_added = [], []
    for k, start in enumerate(starts):
        unit, rebind, delete = _closure(start)
        when_added.append(_fingerprint.function_fingerprint(unit))
        p.add_unit(unit, name=f"u{k}", metadata={"cacheable": True})
        closures.append((unit, rebind, delete))
    p.add_unit(functools.partial(_closure(2)[0]), name="partial", metadata={"cacheable": True})
    partial_when_added = _fingerprint.function_fingerprint(p.units["partial"].function)
    assert any(isinstance(p._fingerprints[f"u{k}"], list) for k in range(len(starts)))
    for closure in closures:
        change(*closure)
    keyed = [p._function_fingerprint(p.units[f"u{k}"]) for k in range(len(starts))]
    assert keyed == when_added
    assert len(set(keyed)) == len(starts)
    assert p._function_fingerprint(p.units["partial"]) == partial_when_added
