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
import signal
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
    QuantumPartitioner,
    SQLiteStore,
)
from quantum_partitioner.caching import _fingerprint, _stores

SEQUENTIAL = ExecutionMode.SEQUENTIAL
THREAD = ExecutionMode.THREAD


def _journal_mode(path):
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("PRAGMA journal_mode").fetchone()[0]


def _tables(path):
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _database(path, *statements):
    """A SQLite database at ``path`` (owner only, as a store's file is) made by ``statements``."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for statement in statements:
            db.execute(statement)
    path.chmod(0o600)
    return path


# -- files that are not stores ----------------------------------------------------------------


def test_a_database_refused_as_not_a_store_keeps_its_journal_mode(tmp_path):
    """Someone else's SQLite database is refused before anything changes it: its journal
    mode is not switched to WAL (a lasting change to the file), no -wal file is made."""
    path = _database(tmp_path / "app.sqlite", "CREATE TABLE users (name TEXT)")
    with pytest.raises(ValueError, match=r"not a quantum-partitioner cache.*users"):
        SQLiteStore(path)
    assert _journal_mode(path) == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite"]


def test_a_database_with_a_meta_table_of_its_own_is_not_taken_for_a_store(tmp_path):
    """A database with a ``meta (key, value)`` table (a common name) but no format version
    in it is not a store: it is refused, and gets neither an ``entries`` table nor a
    version."""
    path = _database(
        tmp_path / "app.sqlite",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
        "INSERT INTO meta VALUES ('app', 'mine')",
        "CREATE TABLE users (name TEXT)",
    )
    with pytest.raises(ValueError, match=r"not a quantum-partitioner cache.*meta.*users"):
        SQLiteStore(path)
    assert _tables(path) == {"meta", "users"}
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT * FROM meta").fetchall() == [("app", "mine")]
    assert _journal_mode(path) == "delete"


def test_a_store_of_another_format_version_is_refused_before_anything_is_written(tmp_path):
    """A store of a format this version does not read (a later one, which may lay out its
    tables and journal otherwise) is refused before anything changes it: no ``entries``
    table is added, its journal mode is not switched to WAL."""
    path = _database(
        tmp_path / "later.sqlite",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta VALUES ('format_version', '99')",
        "CREATE TABLE results (key BLOB PRIMARY KEY, payload BLOB)",
    )
    with pytest.raises(ValueError, match="format version 99"):
        SQLiteStore(path, size_limit=1000)
    assert _tables(path) == {"meta", "results"}
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
from quantum_partitioner.caching import _stores
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


def test_a_scan_of_small_entries_checks_each_one_and_keeps_only_those_wanted(tmp_path):
    """A read ahead that reads the store whole takes chunks of small payloads in C loops:
    every entry is still checked (a damaged one dropped, never served), only the wanted
    ones are kept, and the wanted ones it did not find are known absent."""
    keys = [i.to_bytes(32, "big") for i in range(1200)]
    with SQLiteStore(tmp_path / "c.sqlite") as store:
        for key in keys[:1000]:
            store.put(key, "u", key[-2:] * 3)
        store.flush()
        store._connection().execute(
            "UPDATE entries SET payload = ? WHERE key = ?", (b"damaged", keys[700])
        )
        wanted = keys[200:]  # 800 wanted, 1,000 stored: read whole
        store.prefetch(wanted)
        assert keys[100] not in store._prefetched
        assert store.get(keys[700]) is None
        assert store.corrupt == 1
        assert [store.get(key) for key in keys[200:700]] == [key[-2:] * 3 for key in keys[200:700]]
        assert keys[1100] in store._absent
        assert store.get(keys[1100]) is None


def test_a_memory_store_s_miss_takes_no_lock():
    """A miss (every lookup of a cold run, from every thread of the run) is one dict lookup:
    it does not wait for a write under way, nor make the run's threads queue on the lock."""
    store = MemoryStore()
    store.put(b"k" * 32, "u", b"stored")
    found: list[bytes | None] = []
    with store._lock:  # a write under way, as the lookups see it
        reader = threading.Thread(target=lambda: found.append(store.get(b"m" * 32)))
        reader.start()
        reader.join(10)
        assert found == [None]
    assert store.get(b"k" * 32) == b"stored"


