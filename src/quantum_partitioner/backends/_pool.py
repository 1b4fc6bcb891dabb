"""A pool of replaceable daemon threads, for drivers that hand attempts to threads.

The thread lane of a mixed run and the plain functions of ASYNC mode share it. Its rules:

* A job is handed over only to a free thread (:attr:`DaemonPool.free` counts threads that
  are started and idle, minus jobs handed to them and not yet picked up). So a job starts
  as soon as it is handed over, and a unit's timeout, which counts from then, is not spent
  waiting in a queue.
* :meth:`~DaemonPool.abandon` drops a job that no thread has picked up yet: it never starts.
  A thread already running the job cannot be stopped: it is *retired* (it exits once the job
  returns; its outcome is still delivered, and the driver ignores it) and a fresh thread
  takes its place, so the pool keeps its size.
* A thread counts itself free again *before* it delivers an outcome, so a driver that
  reacts to the outcome finds room for the next job.
* Threads are daemons: a job stuck forever never keeps the interpreter alive.

State: the threads (each with the key of the job it runs), the count of free threads, the
keys of dropped jobs, all under one lock; jobs wait for a thread on a ``SimpleQueue``.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

__all__ = ["DaemonPool", "default_thread_workers"]

K = TypeVar("K", bound="Hashable")

_ids = itertools.count(1)
_STOP: Final = object()
#: The longest wait for the threads of a new pool to come up.
_START_SECONDS: Final = 5.0


def default_thread_workers() -> int:
    """The thread pool size when none is given, as ``ThreadPoolExecutor`` chooses it."""
    return min(32, (os.cpu_count() or 1) + 4)


class _Thread:
    __slots__ = ("key", "retired")

    def __init__(self) -> None:
        self.key: Any = None  # the job it runs, None while idle
        self.retired = False


class DaemonPool(Generic[K]):
    """``size`` daemon threads running ``work(key)`` and handing ``deliver(key, result)``.

    Args:
        size: How many threads the pool keeps.
        name: The threads' name prefix.
        work: Runs one job; it must not raise (it returns the outcome, errors included).
        deliver: Receives each job's outcome, in the thread that ran it.
        on_free: Called when a thread becomes free without delivering an outcome (it has
            just started, or the job it picked up had been dropped): a driver waiting for
            room may go on.
    """

    def __init__(
        self,
        size: int,
        name: str,
        work: Callable[[K], Any],
        deliver: Callable[[K, Any], None],
        on_free: Callable[[], None],
    ) -> None:
        """Prepare the pool; threads start with :meth:`start`."""
        self.size = size
        self.name = name
        self._work = work
        self._deliver = deliver
        self._on_free = on_free
        self._lock = threading.Lock()
        self._started = threading.Condition(self._lock)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[_Thread] = []
        self._dropped: set[Any] = set()
        self._closed = False
        #: Threads ready for a job now (read it from the one thread that submits).
        self.free = 0

    def start(self) -> None:
        """Start the threads and wait (briefly) until they are ready for jobs.

        So the first jobs of a run are handed over in priority order, not as threads
        happen to come up.
        """
        with self._started:
            for _ in range(self.size):
                self._spawn()
            self._started.wait_for(lambda: self.free >= self.size, timeout=_START_SECONDS)

    def _spawn(self) -> None:
        me = _Thread()
        self._threads.append(me)
        name = f"{self.name}-{next(_ids)}"
        threading.Thread(target=self._serve, args=(me,), name=name, daemon=True).start()

    def submit(self, key: K) -> None:
        """Hand job ``key`` to a free thread (call only when :attr:`free` is positive)."""
        with self._lock:
            self.free -= 1
        self._jobs.put(key)

    def abandon(self, key: K) -> None:
        """Drop job ``key`` if no thread has picked it up; else retire its thread."""
        with self._lock:
            for thread in self._threads:
                if thread.key == key:
                    thread.retired = True
                    self._threads.remove(thread)
                    if not self._closed:
                        self._spawn()
                    return
            self._dropped.add(key)

    def close(self) -> None:
        """Let idle threads exit; jobs not yet picked up never start.

        Threads still running a job exit when it returns; they are daemons.
        """
        with self._lock:
            self._closed = True
            threads = len(self._threads)
        for _ in range(threads):
            self._jobs.put(_STOP)

    def _serve(self, me: _Thread) -> None:
        lock, jobs, work, deliver = self._lock, self._jobs, self._work, self._deliver
        with lock:
            self.free += 1
            self._started.notify_all()
        self._on_free()
        while True:
            key = jobs.get()
            if key is _STOP:
                return
            with lock:
                dropped = self._closed or key in self._dropped
                if dropped:
                    self._dropped.discard(key)
                    self.free += 1
                else:
                    me.key = key
            if dropped:
                self._on_free()
                continue
            result = work(key)
            with lock:
                me.key = None
                retired = me.retired
                if not retired:
                    self.free += 1
            deliver(key, result)
            if retired:
                return
