"""Traces of a finished run: Chrome trace event JSON and OpenTelemetry spans.

Policy: a trace is built *after* the run, from its record, so tracing costs the hot path
nothing. The record already holds every attempt: a unit's last attempt is its ``started`` /
``ended`` pair, and each attempt that ended without completing (a retry, a failure, a
timeout) is in ``Run.failed_attempts``. What the record does not hold is *which worker* ran
an attempt. :class:`TraceRecorder`, an instrument that listens only to ``unit_started``,
keeps the worker name that event already carries (the thread that started the attempt), one
dict entry per attempt, and only when it is attached (``execute(..., trace=True)`` or
``instruments=[TraceRecorder()]``).

State: none between calls. Attempts are laid out on *tracks*:

* THREAD and SEQUENTIAL runs start each attempt in the thread that runs it, so with a
  recorder each worker thread is one track, named after the thread.
* PROCESS workers hold slots (a replacement takes the slot of the worker it replaces) and
  record each attempt's slot in ``Run.attempt_workers``: one track per slot, ``process slot
  1`` .. ``process slot N``, never more than ran at once. A worker started during the run
  shows its start-up (``Run.worker_startups``) as a ``worker start-up`` slice on its track,
  before its first attempt.
* Backends that learn where a unit ran (Dask) record it in ``Run.unit_workers``; the unit's
  last attempt goes on that worker's track, split into ``name (2)``, ... where the worker
  ran several attempts at once.
* Modes that hand attempts elsewhere (processes, an executor, an event loop, mixed runs)
  start them from the driving thread, which does not know the worker. Those attempts, and
  every attempt of a run traced without a recorder, are packed greedily onto as few tracks
  as ran at once (at most the worker count): ``process slot 1``, ``process slot 2``, ...
  The picture is the same; only the worker's identity is missing.

A run's clock is ``time.perf_counter``; trace timestamps are microseconds since the run's
start, and OpenTelemetry timestamps are nanoseconds since the epoch.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import UnitTimeoutError, error_text
from .._graph import UnitState
from ._events import Instrument

if TYPE_CHECKING:
    from .._run import Run
    from ._events import RunStarted, UnitStarted

__all__ = ["TraceRecorder"]

LOGGER = logging.getLogger("quantum_partitioner")

_RETRIED = "retried"
_DIGITS = re.compile(r"(\d+)")
#: How late a retried attempt's recorded end may be (it is read when the retry is
#: reported, after its worker may have started the next attempt); see _clamp_overlaps.
_JITTER = 0.002
#: Chrome trace viewer's reserved colour names, by attempt outcome (Perfetto colours by name).
_CNAME = {
    "completed": "good",
    "failed": "bad",
    "timeout": "terrible",
    "canceled": "grey",
    "skipped": "olive",
    _RETRIED: "yellow",
}


class TraceRecorder(Instrument):
    """Records which worker ran each attempt, so traces get one track per worker.

    Attach it for one run with ``execute(..., trace=True)``, or to every run with
    ``QuantumPartitioner(instruments=[TraceRecorder()])``. It costs one dict entry per
    attempt; without it, :meth:`QuantumPartitioner.export_trace` still works and packs
    attempts onto numbered slots. One recorder follows one run at a time: a new run clears
    it.

    Attributes:
        workers: The worker (thread name) that started each ``(unit_id, attempt)``.
        driver: The thread that drove the last run.
        mode: The last run's execution mode.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        """Create an empty recorder."""
        self.workers: dict[tuple[str, int], str] = {}
        self.driver: str | None = None
        self.mode: str | None = None

    def run_started(self, event: RunStarted) -> None:
        """Forget the previous run; note the driving thread."""
        self.workers = {}
        self.driver = threading.current_thread().name
        self.mode = event.execution_mode

    def unit_started(self, event: UnitStarted) -> None:
        """Note the attempt's worker."""
        self.workers[event.unit_id, event.attempt] = event.worker

    def worker_of(self, unit_id: str, attempt: int) -> str | None:
        """The thread that ran that attempt, or None if it is not known.

        Attempts started by the driving thread of a concurrent run ran somewhere that
        thread handed them to, so their worker is not known.
        """
        worker = self.workers.get((unit_id, attempt))
        if worker is None or (worker == self.driver and self.mode != "sequential"):
            return None
        return worker