def test_a_memory_store_s_entries_are_left_alone_by_the_garbage_collector():
    """Its entries hold only strings, bytes and numbers: once the collector has seen them it
    stops tracking them, so a store of many entries does not make every full collection
    traverse them all (read or not, listed or not, they stay what they were)."""
    import gc  # noqa: PLC0415 - this test only

    store = MemoryStore()
    for i in range(100):
        store.put(i.to_bytes(32, "big"), f"u{i % 3}", b"p%d" % i)
    assert store.get((7).to_bytes(32, "big")) == b"p7"
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in store._entries.values())
    assert store.entries()[0].unit == "u1"  # the one read last
    assert store.clear("u0") == 34
    assert (len(store), store.total_size()) == (
        66,
        sum(len(b"p%d" % i) for i in range(100) if i % 3),
    )


def test_a_batch_s_statement_journal_is_kept_in_memory_not_in_a_temporary_file(tmp_path):
    """A statement of many rows inside a transaction keeps a journal to undo that statement
    alone; past 64 KiB SQLite would spill it to a temporary file, written and read back for
    every large insert (a third of the writer's CPU): the store keeps it in memory."""
    with SQLiteStore(tmp_path / "c.sqlite") as store:
        assert store._connection().execute("PRAGMA temp_store").fetchone() == (2,)  # MEMORY
        for i in range(3000):
            store.put(i.to_bytes(32, "big"), "u", b"x" * 64)
        store.flush()
        assert len(store) == 3000


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


@pytest.mark.parametrize("failing", ["results", "read times"])
def test_a_write_that_fails_unexpectedly_leaves_the_writer_thread_committing(
    tmp_path, monkeypatch, caplog, failing
):
    """A batch of results, or of read times, whose write fails in an unexpected way (out
    of memory) is logged and counted like any failed write (read times, hints, are
    dropped), and the writer thread goes on committing the next results within its bound
    (it died, and nothing more was committed until the run's end)."""
    path = tmp_path / "c.sqlite"
    owner, name = (_stores, "_insert") if failing == "results" else (SQLiteStore, "_apply_touches")
    real = getattr(owner, name)
    calls = []

    def failing_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError
        real(*args)

    monkeypatch.setattr(owner, name, failing_once)
    with SQLiteStore(path) as store:
        store.put(b"a" * 32, "u", b"first")
        if failing == "read times":
            store.flush()
            assert store.get(b"a" * 32) == b"first"
            store.flush()  # hands the read time over to the writer thread
        deadline = time.monotonic() + 30
        while not calls:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        store.put(b"b" * 32, "u", b"kept")
        with contextlib.closing(sqlite3.connect(path)) as db:
            kept = [b"b" * 32] if failing == "results" else [b"a" * 32, b"b" * 32]
            while [key for (key,) in db.execute("SELECT key FROM entries ORDER BY key")] != kept:
                assert time.monotonic() < deadline  # committed by the writer, not at close
                time.sleep(0.001)
        assert store.write_errors == (failing == "results")
    assert ("could not write 1 results" if failing == "results" else "read times") in caplog.text


