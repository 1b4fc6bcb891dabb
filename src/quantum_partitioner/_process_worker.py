"""The program a PROCESS-mode worker runs: receive attempts, run them, send outcomes back.

Started by :mod:`.backends._processes` as ``python -c PROGRAM IN_FD OUT_FD PARENT STDERR_FD
CLAIM_FD [BOOT_BYTES]``, where the program runs :func:`main` (after the code of this package's
modules it starts from, ``BOOT_BYTES`` of it, read from ``IN_FD``: see ``_WORKER_PROGRAM``
there), it never imports the caller's ``__main__`` (functions from there travel by value,
pickled with cloudpickle). Its protocol: frames (:func:`send_frames`,
:class:`FrameReader`), each one pickled tuple whose first item says what it is:

parent → worker: ``("context", blob)`` once per run, ``("function", key, blob)`` once
per function, ``("run", index, attempt, key, unit_id, inputs_blob, claim)`` per attempt,
``("stop",)``. New kinds of message, or new trailing items, extend it; the worker ignores a
kind it does not know. A function or a context it cannot load (whatever unpickling raises)
fails the units that need it, with that reason, when their turn comes: the worker goes on.

The parent may send attempts ahead: the worker queues them and runs them in the order they
came. Such an attempt has a ``claim`` number (0 for the others) and the parent wrote that
number (:data:`CLAIM_BYTES`, big-endian) into the *claim pipe* (``CLAIM_FD``, non-blocking)
before it sent the attempt. The worker and the parent both read that pipe: before it starts
an attempt sent ahead, the worker takes the next number out of it, and the parent takes
numbers out to take attempts back (to give them to an idle worker, or because they were
cancelled). The pipe hands each number to exactly one of them, so an attempt is either
started here or taken back, never both, and the parent knows which at once, without
waiting for this worker (which may be busy for a long time in a unit). Numbers leave the
pipe in the order they went in: the worker runs the attempt whose number it took and drops
the attempts queued before it (taken back); finding the pipe empty, it drops the attempt
(taken back too).

Before it says it is ready, the worker imports the modules named (comma-separated) in the
environment variable ``QUANTUM_PARTITIONER_PRELOAD``: the modules the run's functions come
from, so that importing them is the worker's start-up and not the first unit's time.

worker → parent: ``("ready", pid)``, then per attempt ``("ok", index, attempt, started,
ended, result_blob, metrics)``, ``("error", index, attempt, started, ended,
exception_blob_or_None, description, traceback_text, pauses)`` or, for one taken back that
it dropped, ``("dropped", index, attempt, when)``, where ``started`` and ``ended`` (and
``when``) are the worker's ``time.perf_counter()`` when the attempt really started and
ended (was dropped), and ``pauses`` holds the attempt's ``ctx.pause_limit`` calls (as
metrics) or is None.

Start-up is most of what a short-lived worker costs, so this module imports only what every
worker needs before it is ready: the interpreter's own modules, ``_pickle`` and the unit
context (and the garbage collector is off until it is ready: imports make little
garbage). ``cloudpickle`` is imported when something needs it (a function sent by value
loads it; a result that plain pickle cannot send), ``traceback`` when a unit fails,
``asyncio`` when a unit returns a coroutine.

Anything the unit prints goes to stderr: stdout is not the protocol channel, but keeping the
two apart means no unit can corrupt the stream. Until the worker is ready its stderr is a
pipe to the parent (so a worker that cannot start can say why); then it becomes
``STDERR_FD``, the parent's own stderr. A watchdog thread exits the worker if its parent
dies, so no worker outlives the program that started it; a worker whose parent is gone
exits quietly, without a traceback on the terminal. Told to stop, it waits for the threads
its units left running (not daemons; thread pools' queued work too), runs the
:mod:`atexit` handlers its units registered, flushes its console and exits at once,
without the interpreter's teardown (objects still alive are not finalized: a file a unit
left open keeps what it had not flushed).
"""

from __future__ import annotations

import _thread
import gc
import os
import sys
import time
from collections import deque

# The C pickler, without the pure-Python ``pickle`` module's imports (``re``, ``struct``...):
# a worker starts measurably faster. Both picklers read and write the same bytes.
try:
    from _pickle import dumps, loads
except ImportError:  # pragma: no cover - an interpreter without the C accelerator
    from pickle import dumps, loads

from ._context import PAUSES_KEY, ExecutionContext, call_unit_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_PARENT_CHECK_SECONDS = 0.5
#: The environment variable naming the modules a worker imports before it is ready.
PRELOAD_VARIABLE = "QUANTUM_PARTITIONER_PRELOAD"
#: Pickle protocol 5, the newest Python 3.8+ reads; cloudpickle's default too.
PROTOCOL = 5
#: A frame is its length in this many bytes (big-endian), then the payload.
_HEADER = 8
_READ_SIZE = 1 << 16
#: A claim number in the claim pipe: this many bytes, big-endian (under ``PIPE_BUF``, so
#: each is written and read whole).
CLAIM_BYTES = 8


