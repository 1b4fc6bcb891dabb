"""PROCESS: attempts run in worker processes, each running one attempt at a time.

Why not ``ProcessPoolExecutor`` or loky: both hand work to a shared queue, so when a worker
dies every in-flight future is failed and nobody knows which unit killed it, and neither can
stop one running call on a timeout. Here the driver knows which unit each worker runs, so:

* a worker that dies (segfault, ``os._exit``, SIGKILL, out of memory) fails only its unit,
  with :class:`WorkerDiedError` saying how it died, and a new worker takes its place;
  however a worker ends, its process group (what its units started) goes with it;
* a unit past its timeout is stopped for real: its worker's process group is killed (the
  CPU is free again, the unit's own children go too) and replaced;
* functions and results travel with cloudpickle, so lambdas and closures work; a function,
  dependency result or return value that cannot be pickled fails that unit with an error
  naming the unit and the object, and the pool is untouched;
* only a unit's own inputs travel per attempt (its dependencies' results); the caller's
  context is sent to each worker once per run, and each function once per worker.

Workers are fresh interpreters (``python -c`` running ``_process_worker.main``), started
in their own session so terminal signals reach only the parent, which stops them; they exit
by themselves if the parent dies. The driver sends each the code of the package's modules it
starts from (``_BOOT_MODULES``), so it does not find, read or compile them. Each worker
imports the modules the run's functions come from, then reports ``ready`` before it gets
work, so neither a unit's timeout nor its duration counts a worker's start-up (the trace
shows it as its own slice).

Sending ahead: the round trip to the driver between two attempts would leave a worker idle,
so an attempt may wait in a busy worker behind the one it runs, which starts it the moment
the attempt ahead of it ends; it runs them in the order they came, which is the
scheduler's. An idle worker is always preferred. While the run's attempts are short (a
typical one under ``_SHORT_ATTEMPT``) up to ``_SEND_AHEAD`` may wait in each worker: the
round trip would be much of each one's time. Longer ones wait one per worker, and only
while no unit can become ready that would come before them in the scheduler's order
(every unit left is ready or running, no map can add items, no unit of the lane may be
retried): a unit that becomes ready is then never held up behind one sent ahead. Only
attempts whose promises do not depend on when they start are sent ahead: no timeout and no
named limit (both count from the real start), only when no instrument listens to unit
starts (its event would come early), and not under ``fail_fast`` (which cancels what has
not started: an attempt waiting in a worker would start after the failure). Nor are those
whose messages would not fit in the pipe (``_SENT_AHEAD_BYTES``): a busy worker does not read
it, and the driver must never wait on a worker. The worker stamps each one's real start,
which becomes the attempt's recorded start.

Taking back: each attempt sent ahead has a claim number that the driver writes into the
worker's *claim pipe* before the attempt (see :mod:`.._process_worker`). The worker takes
the number out before it starts the attempt; the driver takes numbers out to take attempts
back, and the pipe gives each number to one of them only. So, without waiting for a busy
worker, the driver knows which of the attempts it sent ahead have not started, and those
never will there: it takes them back to give them to a worker that went idle (the oldest
first: work stealing, so that no worker idles while another holds attempts that wait,
which is how the scheduler's order holds too), and to drop one that is abandoned
(cancelled, the run stopping). An abandoned attempt whose number the worker took has
started: its worker is killed, as for any running attempt, unless the worker has taken
the number of one behind it, which it does only once the abandoned one has ended (its late
outcome is then ignored, and the one it went on to runs on). A worker says when it drops an
attempt taken back (its message stays in the pipe until then: it counts among those that
may wait in the worker); until then it is not idle: the next attempt it is given has a
number too, which the worker may take as it drops the one taken back (before it starts
the next).
Attempts waiting in a worker that dies never started: they go to other workers, their
attempt numbers (retry budgets) untouched; so does one the worker died before it read
whole (the write failed, or what it did not read is still in its pipe). A worker
sends each outcome as it ends; the reader takes every outcome that has arrived in one read.
The reader learns that a worker died from its exit (a pidfd; where there are none, it looks
twice a second), not from the end of its pipe, which a child its unit forked may hold open.

Each worker holds a *slot*, ``0 .. max_workers - 1``; a replacement takes the slot of the
worker it replaces, and each attempt is recorded with its slot (``Run.attempt_workers``), so
traces and reports draw one track per slot: never more than could run at once.

Until it is ready, a worker's stderr is a pipe the reader thread collects (then it switches to
the caller's stderr and what it wrote is passed on). A worker that exits before it is ready
(a broken ``sitecustomize``, a module on the path shadowing one the worker imports), or is
not ready within ``_START_TIMEOUT`` seconds (then it is killed), is replaced; but after
``_MAX_FAILED_STARTS`` such failed starts in a row the lane stops trying and the driver
raises :class:`BrokenBackendError` with the last one's exit status and stderr: the run ends
(completed results kept) instead of spawning workers forever or waiting for ever.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import marshal
import os
import pickle
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from .._errors import BrokenBackendError, WorkerDiedError, describe_exit
from .._process_worker import (
    CLAIM_BYTES,
    FrameError,
    FrameReader,
    send_frame,
    send_frames,
)
from ._base import pool_size
from ._lanes import Lane, LaneBackend

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._run import Run
    from ._lanes import Outcome

__all__ = ["ProcessBackend", "ProcessLane"]

LOGGER = logging.getLogger("quantum_partitioner")

#: Workers in a row that may exit before they are ready before the lane gives up.
_MAX_FAILED_STARTS = 3
#: How many attempts may wait in a worker behind the one it runs (sent ahead).
_SEND_AHEAD = 4
#: While a typical attempt lasts less than this (seconds), ``_SEND_AHEAD`` attempts may wait
#: in a busy worker whatever may become ready; longer ones wait one per worker, and only
#: while no unit can become ready that would come before them (see ``_ahead_room``).
_SHORT_ATTEMPT = 0.002
#: The largest attempt (its messages, in bytes) that may be sent ahead: a busy worker does
#: not read its pipe, whose buffer (64 KiB on Linux) must take ``_SEND_AHEAD`` of them
#: without the driver waiting (those taken back that it has not dropped yet count among
#: them: see ``_may_wait_in``).
_SENT_AHEAD_BYTES = 8 << 10
#: Seconds the workers told to stop may take to exit before they are killed (a unit's
#: thread that never ends, an atexit handler that hangs).
_STOP_SECONDS = 5.0
#: Seconds a worker whose pipe to the driver closed may take to be seen exiting (its pipe
#: closes as it exits) before it counts as alive without it, and is killed.
_EXITING_SECONDS = 0.25
#: Seconds a worker may take to report ready (it imports little: well under one, normally).
_START_TIMEOUT = 60.0
#: The package's modules a worker runs before it is ready, in that order (each one's
#: imports of the package are among those before it). It is sent their code (see
#: :func:`_boot_code`).
_BOOT_MODULES = (
    "quantum_partitioner",
    "quantum_partitioner._context",
    "quantum_partitioner._process_worker",
)
#: What a worker's interpreter runs (see :mod:`.._process_worker`). Given a seventh argument,
#: it first reads that many bytes from its inbox: the code of ``_BOOT_MODULES``, marshalled
#: (:func:`_boot_code`), which it runs as each module, as an import would but without
#: finding, reading or compiling its source. ``_frozen_importlib*`` are the import system's
#: own modules, always loaded: ``importlib.util``, which re-exports the two functions used,
#: would cost a worker more than the modules themselves.
_WORKER_PROGRAM = """\
import gc, sys
gc.disable()  # until it is ready (see _process_worker.serve)
if sys.argv[6:]:
    import _frozen_importlib, _frozen_importlib_external, marshal, os
    inbox, size, boot = int(sys.argv[1]), int(sys.argv[6]), b""
    while len(boot) < size:
        chunk = os.read(inbox, size - len(boot))
        if not chunk:
            sys.exit("the parent is gone")
        boot += chunk
    for name, path, code in marshal.loads(boot):
        spec = _frozen_importlib_external.spec_from_file_location(name, path)
        module = sys.modules[name] = _frozen_importlib.module_from_spec(spec)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
        exec(code, module.__dict__)