@pytest.mark.parametrize("mode", [SEQUENTIAL, THREAD])
def test_an_interrupted_run_leaves_every_completed_result_in_the_file(tmp_path, mode):
    """A KeyboardInterrupt halfway through a chain: the results before it are committed
    by the time it reaches the caller, and no writer thread is left with them queued."""
    path = tmp_path / "c.sqlite"
    with SQLiteStore(path) as store:
        p = CachingQuantumPartitioner(4, mode, cache_store=store)

        def link(ctx, i):
            if i == 30:
                raise KeyboardInterrupt
            return i

        for i in range(60):
            before = [f"u{i - 1}"] if i else []
            p.add_unit(
                functools.partial(link, i=i), before, name=f"u{i}", metadata={"cacheable": True}
            )
        with pytest.raises(KeyboardInterrupt):
            p.execute()
        assert not store._queued
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT COUNT(*) FROM entries").fetchone() == (30,)


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
    # Some kept as snapshots (a template third, where a taken fingerprint has its bytes);
    # add_unit left the records of most to be made when they are first read.
    p._settle()
    assert any(type(p._fingerprints[f"u{k}"][2]) is not bytes for k in range(len(starts)))
    for closure in closures:
        change(*closure)
    keyed = [p._function_fingerprint(p.units[f"u{k}"]) for k in range(len(starts))]
    assert keyed == when_added
    assert len(set(keyed)) == len(starts)
    assert p._function_fingerprint(p.units["partial"]) == partial_when_added


_FACTORY = compile(
    "def make(k):\n    def unit(ctx):\n        return (k, OFFSET)\n    return unit\n",
    "<factory>",
    "exec",
)


def _plain(ctx):
    return ctx.unit_id


def _factory(offset):
    """``make`` of one code object run in a namespace of its own (its global OFFSET)."""
    namespace = {"OFFSET": offset, "__name__": "factory_module"}
    exec(_FACTORY, namespace)  # the same code object in each namespace
    return namespace["make"]


def test_closures_of_one_code_in_other_namespaces_modules_and_names_are_keyed_as_added():
    """add_unit keeps most closures of one code object unread (their name, function and
    cell value) and checks their namespace and module later: each unit is keyed as the
    long way keys it when it is added, whether its closure comes from another namespace
    (the same code object run twice), claims a library's module, is given defaults, or
    its unit is replaced, removed or added again between closures kept so."""
    p = CachingQuantumPartitioner(cache_store=MemoryStore(), default_execution_mode=SEQUENTIAL)
    first, second = _factory(1), _factory(2)
    when_added = {}

    def add(name, function, metadata_extra=(), **options):
        metadata = {"cacheable": True, **dict(metadata_extra)}
        ignore = frozenset(metadata.get("cache_ignore", ()))
        when_added[name] = _fingerprint.function_fingerprint(function, ignore)
        p.add_unit(function, name=name, metadata=metadata, **options)

    for k in range(4):
        add(f"a{k}", first(k))
    add("b0", second(0))  # the same code, in another namespace: another OFFSET
    add("b1", second(1))
    add("a4", first(4))
    library = first(5)
    library.__module__ = "json"  # a library function: keyed by its name
    add("lib", library)
    with_defaults = first(6)
    with_defaults.__defaults__ = (None,)
    add("defaults", with_defaults)
    add("a1", first(10), replace=True)  # a closure kept so, replaced by another
    add("a2", _plain, replace=True)  # by a function taken the long way
    add("s", _plain)
    add("a0", _plain, replace=True)  # by the function of the unit before
    add("ignoring", first(14), metadata_extra={"cache_ignore": ["k"]})
    add("ignoring", first(15), replace=True)
    p.add_unit(first(11), name="a3", replace=True)  # by a unit that is not cacheable
    del when_added["a3"]
    changed = first(16)
    add("changed", changed)
    changed.__defaults__ = (None,)  # then added again: keyed with its defaults
    add("changed", changed, replace=True)
    again = first(17)
    add("again", again)
    again.__defaults__ = (None,)
    add("again2", again)
    add("again", again, replace=True)  # as the unit before, with its defaults
    add("twice", second(3))  # another namespace's closure, then one of the template's
    add("twice", first(3), replace=True)
    add("gone", first(12))
    p.remove_unit("gone")
    del when_added["gone"]
    add("gone", first(13))  # added again
    p._settle()
    assert p._fingerprints["twice"][0] is p.units["twice"].function  # the last one's record
    keyed = {name: p._function_fingerprint(p.units[name]) for name in when_added}
    assert keyed == when_added
    assert len(set(keyed.values())) == len(keyed) - 3  # all differ but a0/a2/s, again/again2
    assert p.execute()["b1"] == (1, 2)