def send_frame(fd: int, payload: bytes) -> None:
    """Write one frame; the pipe is blocking, so this returns when all of it is written."""
    send_frames(fd, (payload,))


def send_frames(fd: int, payloads: tuple[bytes, ...] | list[bytes]) -> int:
    """Write several frames in one go (the pipe is blocking: returns when all is written).

    One ``writev``: the reader wakes once for all of them (a worker's first attempt comes
    with the run's context and its function), and no payload is copied to put its header
    in front of it (an attempt's inputs may be large).

    Returns:
        How many bytes were written.
    """
    parts: list[memoryview] = []
    for payload in payloads:
        parts += (memoryview(len(payload).to_bytes(_HEADER, "big")), memoryview(payload))
    total = 0
    while parts:
        written = os.writev(fd, parts)
        total += written
        while parts and written >= len(parts[0]):  # a pipe may take only part of it
            written -= len(parts.pop(0))
        if written:
            parts[0] = parts[0][written:]
    return total


class FrameError(ValueError):
    """Bytes in a pipe that cannot be a frame: their header claims more than any can hold."""


class FrameReader:
    """Splits what is read from a pipe into frames.

    :meth:`read` reads once (so on a readable descriptor it never blocks) and returns every
    frame that is now complete, several at once if several arrived. Given ``max_size``, a
    header that claims more raises :class:`FrameError` at once: waiting for that many bytes
    would wait for ever.
    """

    __slots__ = ("_buffer", "_fd", "_max_size")

    def __init__(self, fd: int, max_size: int | None = None) -> None:
        """Read from ``fd``; frames hold at most ``max_size`` bytes (None: no bound)."""
        self._fd = fd
        self._buffer = bytearray()
        self._max_size = max_size

    def read(self) -> list[bytes]:
        """The frames completed by one read.

        Raises:
            EOFError: The writer is gone.
            FrameError: A header claims more than ``max_size`` bytes.
        """
        chunk = os.read(self._fd, _READ_SIZE)
        if not chunk:
            raise EOFError
        buffer = self._buffer
        buffer += chunk
        frames = []
        start, end = 0, len(buffer)
        while end - start >= _HEADER:
            size = int.from_bytes(buffer[start : start + _HEADER], "big")
            if end - start - _HEADER < size:
                if self._max_size is not None and size > self._max_size:
                    raise FrameError(
                        f"a frame header claims {size} bytes, more than any message can "
                        f"hold ({self._max_size})"
                    )
                break
            start += _HEADER
            frames.append(bytes(buffer[start : start + size]))
            start += size
        del buffer[:start]
        return frames