from quantum_partitioner._process_worker import main
main()
"""
#: How much of a worker's start-up stderr is kept (its end) for the error message.
_START_LOG_BYTES = 4096
#: Seconds between looks for the exit of workers without a pidfd (their exit cannot wake
#: the reader, and a child their unit forked may keep their pipe open).
_EXIT_CHECK_SECONDS = 0.5
#: What a descriptor the reader watches is to its worker.
_OUTBOX, _START_LOG, _EXITED = range(3)


class RemoteTraceback(Exception):  # noqa: N818 - named after concurrent.futures'
    """The traceback of an error raised in a worker process, attached as its ``__cause__``."""

    def __init__(self, text: str) -> None:
        """Keep the formatted traceback."""
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        """The traceback as the worker formatted it."""
        return f'\n"""\n{self.text}"""'


class RemoteUnitError(Exception):
    """Stands for an exception raised in a worker that could not be pickled back."""


def _load_cloudpickle() -> Any:
    try:
        import cloudpickle  # noqa: PLC0415 - loaded by the runs that send functions
    except ImportError:  # pragma: no cover - a dependency of the package, so installed with it
        raise ImportError(
            "ExecutionMode.PROCESS needs cloudpickle, a dependency of quantum-partitioner "
            "that is missing: pip install cloudpickle"
        ) from None
    return cloudpickle


class _Worker:
    __slots__ = (
        "claim_r",
        "claim_w",
        "claims",
        "corrupted",
        "dropping",
        "exitcode",
        "exited",
        "functions",
        "has_context",
        "inbox",
        "jobs",
        "killed",
        "last_answer",
        "late",
        "outbox",
        "process",
        "reader",
        "ready",
        "sending",
        "slot",
        "spawned_at",
        "start_deadline",
        "start_log",
        "start_stderr",
        "started",
        "unclaimed",
        "unsure_start",
        "written",
    )

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        inbox: int,
        outbox: int,
        start_stderr: int,
        claim_pipe: tuple[int, int],
    ) -> None:
        #: Its place among the lane's workers, as traces name it ("process slot 1").
        self.slot = ""
        #: When it was started (the run's clock), until it is ready.
        self.spawned_at: float | None = None
        self.process = process
        #: Readable once the process has exited (a pidfd), or -1 where there are none.
        self.exited = _open_pidfd(process.pid)
        self.inbox = inbox  # we write attempts here (-1 once closed)
        self.outbox = outbox  # the worker writes outcomes here (-1 once closed)
        self.reader = FrameReader(outbox, _max_message_bytes())
        #: The read end of the worker's stderr until it is ready (-1 once closed).
        self.start_stderr = start_stderr
        self.start_log = bytearray()
        #: When it must have said it is ready (``time.monotonic``), until it has.
        self.start_deadline: float | None = time.monotonic() + _START_TIMEOUT
        self.late = False  # killed for not being ready in time
        self.killed = False  # killed (its process group): the reader buries it
        #: Why it was killed, if for bytes in its pipe that are no message.
        self.corrupted: str | None = None
        self.started = False  # it said it is ready once
        self.ready = False  # it may be given an attempt
        #: The attempts it was sent and has not answered, oldest first: the first may be
        #: running, the others wait in the worker (sent ahead).
        self.jobs: deque[tuple[int, int]] = deque()
        #: Its claim pipe (read end, non-blocking for both readers; write end).
        self.claim_r, self.claim_w = claim_pipe
        #: The claim number of each attempt sent ahead whose number may still be in the
        #: pipe, oldest first (the worker may have taken it since: it then started).
        self.claims: dict[int, tuple[int, int]] = {}
        #: How many attempts taken back from it it has not said it dropped: until it has,
        #: it is not idle (dropping one, it may take the claim number of the next one it
        #: was sent, so that one must have a number).
        self.dropping = 0
        #: When it last ended or dropped an attempt (the run's clock): it began the one it
        #: went on to then, if that was waiting in it.
        self.last_answer = -1.0
        #: An attempt sent ahead to it and stopped once it had begun: ``(i, attempt, when it
        #: was sent)``. Its start was taken from the outcomes read by then; the one of the
        #: attempt before it, sent before it began, may come after (see _answered).
        self.unsure_start: tuple[int, int, float] | None = None
        self.has_context = False
        self.functions: set[int] = set()
        #: The attempt the driver is writing into its inbox: if the worker dies meanwhile,
        #: the driver settles it (it knows whether the worker got it) and closes the inbox.
        self.sending: tuple[int, int] | None = None
        #: How it exited, once buried.
        self.exitcode: int | None = None
        #: How many bytes were written into its inbox (what it starts from included).
        self.written = 0
        #: The last attempt sent to it without a claim number, and where its messages end
        #: among the bytes written: if it dies before it read them all, it never started.
        self.unclaimed: tuple[tuple[int, int], int] | None = None


class ProcessLane(Lane):
    """Run attempts in ``max_workers`` worker processes.

    Args:
        max_workers: How many worker processes (default: the number of CPUs).
        reuse: Keep idle workers between runs (until :meth:`shutdown`) instead of stopping
            them when a run ends; an interrupted run still stops them all.
    """

    name = "process"
    knows_end_times = True

    def __init__(self, max_workers: int | None = None, *, reuse: bool = False) -> None:
        """Size the pool; workers start when the lane first opens."""
        if max_workers is not None and max_workers < 1:
            raise ValueError("max_workers must be greater than 0")
        self.size = max_workers or os.cpu_count() or 1
        self.reuse = reuse
        self._workers: list[_Worker] = []
        self._closing = False
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        #: Attempts whose idle worker died before it had them (between ``has_room`` and
        #: ``submit``, or while they were sent): they go to the next idle worker (its
        #: replacement) before any new attempt.
        self._held: deque[tuple[int, int]] = deque()
        #: Those the reader held (found unread in a dead worker's inbox), for the driver to
        #: tell the scheduler (their timeouts wait until a worker has them).
        self._to_hold: list[tuple[int, int]] = []
        self._failed_starts = 0
        #: Notified when the reader has buried a worker (it read all it had sent).
        self._buried = threading.Condition(self._lock)
        #: Why workers cannot start, once the lane gave up on them.
        self._broken: str | None = None
        #: The last claim number given (never reused: a reused worker may still hold an
        #: attempt of an earlier run that was taken back, which it drops by its number).
        self._last_claim = 0

    # -- lifecycle -------------------------------------------------------------------------

    def open(self, run: Run, post: Callable[[Outcome], None]) -> None:
        """Start (or reuse) the workers and the reader thread; pickle the context once.

        The workers start first: the first run of a process imports cloudpickle here (for
        the context and the functions), which takes longer than a worker's start-up, and
        both then happen at once. A context that cannot be sent still fails before any
        unit runs; the workers just started are stopped (with ``reuse``, kept).
        """
        with self._lock:
            self._run = run
            self._post = post
            self._functions: dict[int, tuple[Any, bytes | BaseException]] = {}
            self._closing = False
            self._held.clear()
            self._to_hold.clear()
            #: Attempts sent ahead (or held after that): their start is when the worker
            #: began them, stamped there, kept here until the driver settles them.
            self._sent_ahead: set[tuple[int, int]] = set()
            self._started: dict[tuple[int, int], float] = {}
            self._ended: dict[tuple[int, int], float] = {}
            # Worker stamps are its time.perf_counter(); the run's clock may be another.
            self._clock_offset = (
                0.0 if run.clock is time.perf_counter else run.clock() - time.perf_counter()
            )
            # Not when starts are listened to (the event would come early), nor under
            # fail_fast, which cancels what has not started: a queued attempt would start.
            self._send_ahead = not run.dispatcher.unit_started and not run.scheduler.fail_fast
            #: A recent attempt's typical duration in a worker; none yet: not short.
            self._typical_seconds = _SHORT_ATTEMPT
            # A unit that may be retried could come back ready before one sent ahead.
            self._may_retry = any(run.scheduler.retries)
            self._failed_starts = 0
            self._broken = None
            for worker in self._workers:  # reused: each gets this run's context and functions
                worker.has_context = False
                worker.functions = set()
            starting = self._reader is None
            if starting:
                self._wake_r, self._wake_w = os.pipe()
            self._preload = _modules_of(run)
            for _ in range(pool_size(run.graph, self.size) - len(self._workers)):
                self._spawn()
            #: How many workers the run keeps: one that dies is replaced.
            self._wanted = len(self._workers)
        if starting:
            self._reader = threading.Thread(
                target=self._read, name="quantum-partitioner-process-reader", daemon=True
            )
            self._reader.start()
        try:
            self._pickle = _load_cloudpickle()
            self._context_blob = self._pickle_context(run)
        except BaseException:
            self.close(cancel=False)
            raise

    def _pickle_context(self, run: Run) -> bytes:
        context = dict(run.context)
        try:
            return bytes(self._pickle.dumps(context))
        except Exception as error:
            for key, value in context.items():
                try:
                    self._pickle.dumps(value)
                except Exception:
                    raise TypeError(
                        f"context key {key!r} ({type(value).__name__}) cannot be sent to "
                        f"worker processes: {error}"
                    ) from error
            raise TypeError(f"the context cannot be sent to worker processes: {error}") from error

    def _spawn(self) -> None:
        """Start one worker (hold the lock)."""
        child_in, parent_out = os.pipe()
        parent_in, child_out = os.pipe()
        start_r, start_w = os.pipe()  # its stderr until it is ready
        claim_pipe = os.pipe()  # the worker reads it, and so do we: the same open file
        os.set_blocking(claim_pipe[0], False)
        try:
            console = os.dup(2)  # its stderr from then on: ours
        except OSError:  # we have none (a daemon): neither has it
            console = os.open(os.devnull, os.O_WRONLY)
        env = dict(os.environ)
        # The worker imports the caller's modules by name, so it gets the caller's path.
        env["PYTHONPATH"] = os.pathsep.join(p or str(Path.cwd()) for p in sys.path)
        env.update(self._preload)
        # ``-c``, not ``-m``: running a module as ``__main__`` imports runpy and importlib's
        # helpers first, a few milliseconds of every worker's start-up. ``-P``: no working
        # directory in front of the caller's path, which ``-c`` would add (a module there
        # would be importable, or shadow another, in a worker only; one more directory
        # searched for every import a worker makes).
        command = [sys.executable, "-P", "-c", _WORKER_PROGRAM]
        arguments = [child_in, child_out, os.getpid(), console, claim_pipe[0]]
        boot = _boot_code()
        if boot is not None and len(boot) <= _pipe_capacity(parent_out):
            arguments.append(len(boot))  # the pipe holds it all: never waits for the worker
        else:
            boot = None  # it imports them (the pipe would not hold them)
        try:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [*command, *map(str, arguments)],
                pass_fds=(child_in, child_out, console, claim_pipe[0]),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stderr=start_w,
                env=env,
            )
        except BaseException:
            for fd in (parent_out, parent_in, start_r, *claim_pipe):
                os.close(fd)
            raise
        finally:
            for fd in (child_in, child_out, start_w, console):
                os.close(fd)
        if boot is not None:  # the pipe is new and holds it all: this never waits
            unwritten = memoryview(boot)
            with contextlib.suppress(OSError):  # it died already: a failed start, as it reads
                while unwritten:
                    unwritten = unwritten[os.write(parent_out, unwritten) :]
        worker = _Worker(process, parent_out, parent_in, start_r, claim_pipe)
        if boot is not None:
            worker.written = len(boot) - len(unwritten)
        taken = {w.slot for w in self._workers}
        worker.slot = next(
            name for k in range(1, len(taken) + 2) if (name := f"process slot {k}") not in taken
        )  # the lowest free one: a replacement takes the slot of the worker it replaces
        worker.spawned_at = self._run.clock()
        self._workers.append(worker)
        self._wake_reader()

    def _wake_reader(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self, *, cancel: bool) -> None:
        """End the run: keep idle workers if reusing, else stop them all."""
        run = self._run
        with self._lock:
            for worker in self._workers:  # still starting: its start-up lasted the run out
                if worker.spawned_at is not None:
                    run.worker_startups.append((worker.slot, worker.spawned_at, run.clock()))
                    worker.spawned_at = None
            # Stopped without being abandoned one by one (an interrupt): those still held or
            # waiting in a worker never started.
            for worker in self._workers:
                self._held.extend(_take_back(worker, len(worker.claims)))
            for i, _ in self._held:
                run.scheduler.never_began(i)
            self._held.clear()
        if self.reuse and not cancel:
            with self._lock:
                busy = [w for w in self._workers if w.jobs]
            for worker in busy:  # cannot happen after a finished run; be safe anyway
                _kill(worker)
            self._await_burials()
            return
        self.shutdown(kill=cancel)

    def _await_burials(self) -> None:
        """Wait until the reader has buried the workers killed during the run (kept ones).

        The last answers a killed worker sent may still be in its pipe, and reading them
        can correct the start of an attempt stopped in it (see :meth:`_answered`): the run's
        record is final only once they are read, before ``execute`` returns.
        """
        stop_by = time.monotonic() + _STOP_SECONDS
        with self._lock:
            while any(w.killed for w in self._workers):
                left = stop_by - time.monotonic()
                if left <= 0:
                    LOGGER.warning("PROCESS backend: a killed worker was not buried in time")
                    return
                self._buried.wait(left)

    def shutdown(self, *, kill: bool = False) -> None:
        """Stop every worker: politely when idle, by killing when busy or ``kill``."""
        with self._lock:
            if self._reader is None:
                return
            self._closing = True
            workers = list(self._workers)
        cancel = kill
        for worker in workers:
            if cancel or worker.jobs or not worker.ready:
                _kill(worker)
            else:
                with contextlib.suppress(OSError):
                    send_frame(worker.inbox, pickle.dumps(("stop",)))
        stop_by = time.monotonic() + _STOP_SECONDS  # they were all told at once
        try:
            for worker in workers:
                try:
                    _wait_exit(worker, max(0.0, stop_by - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _kill(worker)
                    worker.process.wait()
        except BaseException:  # Ctrl-C while they finish what their units left: stop them
            for worker in workers:
                _kill(worker)
            for worker in workers:
                worker.process.wait()
            raise
        finally:
            self._wake_reader()
            self._reader.join(timeout=5)
            for worker in workers:
                _close_pipes(worker)
                _close_pidfd(worker)
                _close_start_stderr(worker)
            os.close(self._wake_r)
            os.close(self._wake_w)
            with self._lock:
                self._workers = []
                self._reader = None

    # -- the driver's side -----------------------------------------------------------------

    def has_room(self) -> bool:
        """Whether an attempt can go to a worker now (waiting attempts take idle workers first).

        Replaces the workers that died first.

        A started worker that is idle always has room; it takes first an attempt held in
        the driver, else the oldest attempt waiting in another worker (taken back from it).
        A worker that runs an attempt has room too if the next unit to start may be sent
        ahead and fewer than the attempts allowed wait behind it (see :meth:`_ahead_room`).

        Raises:
            BrokenBackendError: Workers keep exiting before they are ready; says why.
        """
        while True:
            with self._lock:
                for job in self._to_hold:  # held by the reader: the scheduler is ours
                    self._run.scheduler.hold(*job)
                self._to_hold.clear()
                self._replace_dead()
                if self._broken is not None:
                    raise BrokenBackendError(self._broken)
                idle = any(_idle(w) for w in self._workers)
                if idle and not self._held:
                    self._take_back_oldest()
                if not idle or not self._held:
                    if idle or self._held:
                        return idle
                    room = self._ahead_room(self._run.scheduler.peek_next(self.index))
                    return room > 0 and any(_may_wait_in(w, room) for w in self._workers)
                i, attempt = self._held.popleft()
                # Its timeout counts from now, when an idle worker gets it (see _hold).
                self._run.scheduler.begin(i, attempt, self._run.clock())
            self.submit(i, attempt)

    def _take_back_oldest(self) -> None:
        """Take back the oldest attempt waiting in a busy worker, into ``_held`` (hold the lock).

        For a worker that went idle: the attempts waiting in others were started first by
        the scheduler, so they go before any ready unit, and no worker idles while another
        holds attempts it has not begun (the end of a run most of all).
        """
        while True:
            worker = min(
                (w for w in self._workers if w.claims),
                key=lambda w: next(iter(w.claims)),
                default=None,
            )
            if worker is None:
                return
            taken = _take_back(worker, 1)
            if taken:
                self._held.extend(taken)
                return

    def _replace_dead(self) -> None:
        """Start a worker for each that died (hold the lock)."""
        while not self._closing and self._broken is None and len(self._workers) < self._wanted:
            try:
                self._spawn()
            except OSError as error:  # out of processes or descriptors
                self._broken = f"cannot start a worker process: {error}"
                LOGGER.exception("PROCESS backend: %s", self._broken)

    def _ahead_room(self, i: int) -> int:
        """How many attempts may wait in a busy worker if unit ``i`` is sent ahead, or 0.

        (Hold the lock.) None unless the unit's promises hold when it waits: it has no
        timeout and takes no limit (both count from the real start, which a queued attempt
        has not had yet), nobody listens to starts (a start event would come before the
        start), and the run is not ``fail_fast``. While the run's attempts are short, the
        round trip to the driver is a large part of each: ``_SEND_AHEAD``. Longer ones: one,
        and only while no unit can become ready that the scheduler would start before ``i``
        (which would wait behind it, maybe a whole attempt): every unit left is ready or
        running (ready ones come after ``i``: it is the best of them), no map can add items
        and no unit may be retried.
        """
        if i < 0 or not self._send_ahead:
            return 0
        run = self._run
        if run.scheduler.timeouts[i] is not None or run.graph.units[i]._options.limits:
            return 0
        if self._typical_seconds < _SHORT_ATTEMPT:
            return _SEND_AHEAD
        sched = run.scheduler
        settled = sched.terminal + sched.running + sched.ready_count == len(sched.state)
        return 1 if settled and not self._may_retry and not sched.maps else 0

    def submit(self, i: int, attempt: int) -> None:
        """Send the attempt to an idle worker, or behind a busy one's; fail it if unpicklable."""
        run = self._run
        unit = run.graph.units[i]
        job = (i, attempt)
        with self._lock:
            worker = next((w for w in self._workers if _idle(w)), None)
            claim = 0
            if worker is None and (room := self._ahead_room(i)):
                worker = min(
                    (w for w in self._workers if _may_wait_in(w, room)),
                    key=lambda w: len(w.jobs),
                    default=None,
                )
                if worker is not None:  # its start is the worker's to say
                    self._sent_ahead.add(job)
                    self._last_claim = claim = self._last_claim + 1
            if worker is None:  # the idle worker has_room() saw has died since
                self._hold(job)
                return
            worker.jobs.append(job)
            worker.sending = job
        try:
            messages = self._messages_for(worker, i, attempt, claim)
        except Exception as error:
            with self._lock:
                _forget(worker, job)
                self._sent(worker, job, reached=False)
            self._post((i, attempt, False, error, None))
            return
        if claim and sum(map(len, messages)) > _SENT_AHEAD_BYTES:
            # A write the pipe cannot hold would stop the driver (its timeouts, outcomes,
            # cancellation) until the attempt ahead ends: it waits for an idle worker here
            # instead, before any other (its start is still the worker's stamp).
            with self._lock:
                _forget(worker, job)
                self._sent(worker, job, reached=False)
                self._hold(job)
            return
        run.attempt_workers[i, attempt] = worker.slot
        reached, written = True, 0
        try:
            if claim:  # before the attempt, which the worker runs only once it took this
                with self._lock:  # with its record: a worker buried now gets neither or both
                    worker.claims[claim] = job
                    os.write(worker.claim_w, claim.to_bytes(CLAIM_BYTES, "big"))
            written = send_frames(worker.inbox, messages)
        except OSError:  # the worker died before it had the attempt: it never started
            reached = False
        else:
            worker.has_context = True
            worker.functions.add(id(unit.function))
        with self._lock:
            if reached:
                worker.written += written
                if not claim:
                    worker.unclaimed = (job, worker.written)
            self._sent(worker, job, reached=reached)

    def _sent(self, worker: _Worker, job: tuple[int, int], *, reached: bool) -> None:
        """The driver is done writing ``job`` to ``worker``, which it ``reached`` or not.

        (Hold the lock.) A worker the reader buried meanwhile left the attempt to this
        (see :meth:`_bury`): one that never reached it, or never read all of it, never
        started, so it waits for another worker, its attempt number (retry budget)
        untouched, as those queued in a dead worker do; one that read it may have started:
        it died with the worker.
        """
        worker.sending = None
        buried = worker.exitcode is not None
        if job in worker.jobs:  # else taken back (never started), or failed to pickle
            if not reached or (buried and _never_read(worker, job)):
                _forget(worker, job)
                worker.ready = False  # it is dying: the reader buries it, without this one
                self._hold(job)
            elif buried:
                worker.jobs.remove(job)
                self._died(worker, [job])
        if buried:  # the reader left the inbox open for this write
            with contextlib.suppress(OSError):
                os.close(worker.inbox)
            worker.inbox = -1

    def _hold(self, job: tuple[int, int]) -> None:
        """Keep an attempt in the driver until a worker is idle (hold the lock).

        It starts when that worker begins it, maybe much later (a worker being replaced
        starts first): as for one sent ahead, its start is the worker's stamp, not the
        moment it was first handed to the lane; and its timeout counts only from when
        :meth:`has_room` gives it to that worker (the scheduler holds it until then).
        Called by the driver's thread only (``submit``), which owns the scheduler.
        """
        self._sent_ahead.add(job)
        self._held.append(job)
        self._run.scheduler.hold(*job)

    def _messages_for(self, worker: _Worker, i: int, attempt: int, claim: int) -> list[bytes]:
        run = self._run
        unit = run.graph.units[i]
        name = run.graph.names[i]  # a map item's unit is its map's: its name is its own
        messages = []
        if not worker.has_context:
            messages.append(pickle.dumps(("context", self._context_blob)))
        key = id(unit.function)
        if key not in worker.functions:
            messages.append(
                pickle.dumps(("function", key, self._function_blob(name, unit.function)))
            )
        inputs, upstream = run.inputs_of(i)
        item = run.item_of(i)
        try:
            blob = self._pickle.dumps(
                (inputs, upstream, item) if upstream or item is not None else inputs
            )
        except Exception as error:
            culprit = next(
                (key for key, value in inputs.items() if not _picklable(self._pickle, value)),
                None,
            )
            if culprit is not None:
                what = f"the result of its dependency {culprit!r}"
            elif item is not None and not _picklable(self._pickle, item[1]):
                what = f"its item (ctx.item, {type(item[1]).__name__})"
            else:
                what = "why its dependencies have no result (ctx.upstream_errors)"
            raise TypeError(
                f"unit {name!r}: {what} cannot be sent to a worker process: {error}"
            ) from error
        messages.append(pickle.dumps(("run", i, attempt, key, name, blob, claim)))
        return messages

    def _function_blob(self, unit_id: str, function: Any) -> bytes:
        key = id(function)
        cached = self._functions.get(key)
        if cached is None:
            try:
                blob: bytes | BaseException = bytes(self._pickle.dumps(function))
            except Exception as error:
                blob = error
            cached = (function, blob)  # holding the function keeps its id unique
            self._functions[key] = cached
        blob = cached[1]
        if isinstance(blob, BaseException):
            raise TypeError(
                f"unit {unit_id!r}: its function {function!r} cannot be sent to a worker "
                f"process: {blob}"
            ) from blob
        return blob

    def abandon(self, i: int, attempt: int) -> None:
        """Stop that attempt: take it back if it has not started, else kill its worker."""
        job = (i, attempt)
        with self._lock:
            self._started.pop(job, None)
            self._ended.pop(job, None)
            sent_ahead = job in self._sent_ahead
            self._sent_ahead.discard(job)
            if job in self._held:
                self._held.remove(job)  # held: it never started
                self._run.scheduler.never_began(i)
                return
            worker = next((w for w in self._workers if job in w.jobs), None)
            if worker is None:
                return
            # Those still waiting in it (the pipe gives them in order): they never start
            # there; the others go to the next idle worker, first.
            waiting = (
                _take_back(worker, len(worker.claims)) if job in worker.claims.values() else []
            )
            self._held.extendleft(reversed([other for other in waiting if other != job]))
            if job in waiting:  # it never started
                self._run.scheduler.never_began(i)
                return
            # It may be running (those behind it that wait were just taken back).
            self._held.extend(_take_back(worker, len(worker.claims)))
            jobs = worker.jobs
            went_on = list(jobs).index(job) + 1 < len(jobs)
            jobs.remove(job)  # its outcome, should one come, is an abandoned one's: ignored
            if went_on:
                # The worker took the number of one behind it, which it does only once this
                # one has ended: there is nothing to stop, and the one it went on to runs on.
                return
            worker.ready = False  # never hand it another attempt
            _kill(worker)
            if sent_ahead:  # it ran from then to now
                worker.unsure_start = (i, attempt, self._run.scheduler.started[i])
                self._run.scheduler.started[i] = self._began_at(worker, i)

    def _began_at(self, worker: _Worker, i: int) -> float:
        """When unit ``i``'s attempt sent ahead to ``worker`` began, which no outcome said.

        (Hold the lock.) When the worker was done with the attempt before it, or when it was
        sent if the worker was done before then.
        """
        return max(self._run.scheduler.started[i], worker.last_answer)

    def _answered(self, worker: _Worker, at: float) -> None:
        """The worker ended or dropped an attempt ``at`` (the run's clock; hold the lock).

        That also corrects the start of an attempt stopped in it since (``unsure_start``):
        the worker sent this answer, then began that one; the stop came before the driver
        read the answer, so it took the start from what it knew then (when it was sent,
        which may be long before). The reader reads a dead worker's last answers before it
        buries it, and the end of a run that stops its workers waits for that.
        """
        worker.last_answer = at
        if worker.unsure_start is None:
            return
        i, attempt, sent = worker.unsure_start
        sched = self._run.scheduler
        if sched.attempts[i] != attempt:
            return
        began = max(sent, worker.last_answer)
        if sched.state[i].is_terminal:
            began = min(began, sched.ended[i])
        sched.started[i] = began

    def ended_at(self, i: int, attempt: int) -> float:
        """When the worker ended that attempt, or when it was found dead, or -1 if unknown."""
        return self._ended.pop((i, attempt), -1.0)

    def settled(self, i: int, attempt: int) -> None:
        """Record when an attempt sent ahead really started: its worker's stamp.

        (Others started when the driver sent them, which is what their timeout and limits
        count from.)
        """
        started = self._started.pop((i, attempt), None)
        if started is not None:
            self._run.scheduler.started[i] = started

    # -- the reader thread -----------------------------------------------------------------

    def _read(self) -> None:
        while True:
            with self._lock:
                if self._closing and not self._workers:
                    return
                # Each descriptor: its worker, and what it is to it.
                watched: dict[int, tuple[_Worker, int]] = {}
                for w in self._workers:
                    watched[w.outbox] = (w, _OUTBOX)
                    if w.start_stderr >= 0:
                        watched[w.start_stderr] = (w, _START_LOG)
                    if w.exited >= 0:
                        watched[w.exited] = (w, _EXITED)
                # Without a pidfd, a worker's exit is looked for every so often.
                unwatched = [w for w in self._workers if w.exited < 0]
                due = [w.start_deadline for w in self._workers if w.start_deadline is not None]
            waits = [min(due) - time.monotonic()] if due else []
            if unwatched:
                waits.append(_EXIT_CHECK_SECONDS)
            timeout = max(0.0, min(waits)) if waits else None
            ready = _readable([*watched, self._wake_r], timeout)
            if due:
                self._kill_late_starters()
            for fd in ready:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    continue
                worker, kind = watched[fd]
                if kind == _START_LOG:
                    if fd == worker.start_stderr:  # not closed (and reused) since
                        _read_start_log(worker)
                elif kind == _EXITED:
                    if fd == worker.exited and worker.outbox >= 0:  # not buried since
                        self._bury_exited(worker)
                elif fd == worker.outbox and not self._pass_on(worker):  # else buried since
                    self._bury(worker)
            for worker in unwatched:
                if worker.outbox >= 0 and worker.process.poll() is not None:
                    self._bury_exited(worker)
            with self._lock:
                done = self._closing and all(w.process.poll() is not None for w in self._workers)
                left = list(self._workers) if done else []
            if done:
                # Each one's last answers (what it sent before it exited, which this loop
                # may not have woken for yet) make the run's record final: read them now.
                for worker in left:
                    if worker.outbox >= 0:
                        self._bury_exited(worker)
                return

    def _pass_on(self, worker: _Worker) -> bool:
        """Read the worker's outbox once and take its messages; False at its end.

        Bytes that are no message (a unit wrote into a descriptor it does not own) end it
        too: the worker is killed, and its unit fails with it, saying why, as this thread
        must go on. So does a header that claims more than any message can hold, which
        would have this thread wait for ever for the rest.
        """
        try:
            frames = worker.reader.read()
        except (EOFError, OSError):  # BlockingIOError too: drained (see _bury_exited)
            return False
        except FrameError as error:
            self._corrupted(worker, str(error))
            return False
        for frame in frames:
            try:
                self._receive(worker, pickle.loads(frame))  # noqa: S301 - our own worker
            except Exception as error:
                self._corrupted(worker, f"a message that cannot be loaded ({error!r})")
                return False
        return True

    def _corrupted(self, worker: _Worker, what: str) -> None:
        """Kill a worker that wrote ``what`` into its pipe to the driver; it is replaced."""
        reason = (
            f"it wrote {what} into its pipe to the driver (a unit writing to a descriptor "
            "it does not own?)"
        )
        LOGGER.error("PROCESS backend: a worker %s; it is replaced", reason)
        with self._lock:
            worker.ready = False
            worker.corrupted = reason
        _kill(worker)

    def _bury_exited(self, worker: _Worker) -> None:
        """The worker exited: take what it sent before it did, then bury it.

        Its outbox may never reach its end: a child the unit forked (``os.fork``, a
        ``fork`` multiprocessing helper) holds it open, maybe for a long time. So the exit
        itself says it died, and its outbox is read only for what is there.
        """
        with contextlib.suppress(OSError):
            os.set_blocking(worker.outbox, False)
        while self._pass_on(worker):
            pass
        self._bury(worker)

    def _receive(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            run = self._run
            if worker.spawned_at is not None:  # shown as its own slice, on its slot's track
                run.worker_startups.append((worker.slot, worker.spawned_at, run.clock()))
                worker.spawned_at = None
            # The worker switched to our stderr before it said so: what it wrote until
            # then is all in the pipe, and belongs on our stderr too.
            _drain_start_log(worker)
            if worker.start_log:
                with contextlib.suppress(OSError):
                    os.write(2, worker.start_log)
            worker.start_log = bytearray()
            with self._lock:
                worker.started = worker.ready = True
                worker.start_deadline = None
                self._failed_starts = 0
            self._post(None)  # the driver may have work for it
            return
        if kind == "dropped":
            with self._lock:
                self._answered(worker, message[3] + self._clock_offset)
                worker.dropping = max(0, worker.dropping - 1)
                idle = _idle(worker)
            if idle:
                self._post(None)  # the driver may have work for it
            return
        _, i, attempt, started, ended = message[:5]
        job = (i, attempt)
        with self._lock:
            self._answered(worker, ended + self._clock_offset)
            if job not in worker.jobs:
                return  # an abandoned attempt's late answer
            _forget(worker, job)
            if job in self._sent_ahead:
                self._sent_ahead.discard(job)
                self._started[job] = started + self._clock_offset
            # Its end as the worker saw it: the next attempt sent ahead to the worker may
            # have started before this outcome reached the driver.
            self._ended[job] = ended + self._clock_offset
            self._typical_seconds += (ended - started - self._typical_seconds) * 0.25
        if kind == "ok":
            _, _, _, _, _, blob, metrics = message
            try:
                value = pickle.loads(blob)  # noqa: S301 - our own worker's bytes
            except Exception as error:
                self._post((i, attempt, False, error, None))
                return
            except BaseException as error:  # SystemExit...: it would end this thread
                note = RuntimeError(
                    f"unit {self._run.graph.names[i]!r}: loading its result raised {error!r}"
                )
                note.__cause__ = error
                self._post((i, attempt, False, note, None))
                return
            self._post((i, attempt, True, value, metrics))
        else:
            self._post((i, attempt, False, _rebuild_error(message), message[8]))

    def _bury(self, worker: _Worker) -> None:
        """A worker's pipe closed: it died. Fail its attempt; the driver replaces it.

        The driver starts the replacement (:meth:`has_room`) after it has recorded this
        failure, so the replacement's start-up never begins before the attempt's end.

        The worker never closes that pipe itself: it closes as the worker exits. One still
        alive a moment later had it closed by a unit, and can never answer: it is killed
        at once (this thread reads every worker: no wait of its own may hold it up).
        """
        try:
            exitcode = _wait_exit(worker, _EXITING_SECONDS)
        except subprocess.TimeoutExpired:
            with self._lock:
                worker.corrupted = worker.corrupted or (
                    "its pipe to the driver closed while it ran (a unit closing a descriptor "
                    "it does not own?)"
                )
            _kill(worker)
            exitcode = worker.process.wait()
        _drain_start_log(worker)
        with self._lock:
            worker.exitcode = exitcode
            if worker in self._workers:
                self._workers.remove(worker)
                self._buried.notify_all()
            # Those it had not begun go to the replacement; the one it ran (at most one: it
            # sent the outcome of each before it took the next) failed with it. One the
            # driver is writing to it is the driver's to settle (see _sent).
            self._held.extend(_take_back(worker, len(worker.claims)))
            died = [job for job in worker.jobs if job != worker.sending]
            worker.jobs = deque(job for job in worker.jobs if job == worker.sending)
            unread = [job for job in died if _never_read(worker, job)]
            for job in unread:  # it died before it read all of that attempt
                died.remove(job)
                self._sent_ahead.add(job)  # its start is the next worker's stamp
                self._held.append(job)
                self._to_hold.append(job)  # its timeout waits too (see has_room)
            self._died(worker, died)
            if not worker.started and not self._closing:
                self._failed_start(worker, exitcode)
            closing = self._closing
            sending = worker.sending is not None
        _close_pipes(worker, keep_inbox=sending)
        if not closing:  # else shutdown() may be waiting on it: it closes it after
            _close_pidfd(worker)
        if not died and not closing:
            self._post(None)  # the driver replaces it (or raises why it cannot)

    def _died(self, worker: _Worker, died: list[tuple[int, int]]) -> None:
        """Fail the attempts that died with the buried ``worker`` (hold the lock).

        They ended now, before its replacement may start (the driver may start one before
        it takes this failure): on their slot, one after the other.
        """
        now = self._run.clock()
        for job in died:
            self._ended[job] = now
            if job in self._sent_ahead:
                self._sent_ahead.discard(job)
                self._started[job] = self._began_at(worker, job[0])
        assert worker.exitcode is not None
        for i, attempt in died:
            error = WorkerDiedError(self._run.graph.names[i], worker.exitcode, worker.corrupted)
            self._post((i, attempt, False, error, None))

    def _kill_late_starters(self) -> None:
        """Kill the workers not ready in time: the reader buries them as failed starts."""
        now = time.monotonic()
        with self._lock:
            for worker in self._workers:
                if worker.start_deadline is not None and now >= worker.start_deadline:
                    worker.start_deadline = None
                    worker.late = True
                    _kill(worker)

    def _failed_start(self, worker: _Worker, exitcode: int) -> None:
        """A worker exited before it was ready: log why; give up after too many (hold the lock)."""
        self._failed_starts += 1
        log = bytes(worker.start_log).decode("utf-8", "replace").strip()
        ended = (
            f"was not ready within {_START_TIMEOUT:g} s and was killed"
            if worker.late
            else describe_exit(exitcode)
        )
        why = f"{ended}, " + (f"its stderr ending:\n{log}" if log else "with nothing on stderr")
        LOGGER.warning("PROCESS backend: a worker exited before it was ready (%s)", why)
        if self._failed_starts >= _MAX_FAILED_STARTS:
            self._broken = (
                f"worker processes cannot start: {self._failed_starts} in a row exited before "
                f"they were ready; the last one {why}"
            )


def _read_start_log(worker: _Worker) -> bool:
    """Keep the end of what a starting worker writes on stderr; close the pipe at its end.

    Returns whether there may be more to read.
    """
    try:
        data = os.read(worker.start_stderr, 65536)
    except BlockingIOError:
        return False
    except OSError:
        data = b""
    if not data:
        _close_start_stderr(worker)
        return False
    worker.start_log += data
    del worker.start_log[:-_START_LOG_BYTES]
    return True


def _drain_start_log(worker: _Worker) -> None:
    """Read what is left in a worker's start-up stderr (it no longer writes there)."""
    if worker.start_stderr < 0:
        return
    os.set_blocking(worker.start_stderr, False)  # a child of its own may still hold it
    while _read_start_log(worker):
        pass
    _close_start_stderr(worker)


def _close_pipes(worker: _Worker, *, keep_inbox: bool = False) -> None:
    """Close the worker's pipes; with ``keep_inbox``, all but the one the driver writes to."""
    for fd in (worker.outbox, worker.claim_r, worker.claim_w):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    worker.outbox = worker.claim_r = worker.claim_w = -1
    if not keep_inbox:
        if worker.inbox >= 0:
            with contextlib.suppress(OSError):
                os.close(worker.inbox)
        worker.inbox = -1


def _close_pidfd(worker: _Worker) -> None:
    if worker.exited >= 0:
        with contextlib.suppress(OSError):
            os.close(worker.exited)
        worker.exited = -1


def _readable(fds: list[int], timeout: float | None) -> list[int]:
    """Those of ``fds`` that can be read (or are at their end), waiting up to ``timeout`` s.

    A ``poll`` per call: no bound on descriptor numbers (``select`` stops at 1024), and about
    4 µs for a few pipes where ``multiprocessing.connection.wait`` took 25-30 µs (it builds a
    selector each time). The reader thread pays it once per outcome it passes on, holding
    the GIL that the driver, just woken by that outcome, waits for.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)]


def _open_pidfd(pid: int) -> int:
    """A descriptor that becomes readable when process ``pid`` exits, or -1 (none here).

    Opened as the worker starts: only we reap it, so ``pid`` is still that worker's.
    """
    pidfd_open = getattr(os, "pidfd_open", None)  # Linux 5.3+
    if pidfd_open is None:
        return -1
    try:
        fd: int = pidfd_open(pid)
    except OSError:  # a kernel without pidfds, or a sandbox refusing them
        return -1
    return fd


def _wait_exit(worker: _Worker, timeout: float) -> int:
    """Reap a worker that is exiting, and kill its process group; its exit status.

    The group is what the worker's units started (outside a session of their own): it goes
    with the worker however the worker ended, crash, kill or stop, as it goes on a timeout.

    ``Popen.wait(timeout)`` polls, sleeping twice as long between looks each time (up to
    50 ms): a worker that takes 5 ms to exit after ``stop`` (the interpreter's finalization)
    was reaped after 7.5 ms, one that takes 8 ms after 15.5 ms, and every run with a fresh
    pool ended that much later. Waiting on the worker's pidfd wakes the moment it exits.

    Raises:
        subprocess.TimeoutExpired: It has not exited within ``timeout`` seconds.
    """
    fd = worker.exited
    if fd < 0:
        exitcode = worker.process.wait(timeout=timeout)
        _kill_group(worker.process.pid)
        return exitcode
    if worker.process.returncode is None and not _readable([fd], timeout):
        raise subprocess.TimeoutExpired(worker.process.args, timeout)
    # It has exited. Its group is killed before it is reaped: the number is still its own.
    _kill_group(worker.process.pid)
    # This returns at once (after the reader thread, if it reaps it first).
    return worker.process.wait()


def _close_start_stderr(worker: _Worker) -> None:
    if worker.start_stderr >= 0:
        with contextlib.suppress(OSError):
            os.close(worker.start_stderr)
        worker.start_stderr = -1


@functools.cache
def _boot_code() -> bytes | None:
    """The code of the modules a worker starts from (``_BOOT_MODULES``), for it to run.

    ``marshal`` of ``(name, path, code)`` per module, got once per process from the
    modules' loaders: from their bytecode cache, or compiled. A worker would otherwise find
    and read each module, and compile it wherever the interpreter keeps no bytecode
    (``PYTHONDONTWRITEBYTECODE``, a read-only install): the compile was a third of its
    start-up. None if a loader cannot say (the workers import them).
    """
    modules = []
    try:
        for name in _BOOT_MODULES:
            spec: Any = sys.modules[name].__spec__
            modules.append((name, spec.origin, spec.loader.get_code(name)))
        return marshal.dumps(tuple(modules))
    except Exception:  # a loader without code (a frozen application): workers import them
        return None


@functools.cache
def _max_message_bytes() -> int:
    """The most a worker's message can hold: this machine's memory.

    A worker builds each message whole before it sends it, so a header claiming more comes
    from bytes that are no message: waiting for the rest would wait for ever.
    """
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not known here: what 64-bit can address
        return 1 << 48


def _pipe_capacity(fd: int) -> int:
    """How many bytes the pipe ``fd`` writes to holds unread, or 0 where that is unknown."""
    get_size = getattr(fcntl, "F_GETPIPE_SZ", None)  # Linux
    if get_size is None:
        return 0
    try:
        size: int = fcntl.fcntl(fd, get_size)
    except OSError:
        return 0
    return size


def _modules_of(run: Run) -> dict[str, str]:
    """The modules the run's functions live in, for workers to import as they start.

    Returned as the worker's environment entry that names them.

    Importing them is part of a worker's start-up, not of the first unit it runs. Functions
    of ``__main__`` travel by value, so that module is never imported.
    """
    modules: set[str] = set()
    seen: set[int] = set()
    for unit in run.graph.units:
        fn: Any = unit.function
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        while isinstance(fn, functools.partial):
            fn = fn.func
        module = getattr(fn, "__module__", None)
        if isinstance(module, str) and module != "__main__":
            modules.add(module)
    # The worker module needs cloudpickle, which open() has just found.
    from .._process_worker import PRELOAD_VARIABLE  # noqa: PLC0415

    return {PRELOAD_VARIABLE: ",".join(sorted(modules))}


def _take_back(worker: _Worker, most: int) -> list[tuple[int, int]]:
    """Take up to ``most`` attempts that wait in ``worker`` back from it, oldest first.

    (Hold the lock.) Each is one whose claim number was still in the worker's claim pipe:
    taken out, the worker drops that attempt, which never starts there. The numbers the
    worker took before it are of attempts it has started: they stay its own.
    """
    taken: list[tuple[int, int]] = []
    claims = worker.claims
    while claims and len(taken) < most:
        try:
            data = os.read(worker.claim_r, CLAIM_BYTES)
        except OSError:  # BlockingIOError: it took every number itself
            data = b""
        if not data:
            claims.clear()
            break
        number = int.from_bytes(data, "big")
        for older in [c for c in claims if c < number]:  # the worker took those: started
            del claims[older]
        job = claims.pop(number, None)
        if job is not None:  # else sent to a worker that died meanwhile: held already
            taken.append(job)
            worker.jobs.remove(job)
            worker.dropping += 1
    return taken


def _idle(worker: _Worker) -> bool:
    """Whether the worker may be given an attempt without a claim number (hold the lock)."""
    return worker.ready and not worker.jobs and not worker.dropping


def _may_wait_in(worker: _Worker, room: int) -> bool:
    """Whether another attempt may wait in the busy ``worker`` (hold the lock).

    Fewer than ``room`` may wait in its pipe unread, counting those taken back that it has
    not dropped yet: a busy worker reads nothing, so their messages are still there (taken
    back one by one, stolen or cancelled, they filled the pipe and the driver's next write
    waited for the attempt ahead to end).
    """
    return worker.ready and len(worker.jobs) + worker.dropping <= room


def _never_read(worker: _Worker, job: tuple[int, int]) -> bool:
    """Whether the dead ``worker`` never read all of ``job``, sent without a claim number.

    (Hold the lock; its inbox still open.) What it did not read is still in the pipe: if
    that reaches into the attempt's messages, the worker never had the attempt whole, so
    it never started it. (One it read may have started, even if it died at once.)
    """
    if worker.unclaimed is None or worker.unclaimed[0] != job or worker.inbox < 0:
        return False
    try:
        answer = fcntl.ioctl(worker.inbox, termios.FIONREAD, bytes(4))  # either end answers
    except OSError:
        return False
    unread = int.from_bytes(answer, sys.byteorder)
    return worker.written - unread < worker.unclaimed[1]


def _forget(worker: _Worker, job: tuple[int, int]) -> None:
    """The worker no longer holds that attempt (hold the lock)."""
    with contextlib.suppress(ValueError):
        worker.jobs.remove(job)
    for number in [c for c, j in worker.claims.items() if j == job]:
        del worker.claims[number]


def _rebuild_error(message: tuple[Any, ...]) -> BaseException:
    blob, description, text = message[5:8]
    error: BaseException
    try:
        error = pickle.loads(blob) if blob is not None else RemoteUnitError(description)  # noqa: S301
    except BaseException:  # SystemExit too: the reader thread must go on
        error = RemoteUnitError(description)
    error.__cause__ = RemoteTraceback(text)
    return error


def _picklable(pickler: Any, value: Any) -> bool:
    try:
        pickler.dumps(value)
    except Exception:
        return False
    return True


def _kill(worker: _Worker) -> None:
    """Kill a worker and whatever its unit started (its whole process group)."""
    worker.killed = True
    _kill_group(worker.process.pid)


def _kill_group(worker_pid: int) -> None:
    """Kill the process group a worker leads, the worker exited or not.

    Its members are the processes its units started (outside a session of their own).
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker_pid, signal.SIGKILL)


class ProcessBackend(LaneBackend):
    """Run attempts in worker processes (see the module docstring).

    Args:
        max_workers: How many worker processes (default: the number of CPUs).
        reuse: Keep the workers between runs, so later runs skip their start-up; stop
            them with :meth:`close` (or use the backend as a context manager). Without it,
            each run starts and stops its own workers. The runs take turns: one started
            while another runs on the backend raises ``RuntimeError``.

    .. versionadded:: 0.1
    """

    def __init__(self, max_workers: int | None = None, *, reuse: bool = False) -> None:
        """Create the backend; workers start with the first run."""
        self.lane = ProcessLane(max_workers, reuse=reuse)
        super().__init__([self.lane], name="process")
        # Workers left by a forgotten backend are stopped with it (they also exit if this
        # process dies).
        self._finalizer = weakref.finalize(self, self.lane.shutdown)

    def close(self) -> None:
        """Stop the kept workers (each time: a run after ``close()`` starts new ones)."""
        self.lane.shutdown()

    def __enter__(self) -> Self:
        """Use the backend for several runs."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the kept workers."""
        self.close()