def test_a_closure_kept_unread_is_keyed_with_the_module_it_had_when_added():
    """A module assigned to a closure after add_unit kept it unread (in the template's
    namespace or another) does not change its key: it is keyed with its module then."""
    p = CachingQuantumPartitioner(cache_store=MemoryStore(), default_execution_mode=SEQUENTIAL)
    first, second = _factory(1), _factory(2)
    p.add_unit(first(0), name="a0", metadata={"cacheable": True})
    when_added = {}
    for name, closure in (("a1", first(1)), ("b1", second(1))):
        when_added[name] = _fingerprint.function_fingerprint(closure)
        p.add_unit(closure, name=name, metadata={"cacheable": True})
        closure.__module__ = "json"  # afterwards: a library's module, keyed by name
    assert {name: p._function_fingerprint(p.units[name]) for name in when_added} == when_added


def test_a_global_rebound_after_a_run_without_cacheable_units_is_seen_by_units_added_then():
    """A run ends the build whether or not any unit of it was cacheable: a closure added
    after it is keyed with the globals of its namespace then. (A run without cacheable units
    kept the build's template, and its globals as the first closure's add read them.)"""
    p = CachingQuantumPartitioner(cache_store=MemoryStore(), default_execution_mode=SEQUENTIAL)
    namespace = {"OFFSET": 1, "__name__": "factory_module"}
    exec(_FACTORY, namespace)
    make = namespace["make"]
    p.add_unit(make(0), name="u0", metadata={"cacheable": True})
    p.add_unit(make(0), name="u0", replace=True)  # not cacheable now
    p.execute()
    namespace["OFFSET"] = 2
    later = make(1)
    p.add_unit(later, name="u1", metadata={"cacheable": True})
    assert p._function_fingerprint(p.units["u1"]) == _fingerprint.function_fingerprint(later)
    assert p.execute()["u1"] == (1, 2)


def test_a_refused_add_units_leaves_the_records_as_they_were():
    """add_units refused at a unit whose function cannot be fingerprinted adds none: the
    closures fingerprinted before it leave no record (one kept unread replaced the record of
    a unit of its name added again, which then lost its defaults from its key), and a unit
    it was to replace keeps the key it had when it was added. add_subgraph likewise."""
    p = CachingQuantumPartitioner(cache_store=MemoryStore(), default_execution_mode=SEQUENTIAL)
    first = _factory(1)
    cacheable = {"metadata": {"cacheable": True}}
    p.add_unit(first(0), name="a0", **cacheable)
    replaced = first(5)
    p.add_unit(replaced, name="replaced", **cacheable)
    replaced_when_added = _fingerprint.function_fingerprint(replaced)
    replaced.__closure__[0].cell_contents = 50  # after it was added: not in its key
    again = first(1)
    lock = threading.Lock()
    refused = {
        "again": (again, [], cacheable),
        "replaced": (first(6), [], cacheable),
        "bad": (lambda ctx: lock, [], cacheable),
    }
    with pytest.raises(TypeError, match="'bad'"):
        p.add_units(refused, replace=True)
    assert set(p.units) == {"a0", "replaced"}
    again.__defaults__ = (None,)
    p.add_unit(again, name="again", **cacheable)
    assert p._function_fingerprint(p.units["again"]) == _fingerprint.function_fingerprint(again)
    assert p._function_fingerprint(p.units["replaced"]) == replaced_when_added
    # A subgraph refused at one of its units, likewise.
    inner, copied = QuantumPartitioner(), first(2)
    inner.add_unit(copied, name="x", **cacheable)
    inner.add_unit(lambda ctx: lock, name="bad", **cacheable)
    with pytest.raises(TypeError, match=r"'sub\.bad'"):
        p.add_subgraph(inner, "sub")
    copied.__defaults__ = (None,)
    p.add_unit(copied, name="sub.x", **cacheable)
    assert p._function_fingerprint(p.units["sub.x"]) == _fingerprint.function_fingerprint(copied)


