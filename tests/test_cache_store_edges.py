"""The SQLite store at its edges: files that are not stores, locks, sizes, shared stores.

Real files and real processes throughout: a foreign database, a lock held by another
connection, a store shared by runs on several threads, an upgrade killed halfway.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
import time

import pytest

from quantum_partitioner import CachingQuantumPartitioner, ExecutionMode, SQLiteStore

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
        for i in range(24):
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
