"""The SQLite store at its edges: files that are not stores, locks, sizes, shared stores.

Real files and real processes throughout: a foreign database, a lock held by another
connection, a store shared by runs on several threads, an upgrade killed halfway.
"""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from quantum_partitioner import ExecutionMode, SQLiteStore

THREAD = ExecutionMode.THREAD


def _journal_mode(path):
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("PRAGMA journal_mode").fetchone()[0]


def _tables(path):
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


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