def test_a_closure_kept_unread_whose_namespace_cannot_be_fingerprinted_fails_the_run():
    """Its namespace is read when its record is made (the next run): the run raises
    TypeError naming the unit and the global before any unit runs."""
    p = CachingQuantumPartitioner(cache_store=MemoryStore(), default_execution_mode=SEQUENTIAL)
    make, locked = _factory(1), _factory(threading.Lock())
    ran = []
    p.add_unit(lambda ctx: ran.append(1), name="first")
    for k in range(3):
        p.add_unit(make(k), name=f"u{k}", metadata={"cacheable": True})
    p.add_unit(locked(3), name="locked", metadata={"cacheable": True})
    with pytest.raises(TypeError, match=r"unit 'locked'.*global 'OFFSET'"):
        p.execute()
    assert ran == []


def test_one_metadata_dict_for_many_units_is_checked_as_each_new_one_is():
    """add_unit checks a metadata object once while unit after unit passes that very
    object; any other object is checked in full, whatever came before it: a unit without
    metadata is not cached, bad cache metadata and a bad estimated_duration raise."""
    p = CachingQuantumPartitioner(cache_store=MemoryStore(), default_execution_mode=SEQUENTIAL)
    make, ran, lock = _factory(1), [], threading.Lock()

    def not_cacheable(ctx):  # and it could not be: a lock cannot be fingerprinted
        with lock:
            ran.append(ctx.unit_id)

    shared = {"cacheable": True}
    p.add_unit(not_cacheable, name="plain")  # first, without any
    for k in range(3):
        p.add_unit(make(k), name=f"u{k}", metadata=shared)
    with pytest.raises(TypeError, match=r"unit 'bad'.*cache_ignore"):
        p.add_unit(make(9), name="bad", metadata={"cacheable": True, "cache_ignore": "k"})
    with pytest.raises(ValueError, match=r"unit 'slow'.*estimated_duration"):
        p.add_unit(make(9), name="slow", metadata={"cacheable": True, "estimated_duration": -1})
    p.add_unit(make(3), name="u3", metadata=shared)
    assert set(p.units) == {"plain", "u0", "u1", "u2", "u3"}
    assert p.execute()["u3"] == (3, 1)
    p.add_unit(not_cacheable, name="plain2")  # first after a run
    p.execute()
    p.execute()
    assert ran == ["plain", "plain", "plain2", "plain", "plain2"]
    assert (p.cache_hits, p.cache_misses) == (8, 4)


def test_a_shared_metadata_dict_changed_after_add_unit_is_read_again_by_the_run():
    """Units keep the metadata dict they are given: cache_ignore added to a dict that units
    share, after some of them were added, is honoured for each of them by the next run."""
    p = CachingQuantumPartitioner(cache_store=MemoryStore(), default_execution_mode=SEQUENTIAL)
    make = _factory(1)
    shared = {"cacheable": True}
    p.add_unit(make(0), name="before", metadata=shared)
    shared["cache_ignore"] = ["k"]
    p.add_unit(make(1), name="after", metadata=shared)
    ignoring = frozenset({"k"})
    assert {name: p._function_fingerprint(unit) for name, unit in p.units.items()} == {
        "before": _fingerprint.function_fingerprint(p.units["before"].function, ignoring),
        "after": _fingerprint.function_fingerprint(p.units["after"].function, ignoring),
    }


def test_a_caching_partitioner_keeps_its_instance_dict_within_the_inline_limit():
    """Its own attributes are slots: CPython keeps an instance's attributes inline (its
    attribute reads and method lookups specialised) only up to 30 names, and a dict past
    that made every unit added cost ~800 instructions more."""
    p = CachingQuantumPartitioner(cache_store=MemoryStore())
    assert len(p.__dict__) <= 30, sorted(p.__dict__)
    assert p.cache_hits == 0
    p.note = "a caller's own attribute"  # the instance dict stays
    assert p.note == "a caller's own attribute"


# -- fork --------------------------------------------------------------------------------------


