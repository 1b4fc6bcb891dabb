"""The program a PROCESS-mode worker runs: receive attempts, run them, send outcomes back.

Started by :mod:`.backends._processes` as ``python -m quantum_partitioner._process_worker
IN_FD OUT_FD PARENT STDERR_FD``, it never imports the caller's ``__main__`` (functions from
there travel by value, pickled with cloudpickle). Its protocol, one pickled tuple per message:

parent → worker: ``("context", blob)`` once, ``("function", key, blob)`` once per function,
``("run", key, unit_id, attempt, results_blob)`` per attempt, ``("stop",)``.

Before it says it is ready, the worker imports the modules named (comma-separated) in the
environment variable ``QUANTUM_PARTITIONER_PRELOAD``: the modules the run's functions come
from, so that importing them is the worker's start-up and not the first unit's time.

worker → parent: ``("ready", pid)``, then per attempt ``("ok", result_blob, metrics)`` or
``("error", exception_blob_or_None, description, traceback_text, pauses)``, where
``pauses`` holds the attempt's ``ctx.pause_limit`` calls (as metrics) or is None.

Anything the unit prints goes to stderr: stdout is not the protocol channel, but keeping the
two apart means no unit can corrupt the stream. Until the worker is ready its stderr is a
pipe to the parent (so a worker that cannot start can say why); then it becomes
``STDERR_FD``, the parent's own stderr. A watchdog thread exits the worker if its parent
dies, so no worker outlives the program that started it; a worker whose parent is gone
exits quietly, without a traceback on the terminal.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from ._context import PAUSES_KEY, ExecutionContext

_PARENT_CHECK_SECONDS = 0.5
#: The environment variable naming the modules a worker imports before it is ready.
PRELOAD_VARIABLE = "QUANTUM_PARTITIONER_PRELOAD"


def _preload(modules: str) -> None:
    """Import the run's modules; one that fails is left for its units to report."""
    for name in filter(None, modules.split(",")):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: S112 - its units fail with the real error later
            continue


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(_PARENT_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(1)  # orphaned: the parent died without stopping us


def _error_message(
    error: BaseException, unit_id: str, ctx: ExecutionContext | None = None
) -> tuple[Any, ...]:
    text = "".join(traceback.format_exception(error))
    try:
        blob = cloudpickle.dumps(error)
        pickle.loads(blob)  # noqa: S301 - our own bytes; checks the error survives the trip
    except Exception:  # the exception itself cannot travel: send its description
        blob = None
    metrics = ctx.metrics if ctx is not None else None
    pauses = {PAUSES_KEY: metrics[PAUSES_KEY]} if metrics and PAUSES_KEY in metrics else None
    return ("error", blob, f"unit {unit_id!r}: {error!r}", text, pauses)


def serve(inbox: Connection, outbox: Connection, parent: int) -> None:
    """Answer the parent's messages until it says stop or goes away."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    context: Any = {}
    functions: dict[int, Any] = {}
    _preload(os.environ.pop(PRELOAD_VARIABLE, ""))
    outbox.send_bytes(pickle.dumps(("ready", os.getpid())))
    while True:
        try:
            message = pickle.loads(inbox.recv_bytes())  # noqa: S301 - from our parent
        except EOFError:
            return
        kind = message[0]
        if kind == "run":
            _, key, unit_id, attempt, results_blob = message
            reply = _run_one(context, functions[key], unit_id, attempt, results_blob)
            outbox.send_bytes(pickle.dumps(reply))
        elif kind == "function":
            _, key, blob = message
            try:
                functions[key] = cloudpickle.loads(blob)
            except Exception as error:
                functions[key] = error
        elif kind == "context":  # a new run: its own context and functions
            context = cloudpickle.loads(message[1])
            functions.clear()
        elif kind == "stop":
            return


def _run_one(
    context: Any, function: Any, unit_id: str, attempt: int, blob: bytes
) -> tuple[Any, ...]:
    if isinstance(function, BaseException):
        note = RuntimeError(f"unit {unit_id!r}: its function could not be loaded in the worker")
        note.__cause__ = function
        return _error_message(note, unit_id)
    ctx = None
    try:
        results = cloudpickle.loads(blob)
        upstream = {}
        item = None
        if type(results) is tuple:  # inputs, why some are missing, and a map item's item
            results, upstream, item = results
        ctx = ExecutionContext(
            context, results, unit_id, attempt, "process", None, -1, upstream, item
        )
        if inspect.iscoroutinefunction(function):
            import asyncio  # noqa: PLC0415 - most workers never need it: keep start-up fast

            value = asyncio.run(function(ctx))
        else:
            value = function(ctx)
    except BaseException as error:
        return _error_message(error, unit_id, ctx)
    try:
        return ("ok", cloudpickle.dumps(value), ctx.metrics)
    except Exception as error:
        problem = TypeError(
            f"unit {unit_id!r}: its result {type(value).__name__} cannot be sent back from "
            f"the worker process: {error}"
        )
        return _error_message(problem, unit_id, ctx)


def main() -> None:
    """Entry point: ``python -m quantum_partitioner._process_worker IN_FD OUT_FD PARENT ERR``."""
    in_fd, out_fd, parent, console = (int(arg) for arg in sys.argv[1:5])
    # Started: from here on stderr is the caller's, no longer the pipe it reads until ready.
    sys.stderr.flush()
    os.dup2(console, 2)
    os.close(console)
    # Units that print must not write into the protocol: send their stdout to stderr.
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        serve(Connection(in_fd, writable=False), Connection(out_fd, readable=False), parent)
    except OSError:  # the pipe to the parent broke: it died, nobody is left to answer
        return


if __name__ == "__main__":
    main()