def _preload(modules: str) -> None:
    """Import the run's modules; one that fails is left for its units to report."""
    for name in filter(None, modules.split(",")):
        try:
            __import__(name)  # imports the submodule too; importlib would add its import
        except Exception:  # noqa: S112 - its units fail with the real error later
            continue


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(_PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(1)  # orphaned: the parent died without stopping us


def _cloudpickle() -> Any:
    import cloudpickle  # noqa: PLC0415 - only for what plain pickle cannot send

    return cloudpickle


def _error_message(
    error: BaseException, unit_id: str, ctx: ExecutionContext | None = None
) -> tuple[Any, ...]:
    import traceback  # noqa: PLC0415 - a worker whose units succeed never needs it

    text = "".join(traceback.format_exception(error))
    try:
        blob = _cloudpickle().dumps(error)
        loads(blob)  # noqa: S301 - our own bytes; checks the error survives the trip
    except BaseException:  # it cannot travel (its loading may even raise SystemExit)
        blob = None
    metrics = ctx.metrics if ctx is not None else None
    pauses = {PAUSES_KEY: metrics[PAUSES_KEY]} if metrics and PAUSES_KEY in metrics else None
    return ("error", blob, f"unit {unit_id!r}: {error!r}", text, pauses)


class _Unloadable:
    """What the worker could not load (a function, the run's context) and why.

    The units that need it fail with that reason when their turn comes; the worker goes on.
    """

    __slots__ = ("error", "what")

    def __init__(self, what: str, error: BaseException) -> None:
        self.what = what
        self.error = error


def _load(blob: bytes, what: str) -> Any:
    """Unpickle a function or a context, or an :class:`_Unloadable` saying why it failed."""
    try:
        return loads(blob)  # noqa: S301 - from our parent
    except BaseException as error:  # SystemExit too: its units' failure, not the worker's
        return _Unloadable(what, error)


def _take_claim(claims: int) -> int:
    """The next claim number in the claim pipe, or 0 if the parent took them all back."""
    try:
        return int.from_bytes(os.read(claims, CLAIM_BYTES), "big")
    except BlockingIOError:
        return 0


def _exit_at_once() -> None:
    """Exit when told to stop: threads end, atexit handlers run, the console is flushed.

    The interpreter's teardown (freeing every module and object, the garbage collector)
    took most of the time from a run's last outcome to the end of ``execute`` with a fresh
    pool (the driver waits for its workers' exit); skipping it is what a process pool's
    forked workers do too. What the units registered with :mod:`atexit` still runs, after
    the threads they started (as at an interpreter's exit).
    """
    import atexit  # noqa: PLC0415 - built in: costs nothing, and only when stopping

    # As the interpreter's exit does first: wait for the threads (not daemons) the units
    # started and run threading's own exit hooks (thread pools finish their queued work).
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib is not imported here: a worker imports little
            stream.flush()
        except Exception:  # noqa: S110 - a console that is gone has nothing left to say
            pass
    os._exit(0)


def serve(inbox: int, outbox: int, parent: int, claims: int) -> None:
    """Answer the parent's messages until it says stop or goes away."""
    _thread.start_new_thread(_watch_parent, (parent,))  # dies with the process, as a daemon
    context: Any = {}
    unloadable_context: _Unloadable | None = None  # then every function stands for it
    functions: dict[int, Any] = {}
    _preload(os.environ.pop(PRELOAD_VARIABLE, ""))
    # The program that runs this disables the garbage collector while the worker starts:
    # imports make many objects and little garbage; the collections they set off cost a
    # few per cent of a start-up (of heavy imports too). The units run with it on.
    gc.enable()
    send_frame(outbox, dumps(("ready", os.getpid()), PROTOCOL))
    reader = FrameReader(inbox)
    queued: deque[tuple[Any, ...]] = deque()  # "run" messages not started yet
    claimed = 0  # the last claim number taken; its attempt may not have arrived yet
    while True:
        if not queued:  # wait for the parent (what is queued needs nothing that follows)
            try:
                frames = reader.read()
            except EOFError:
                return
            for frame in frames:
                message = loads(frame)  # noqa: S301 - from our parent
                kind = message[0]
                if kind == "run":
                    queued.append(message)
                elif kind == "function":
                    _, key, blob = message[:3]
                    functions[key] = unloadable_context or _load(blob, "its function")
                elif kind == "context":  # a new run: its own context and functions
                    context = _load(message[1], "the run's context")
                    unloadable_context = context if type(context) is _Unloadable else None
                    functions.clear()
                elif kind == "stop":
                    _exit_at_once()
            continue
        _, index, attempt, key, unit_id, inputs, claim = queued.popleft()[:7]
        if claim:  # sent ahead: run it only if its claim number is ours, not taken back
            if claimed < claim:
                claimed = _take_claim(claims)
            if claimed != claim:  # taken back before its turn: it never starts here
                dropped = ("dropped", index, attempt, time.perf_counter())
                send_frame(outbox, dumps(dropped, PROTOCOL))
                continue
        started = time.perf_counter()
        outcome = _run_one(context, functions[key], unit_id, attempt, inputs)
        reply = (outcome[0], index, attempt, started, time.perf_counter(), *outcome[1:])
        send_frame(outbox, dumps(reply, PROTOCOL))


def _run_one(
    context: Any, function: Any, unit_id: str, attempt: int, blob: bytes
) -> tuple[Any, ...]:
    """``("ok", result_blob, metrics)`` or ``("error", blob, description, traceback)``."""
    if type(function) is _Unloadable:
        note = RuntimeError(f"unit {unit_id!r}: {function.what} could not be loaded in the worker")
        note.__cause__ = function.error
        return _error_message(note, unit_id)
    ctx = None
    try:
        results = loads(blob)  # noqa: S301 - from our parent
        upstream = {}
        item = None
        if type(results) is tuple:  # inputs, why some are missing, and a map item's item
            results, upstream, item = results
        ctx = ExecutionContext(
            context, results, unit_id, attempt, "process", None, -1, upstream, item
        )
        value = call_unit_function(function, ctx)
    except BaseException as error:
        return _error_message(error, unit_id, ctx)
    try:
        try:
            result = dumps(value, PROTOCOL)
        except Exception:  # a lambda, a class built at run time...: by value
            result = _cloudpickle().dumps(value, PROTOCOL)
    except Exception as error:
        problem = TypeError(
            f"unit {unit_id!r}: its result {type(value).__name__} cannot be sent back from "
            f"the worker process: {error}"
        )
        return _error_message(problem, unit_id, ctx)
    return ("ok", result, ctx.metrics)


def main() -> None:
    """Entry point, with the arguments ``IN_FD OUT_FD PARENT STDERR_FD CLAIM_FD``."""
    in_fd, out_fd, parent, console, claims = (int(arg) for arg in sys.argv[1:6])
    # Started: from here on stderr is the caller's, no longer the pipe it reads until ready.
    sys.stderr.flush()
    os.dup2(console, 2)
    os.close(console)
    # Units that print must not write into the protocol: send their stdout to stderr.
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        serve(in_fd, out_fd, parent, claims)
    except OSError:  # the pipe to the parent broke: it died, nobody is left to answer
        return


if __name__ == "__main__":
    main()