def _fork_and_write(store):
    """Fork a child that writes ``c`` -> ``yours`` and reads it back; return its pid.

    The child reports through its exit status only (0: done); one that hangs is killed by
    an alarm, so that the test fails instead of hanging.
    """
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(10)
            store.put(b"c" * 32, "child", b"yours")
            store.flush()
            code = 0 if store.get(b"c" * 32) == b"yours" else 2
        finally:
            os._exit(code)
    return pid


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_child_forked_while_another_thread_holds_the_store_s_lock_can_use_it(tmp_path, kind):
    """A fork while another thread holds the store's lock (the writer thread, committing a
    batch; a lookup on a MemoryStore) must not leave the child a lock nobody will ever let
    go of: the child writes and reads (it hung at its first write)."""
    store = SQLiteStore(tmp_path / "c.sqlite") if kind == "sqlite" else MemoryStore()
    with store:
        store.put(b"p" * 32, "parent", b"mine")
        store.flush()
        held, release = threading.Event(), threading.Event()

        def commit_under_way():
            with store._lock:  # as _commit_queued or a lookup holds it
                held.set()
                release.wait()

        committing = threading.Thread(target=commit_under_way)
        committing.start()
        held.wait()
        pid = _fork_and_write(store)
        release.set()
        committing.join()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get(b"p" * 32) == b"mine"


# -- a full disk -------------------------------------------------------------------------------

# Runs a cached graph whose results no longer fit in the file (a file size limit stands for
# a full disk: writes past it fail, as they do with ENOSPC), twice.
_RUN_ON_A_FULL_DISK = """
import os, resource, signal, sys
from quantum_partitioner import CachingQuantumPartitioner, ExecutionMode
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
path = sys.argv[1]
p = CachingQuantumPartitioner(4, ExecutionMode.THREAD, cache_path=path)
p.add_unit(lambda ctx: "small", name="small", metadata={"cacheable": True})
p.execute()
room = os.path.getsize(path) + os.path.getsize(path + "-wal") + 8_000  # no 16 KiB page more
resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))
for i in range(20):
    p.add_unit(lambda ctx, i=i: bytes([i]) * 100_000, name=f"big{i}", metadata={"cacheable": True})
first = p.execute()
expected = {"small": "small", **{f"big{i}": bytes([i]) * 100_000 for i in range(20)}}
assert first == p.execute() == expected
stats = p.cache_stats()
print(stats.hits, stats.errors > 0, stats.entries)
"""