# -- the attempts of a run -----------------------------------------------------------------


class Attempt(NamedTuple):
    """One attempt of one unit, in run-clock seconds."""

    unit_index: int
    unit_id: str
    attempt: int
    start: float
    end: float
    #: COMPLETED, FAILED, TIMEOUT or CANCELED: how this attempt ended.
    state: UnitState
    #: Whether another attempt followed (or was due when the run ended).
    retried: bool
    error: BaseException | None

    @property
    def outcome(self) -> str:
        """``completed``, ``failed``, ``timeout``, ``canceled``, ``skipped`` or ``retried``.

        ``skipped`` is an attempt that ran and called ``ctx.skip``.
        """
        return _RETRIED if self.retried else self.state.value


#: Final states whose last attempt ran to its end (or was stopped): one slice each.
_ENDED_ATTEMPT = frozenset({UnitState.COMPLETED, UnitState.CANCELED, UnitState.SKIPPED})

#: ``(index, time, state, error)`` of a unit that ended with no attempt running.
Mark = tuple[int, float, UnitState, "BaseException | None"]


class Layout(NamedTuple):
    """A run's attempts laid out on tracks, and its events that are not attempts."""

    attempts: list[Attempt]
    #: The track of each attempt (parallel to ``attempts``).
    track_of: list[int]
    #: Track names: worker threads in natural order, then numbered slots.
    tracks: list[str]
    #: Each unit that ended without an attempt running: SKIPPED, or CANCELED while waiting.
    marks: list[Mark]
    #: Workers started during the run: (track, started, ready).
    startups: list[tuple[int, float, float]]


def collect_attempts(run: Run) -> list[Attempt]:
    """Every attempt of ``run``, ordered by start time."""
    sched = run.scheduler
    names = run.graph.names
    attempts: list[Attempt] = []
    ended_without_completing: set[tuple[int, int]] = set()
    for i, number, start, end, error in run.failed_attempts:
        ended_without_completing.add((i, number))
        last = number == sched.attempts[i] and sched.state[i] in {
            UnitState.FAILED,
            UnitState.TIMEOUT,
        }
        if last:
            state = sched.state[i]
        else:
            state = UnitState.TIMEOUT if isinstance(error, UnitTimeoutError) else UnitState.FAILED
        attempts.append(
            Attempt(i, names[i], number, start, end, state, retried=not last, error=error)
        )
    for i, state in enumerate(sched.state):
        number = sched.attempts[i]
        if not number or (i, number) in ended_without_completing:
            continue
        # COMPLETED, CANCELED while it ran, or SKIPPED by its own ctx.skip; a unit still
        # RUNNING (a record read before the run ended) has no end yet.
        if state in _ENDED_ATTEMPT:
            attempts.append(
                Attempt(
                    i,
                    names[i],
                    number,
                    sched.started[i],
                    sched.ended[i],
                    state,
                    retried=False,
                    error=sched.errors.get(i),
                )
            )
    attempts.sort(key=lambda a: (a.start, a.end, a.unit_index))
    return attempts


def _marks(run: Run, attempts: list[Attempt]) -> list[Mark]:
    sched = run.scheduler
    ran_last = {(a.unit_index, a.attempt) for a in attempts if a.state is UnitState.CANCELED}
    marks: list[Mark] = []
    for i, state in enumerate(sched.state):
        if (state is UnitState.SKIPPED and not sched.attempts[i]) or (
            state is UnitState.CANCELED and (i, sched.attempts[i]) not in ran_last
        ):
            marks.append((i, sched.ended[i], state, sched.errors.get(i)))
    marks.sort(key=lambda mark: mark[1])
    return marks