def test_a_full_disk_fails_no_run_and_leaves_the_file_whole(tmp_path):
    """Results that no longer fit are not stored (logged, counted as errors); the runs
    return every result, and the file keeps what it held, intact."""
    path = tmp_path / "c.sqlite"
    done = subprocess.run(
        [sys.executable, "-c", _RUN_ON_A_FULL_DISK, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2 True 1\n"  # "small" served by both runs; nothing else stored
    assert "could not write" in done.stderr
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with SQLiteStore(path) as store:
        assert [entry.unit for entry in store.entries()] == ["small"]


# -- a size limit set on a store made without one, and the reverse ----------------------------


def test_a_limit_given_to_a_store_made_without_one_evicts_the_least_recently_used(tmp_path):
    """A store filled without a limit, then opened with one: the first write evicts down
    to the limit, least recently used first (entries read in this process count as used);
    opened without a limit again, it grows past the old limit, keeping every entry."""
    path = tmp_path / "c.sqlite"
    keys = [i.to_bytes(32, "big") for i in range(1000)]
    with SQLiteStore(path) as store:
        for key in keys:
            store.put(key, "u", b"p" * 100)
    time.sleep(0.01)  # the clock moves on between the writes and the reads
    with SQLiteStore(path, size_limit=100 * 100) as store:
        assert len(store) == 1000  # nothing is evicted before a write
        assert all(store.get(key) == b"p" * 100 for key in keys[:10])  # the oldest, read
        store.put(b"n" * 32, "u", b"p" * 100)
        kept = {bytes.fromhex(entry.key) for entry in store.entries()}
    assert len(kept) == 100
    assert kept >= {*keys[:10], b"n" * 32}
    assert kept - {*keys[:10], b"n" * 32} == set(keys[-89:])  # then the newest
    with SQLiteStore(path) as store:
        for key in keys[:500]:
            store.put(key, "u", b"q" * 100)
        assert len(store) == 590


def test_a_store_at_its_limit_keeps_its_total_without_summing_every_entry_at_each_commit(
    tmp_path,
):
    """At the limit every commit evicts: the total is kept exact from what the batch replaced
    (its own keys read), not summed over the whole store at each commit (linear in its rows:
    23.6 ms at 100,000). A replaced entry counts once; what is evicted is still the least
    recently used."""
    with SQLiteStore(tmp_path / "c.sqlite", size_limit=100 * 50) as store:
        statements: list[str] = []
        store._connection().set_trace_callback(statements.append)
        for _ in range(20):
            for _ in range(30):
                store.put(os.urandom(32), "u", b"x" * 50)
            store.flush()
        sums = [text for text in statements if "SUM(size)" in text and "WHERE" not in text]
        # The first commit (no total known yet), and the first over the limit (an estimate
        # until then); 17 (each commit from then on) when every one summed.
        assert len(sums) <= 2
        assert len(store) == 100
        assert store.total_size() == 100 * 50
    with SQLiteStore(tmp_path / "r.sqlite", size_limit=1000) as store:
        a, b, c = (bytes([n]) * 32 for n in b"abc")
        store.put(a, "u", b"1" * 400)
        store.put(b, "u", b"2" * 400)
        store.flush()
        store.put(a, "u", b"3" * 400)  # replaces a's entry: 800 bytes stored, not 1200
        store.flush()
        assert (store.get(a), store.get(b)) == (b"3" * 400, b"2" * 400)
        store.put(c, "u", b"4" * 400)  # over the limit: b is the least recently used
        store.flush()
        assert {bytes.fromhex(entry.key) for entry in store.entries()} == {a, c}
        assert store.total_size() == 800


_WRITE_MANY = """
import sys
from quantum_partitioner import SQLiteStore
with SQLiteStore(sys.argv[1]) as store:
    for i in range(200):
        store.put(b"o" * 28 + i.to_bytes(4, "big"), "other", b"x" * 1000)
"""


def test_a_store_with_a_limit_sees_another_process_s_writes_at_its_next_write(tmp_path):
    """Another process, without a limit, fills the file far past this store's limit: this
    store's next write brings it back within the limit (it checked the total only once its
    own writes added up to the limit, which could be never)."""
    path = tmp_path / "c.sqlite"
    with SQLiteStore(path, size_limit=10_000) as store:
        store.put(b"a" * 32, "u", b"p" * 100)
        store.flush()
        subprocess.run([sys.executable, "-c", _WRITE_MANY, str(path)], check=True, timeout=120)
        assert store.total_size() > 100_000
        store.put(b"b" * 32, "u", b"p" * 100)
        store.flush()
        assert store.total_size() <= 10_000
        assert store.get(b"b" * 32) == b"p" * 100


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_store_given_a_relative_path_stays_in_its_file_after_a_change_of_directory(
    tmp_path, monkeypatch
):
    """A relative ``cache_path`` names the file it named when the store was opened: a
    child forked after the process changed its working directory (a daemon does) writes
    there, not into a new file beside the new directory."""
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    with SQLiteStore("c.sqlite") as store:
        store.put(b"p" * 32, "parent", b"mine")
        store.flush()
        os.chdir(tmp_path / "second")
        pid = _fork_and_write(store)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get(b"c" * 32) == b"yours"
    assert list((tmp_path / "second").iterdir()) == []


def test_a_run_refused_while_another_runs_leaves_the_keys_alone():
    """execute while the partitioner runs is refused before anything of the run is made:
    its context is not fingerprinted (one that cannot be raised TypeError instead of the
    refusal) and the keys the running run's graph keeps are not rewritten for it."""
    p = CachingQuantumPartitioner(cache_store=MemoryStore())
    started, release = threading.Event(), threading.Event()

    def waits(ctx):
        started.set()
        release.wait(30)
        return ctx["x"]

    p.add_unit(
        waits, name="waits", metadata={"cacheable": True, "cache_ignore": ["started", "release"]}
    )
    results = {}
    running = threading.Thread(target=lambda: results.update(p.execute({"x": 1})))
    running.start()
    try:
        assert started.wait(30)
        statics = list(p._graph_keys.statics)
        for refused in ({"x": 2}, {"x": threading.Lock()}):
            with pytest.raises(RuntimeError, match="already executing"):
                p.execute(refused, SEQUENTIAL)
        assert p._graph_keys.statics == statics
    finally:
        release.set()
        running.join(30)
    assert results == {"waits": 1}


def _entries_in_the_file_alone(path) -> int:
    """How many entries the store's main file holds by itself, without its write-ahead log
    (read as immutable: SQLite neither reads the log nor makes one)."""
    uri = f"{path.as_uri()}?immutable=1"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        except sqlite3.OperationalError:  # not even the table: nothing checkpointed yet
            return 0


@pytest.mark.parametrize("until", ["a run's end", "many rows"])
def test_committed_results_are_checkpointed_into_the_file_before_close(tmp_path, until):
    """The store's checkpointer thread copies the write-ahead log into the file while the
    caller goes on: after a run's end (flush), and once enough rows were committed during
    a run, the file alone holds them, before close() (which then finds little to copy)."""
    path = tmp_path / "c.sqlite"
    count = 50 if until == "a run's end" else _stores._CHECKPOINT_ROWS + 10
    with SQLiteStore(path) as store:
        for k in range(count):
            store.put(k.to_bytes(32, "big"), "u", b"v%d" % k)
        if until == "a run's end":
            store.flush()
        wanted = count if until == "a run's end" else _stores._CHECKPOINT_ROWS
        deadline = time.monotonic() + 30
        while _entries_in_the_file_alone(path) < wanted:
            assert time.monotonic() < deadline, "not checkpointed before close()"
            time.sleep(0.01)
    assert _entries_in_the_file_alone(path) == count
    assert not path.with_name(f"{path.name}-wal").exists()


def test_close_waits_for_a_checkpoint_under_way(tmp_path, monkeypatch):
    """close() lets the checkpointer finish the checkpoint it has under way, then closes
    the last connection (which checkpoints the rest): the file alone holds every result
    and no -wal is left once it returns."""
    path = tmp_path / "c.sqlite"
    real = SQLiteStore._checkpoint
    started, finished = threading.Event(), threading.Event()

    def slow_checkpoint(self, connections):
        started.set()
        time.sleep(0.2)
        real(self, connections)
        finished.set()

    monkeypatch.setattr(SQLiteStore, "_checkpoint", slow_checkpoint)
    store = SQLiteStore(path)
    store.put(b"a" * 32, "u", b"first")
    store.flush()
    assert started.wait(30)
    store.put(b"b" * 32, "u", b"second")
    store.close()
    assert finished.is_set()
    assert not path.with_name(f"{path.name}-wal").exists()
    assert _entries_in_the_file_alone(path) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_waits_for_a_checkpoint_under_way(tmp_path, monkeypatch):
    """A fork while the checkpointer is inside SQLite waits for it: a child inheriting
    SQLite's mutexes held by a thread it does not have would hang at its first connection
    (a PROCESS pool forked right after a run met the run's checkpoint)."""
    real = SQLiteStore._checkpoint_once
    inside, done = threading.Event(), threading.Event()

    def slow(self, connections):
        inside.set()
        time.sleep(0.2)  # stands for a long fsync
        real(self, connections)
        done.set()

    monkeypatch.setattr(SQLiteStore, "_checkpoint_once", slow)
    with SQLiteStore(tmp_path / "c.sqlite") as store:
        store.put(b"a" * 32, "u", b"first")
        store.flush()
        assert inside.wait(30)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        assert done.is_set()  # the checkpoint ended before the fork
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