def layout(run: Run, recorder: TraceRecorder | None = None) -> Layout:
    """Lay the attempts of ``run`` out on tracks (see the module docstring)."""
    attempts = collect_attempts(run)
    mode = recorder.mode if recorder is not None and recorder.mode else run.mode
    track_of = [-1] * len(attempts)
    # Backends that learn where a unit ran (Dask) record it for its last attempt.
    ran_on = run.unit_workers
    in_slot = run.attempt_workers
    last_attempt = run.scheduler.attempts
    named: dict[str, list[int]] = {}
    # Slots that run one attempt at a time (a worker process and its replacements).
    slots: dict[str, list[int]] = {slot: [] for slot, _, _ in run.worker_startups}
    unknown: list[int] = []
    for k, a in enumerate(attempts):
        worker = None if recorder is None else recorder.worker_of(a.unit_id, a.attempt)
        if worker is None:
            slot = in_slot.get((a.unit_index, a.attempt))
            if slot is not None:
                slots.setdefault(slot, []).append(k)
                continue
        if worker is None and a.attempt == last_attempt[a.unit_index]:
            worker = ran_on.get(a.unit_index)
        if worker is None:
            unknown.append(k)
        else:
            named.setdefault(worker, []).append(k)
    # Tracks: named workers and slots in natural order ("worker-2" before "worker-10"),
    # then numbered tracks. A worker that runs several attempts at once (a Dask worker's
    # threads) gets one track per attempt it ran at the same time: "name", "name (2)", ...
    groups: list[tuple[str, list[int]]] = []
    for worker in sorted({*named, *slots}, key=_natural_key):
        if worker in slots:  # one attempt at a time, whatever the recorded times say
            groups.append((worker, slots[worker]))
            continue
        for lane, members in enumerate(_pack(attempts, named[worker], _JITTER), 1):
            groups.append((worker if lane == 1 else f"{worker} ({lane})", members))
    taken = {name for name, _ in groups}
    numbers = (n for n in itertools.count(1) if f"{mode} slot {n}" not in taken)
    for number, members in zip(numbers, _pack(attempts, unknown), strict=False):
        groups.append((f"{mode} slot {number}", members))
    tracks = []
    for track, (name, members) in enumerate(groups):
        tracks.append(name)
        for k in members:
            track_of[k] = track
    _clamp_overlaps(attempts, groups)
    track_named = {name: track for track, name in enumerate(tracks)}
    startups = [
        (track_named[slot], start, ready)
        for slot, start, ready in run.worker_startups
        if slot in track_named
    ]
    return Layout(attempts, track_of, tracks, _marks(run, attempts), startups)


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in _DIGITS.split(name)]


def _pack(attempts: list[Attempt], members: list[int], slack: float = 0.0) -> list[list[int]]:
    """Greedy interval packing: each attempt on the lowest-numbered free slot.

    A slot counts as free ``slack`` seconds before its attempt ends.
    """
    slots: list[list[int]] = []
    busy: list[tuple[float, int]] = []  # (end, slot) of slots in use
    free: list[int] = []  # slot numbers free again
    for k in members:  # ordered by start
        a = attempts[k]
        while busy and busy[0][0] - slack <= a.start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            slot = heapq.heappop(free)
        else:
            slot = len(slots)
            slots.append([])
        slots[slot].append(k)
        heapq.heappush(busy, (a.end, slot))
    return slots


def _clamp_overlaps(attempts: list[Attempt], groups: list[tuple[str, list[int]]]) -> None:
    """End each attempt no later than the next one on its track starts.

    A retried attempt's end is read when the retry is reported, a few microseconds after
    its worker may have started its next attempt; one thread never runs two at once. A
    worker process is free as soon as it answers, before the driver records the end, so
    the driver may hand it the next attempt first.
    """
    for _, members in groups:
        for k, nxt in itertools.pairwise(members):
            a, start = attempts[k], attempts[nxt].start
            if a.end > start:
                attempts[k] = a._replace(end=max(a.start, start))


def observed_critical_path(run: Run) -> list[int]:
    """The chain of units that set the run's end, root first, by measured times.

    From the unit that finished last among those that ran, repeatedly step to the
    dependency that finished last: the one that unit waited for. A map never runs: the path
    goes through the item of it that ended last, and from an item to what its map waited
    for (for an item of a map over a map, the item it follows).
    """
    sched = run.scheduler
    ran = [i for i, state in enumerate(sched.state) if sched.attempts[i] and state.is_terminal]
    if not ran:
        return []
    ended = sched.ended
    node = max(ran, key=ended.__getitem__)
    path = [node]
    deps = run.graph.deps
    maps = sched.maps
    while True:
        if maps:
            waited = _waited_for(run, node)
        elif deps[node]:
            waited = max(deps[node], key=ended.__getitem__)
        else:
            break
        if waited is None:
            break
        node = waited
        if node not in maps:
            path.append(node)
    path.reverse()
    return path


def _waited_for(run: Run, node: int) -> int | None:
    """What ``node`` waited for last in a run with maps (None at a root)."""
    sched = run.scheduler
    ended, maps = sched.ended, sched.maps
    items = sched.items_of.get(node)
    if items:  # a map: its last item
        return max(items, key=ended.__getitem__)
    place = sched.item_of.get(node)
    if place is None:
        candidates = list(run.graph.deps[node])
    else:  # an item: what its map waited for, its own parent item instead of a parent map
        m = place[0]
        candidates = [j for j in run.graph.deps[m] if j != maps[m] or j not in maps]
        parent = sched.item_parent.get(node)
        if parent is not None:
            candidates.append(parent)
    return max(candidates, key=ended.__getitem__) if candidates else None


def workers_text(run: Run) -> str:
    """``4 workers``, or ``no worker limit`` (``max_workers`` 0, as in ASYNC)."""
    n = run.max_workers
    return f"{n} worker{'s' if n != 1 else ''}" if n else "no worker limit"


def describe_error(error: BaseException | None) -> str:
    """``Type: message`` on one line, or an empty string."""
    if error is None:
        return ""
    text = " ".join(error_text(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- Chrome trace event format -------------------------------------------------------------


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def chrome_trace(run: Run, recorder: TraceRecorder | None = None) -> dict[str, Any]:
    """The run as a Chrome trace event document (``chrome://tracing``, Perfetto).

    One process; track 0 is the run itself (one slice for the whole run, instant events for
    skipped and cancelled units); then one track per worker with one complete ("X") slice
    per attempt, named after its unit and, unless it completed, its outcome. Retry waits are
    async slices, timeouts also an instant event where the attempt was stopped.
    """
    lay = layout(run, recorder)
    origin = run.started_at
    names = run.graph.names
    pid = 1
    counts = run.counts()
    meta: list[dict[str, Any]] = [
        {
            "ph": "M",
            "name": "process_name",
            "pid": pid,
            "tid": 0,
            "args": {"name": f"quantum-partitioner run ({run.mode}, {workers_text(run)})"},
        },
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": 0, "args": {"name": "run"}},
        {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": 0}},
    ]
    for track, name in enumerate(lay.tracks, 1):
        meta.append(
            {"ph": "M", "name": "thread_name", "pid": pid, "tid": track, "args": {"name": name}}
        )
        meta.append(
            {
                "ph": "M",
                "name": "thread_sort_index",
                "pid": pid,
                "tid": track,
                "args": {"sort_index": track},
            }
        )
    end = run.ended_at or max((a.end for a in lay.attempts), default=origin)
    events: list[dict[str, Any]] = [
        {
            "name": "run",
            "cat": "run",
            "ph": "X",
            "ts": 0.0,
            "dur": _us(end - origin),
            "pid": pid,
            "tid": 0,
            "args": {
                "mode": run.mode,
                "max_workers": run.max_workers,
                **{state.value: count for state, count in counts.items() if count},
            },
        }
    ]
    next_start: dict[tuple[int, int], float] = {
        (a.unit_index, a.attempt): a.start for a in lay.attempts
    }
    for a, track in zip(lay.attempts, lay.track_of, strict=True):
        outcome = a.outcome
        args: dict[str, Any] = {"unit": a.unit_id, "attempt": a.attempt, "outcome": outcome}
        if a.error is not None:
            args["error"] = describe_error(a.error)
        events.append(
            {
                "name": a.unit_id if outcome == "completed" else f"{a.unit_id} [{outcome}]",
                "cat": outcome,
                "ph": "X",
                "ts": _us(a.start - origin),
                "dur": _us(a.end - a.start),
                "pid": pid,
                "tid": track + 1,
                "cname": _CNAME[outcome],
                "args": args,
            }
        )
        if a.state is UnitState.TIMEOUT:
            events.append(
                {
                    "name": f"timeout: {a.unit_id}",
                    "cat": "timeout",
                    "ph": "i",
                    "s": "t",
                    "ts": _us(a.end - origin),
                    "pid": pid,
                    "tid": track + 1,
                    "args": args,
                }
            )
        if a.retried:
            resumed = next_start.get((a.unit_index, a.attempt + 1))
            # A retry that starts at once may start before its wait was recorded as over.
            wait_end = max(a.end, end if resumed is None else resumed)
            wait = {
                "name": f"{a.unit_id} waits to retry",
                "cat": "retry",
                "id": f"{a.unit_index}.{a.attempt}",
                "pid": pid,
                "tid": track + 1,
            }
            events.append({**wait, "ph": "b", "ts": _us(a.end - origin), "args": args})
            events.append({**wait, "ph": "e", "ts": _us(wait_end - origin)})
    for track, start, ready in lay.startups:
        events.append(
            {
                "name": "worker start-up",
                "cat": "startup",
                "ph": "X",
                "ts": _us(start - origin),
                "dur": _us(ready - start),
                "pid": pid,
                "tid": track + 1,
                "cname": "startup",
                "args": {"worker": lay.tracks[track]},
            }
        )
    events += _limit_waits(run, lay, origin, pid)
    for i, time, state, error in lay.marks:
        verb = "skipped" if state is UnitState.SKIPPED else "canceled"
        events.append(
            {
                "name": f"{verb}: {names[i]}",
                "cat": verb,
                "ph": "i",
                "s": "t",
                "ts": _us(time - origin),
                "pid": pid,
                "tid": 0,
                "args": {"unit": names[i], "state": state.value, "reason": describe_error(error)},
            }
        )
    events.sort(key=lambda event: event["ts"])
    return {
        "traceEvents": meta + events,
        "displayTimeUnit": "ms",
        "otherData": {
            "generator": "quantum-partitioner",
            "mode": run.mode,
            "max_workers": run.max_workers,
            "start_epoch_seconds": run.to_epoch(origin),
        },
    }


def _limit_waits(run: Run, lay: Layout, origin: float, pid: int) -> list[dict[str, Any]]:
    """A "waiting for <limit>" async slice before each unit's last start that had to wait.

    It sits on the track of the attempt it preceded (the run's track if that never ran).
    """
    gate = run.scheduler.gate
    if gate is None or not gate.last_wait:
        return []
    track_of = {
        (a.unit_index, a.attempt): track + 1
        for a, track in zip(lay.attempts, lay.track_of, strict=True)
    }
    names = run.graph.names
    attempts = run.scheduler.attempts
    events: list[dict[str, Any]] = []
    for i, (since, until) in gate.last_wait.items():
        limit = gate.unit_waited_for[i]
        wait = {
            "name": f"waiting for {limit}",
            "cat": "limit",
            "id": f"limit.{i}",
            "pid": pid,
            "tid": track_of.get((i, attempts[i]), 0),
        }
        args = {"unit": names[i], "limit": limit, "waited_s": round(until - since, 6)}
        events.append({**wait, "ph": "b", "ts": _us(since - origin), "args": args})
        events.append({**wait, "ph": "e", "ts": _us(until - origin)})
    return events


def write_chrome_trace(run: Run, path: str | Path, recorder: TraceRecorder | None = None) -> Path:
    """Write :func:`chrome_trace` as JSON to ``path`` (gzipped if it ends in ``.gz``)."""
    path = Path(path)
    data = json.dumps(chrome_trace(run, recorder), separators=(",", ":"), default=str)
    if path.suffix == ".gz":
        import gzip  # noqa: PLC0415 - only compressed traces need it

        path.write_bytes(gzip.compress(data.encode()))
    else:
        path.write_text(data, encoding="utf-8")
    LOGGER.debug("wrote a Chrome trace of %d units to %s", len(run.graph), path)
    return path


# -- OpenTelemetry -------------------------------------------------------------------------

#: Attribute names of the spans (one namespace, as OpenTelemetry recommends).
ATTR_UNIT_ID = "quantum_partitioner.unit.id"
ATTR_ATTEMPT = "quantum_partitioner.unit.attempt"
ATTR_STATE = "quantum_partitioner.unit.state"
ATTR_RETRIED = "quantum_partitioner.unit.retried"
ATTR_ERROR = "quantum_partitioner.unit.error"
ATTR_WORKER = "quantum_partitioner.unit.worker"


def _load_otel() -> Any:
    try:
        from opentelemetry import trace  # noqa: PLC0415 - an optional extra, loaded when needed
    except ImportError:
        raise ImportError(
            "exporting OpenTelemetry spans needs opentelemetry-api: "
            "pip install 'quantum-partitioner[otel]'"
        ) from None
    return trace


def export_spans(
    run: Run, tracer_provider: Any = None, recorder: TraceRecorder | None = None
) -> Any:
    """Send the run to OpenTelemetry: one span for the run, one child span per attempt.

    Attempt spans are named after their unit and carry its id, the attempt number, the
    state the attempt ended in, whether it was retried, and the error; failed attempts
    have status ERROR and the exception recorded. Skipped and cancelled units are events
    on the run span, whose status is ERROR if any unit failed or timed out. The spans keep
    the run's real start and end times; the run span is a child of the current span, if any.

    Returns:
        The run's span (already ended).
    """
    from .. import __version__  # noqa: PLC0415 - the package imports this module

    otel = _load_otel()
    status_error = otel.StatusCode.ERROR
    tracer = otel.get_tracer("quantum_partitioner", __version__, tracer_provider=tracer_provider)
    lay = layout(run, recorder)
    origin = run.started_at
    # Nanoseconds since the epoch, from offsets to the run's start (float seconds since
    # the epoch would lose the sub-microsecond part).
    base = int(run.to_epoch(origin) * 1e9)

    def ns(t: float) -> int:
        return base + round((t - origin) * 1e9)

    counts = run.counts()
    end = run.ended_at or max((a.end for a in lay.attempts), default=origin)
    run_span = tracer.start_span(
        "quantum_partitioner.run",
        start_time=ns(origin),
        attributes={
            "quantum_partitioner.mode": run.mode,
            "quantum_partitioner.max_workers": run.max_workers,
            "quantum_partitioner.units": len(run.graph),
            **{f"quantum_partitioner.units.{s.value}": n for s, n in counts.items() if n},
        },
    )
    parent = otel.set_span_in_context(run_span)
    for a, track in zip(lay.attempts, lay.track_of, strict=True):
        attributes: dict[str, Any] = {
            ATTR_UNIT_ID: a.unit_id,
            ATTR_ATTEMPT: a.attempt,
            ATTR_STATE: a.state.value,
            ATTR_RETRIED: a.retried,
            ATTR_WORKER: lay.tracks[track],
        }
        if a.error is not None:
            attributes[ATTR_ERROR] = describe_error(a.error)
            attributes["error.type"] = type(a.error).__qualname__
        span = tracer.start_span(
            a.unit_id, context=parent, start_time=ns(a.start), attributes=attributes
        )
        if a.error is not None:
            try:
                span.record_exception(a.error, timestamp=ns(a.end))
            except Exception:  # it calls str(), which user code may break
                exception = {
                    "exception.type": type(a.error).__qualname__,
                    "exception.message": error_text(a.error),
                }
                span.add_event("exception", exception, timestamp=ns(a.end))
            span.set_status(otel.Status(status_error, describe_error(a.error)))
        span.end(end_time=ns(a.end))
    names = run.graph.names
    for i, time, state, error in lay.marks:
        run_span.add_event(
            f"unit {state.value}",
            attributes={
                ATTR_UNIT_ID: names[i],
                ATTR_STATE: state.value,
                ATTR_ERROR: describe_error(error),
            },
            timestamp=ns(time),
        )
    failed = counts[UnitState.FAILED] + counts[UnitState.TIMEOUT]
    if failed:
        run_span.set_status(otel.Status(status_error, f"{failed} of {len(run.graph)} units failed"))
    run_span.end(end_time=ns(end))
    LOGGER.debug("exported %d attempt spans to OpenTelemetry", len(lay.attempts))
    return run_span
