"""The ``last_execution_metrics`` dict, built from a run's record when first read.

Keys: ``start_time``, ``end_time``, ``total_duration`` (epoch seconds and seconds),
``unit_times`` (per unit that ran: ``start``, ``end``, ``duration``, ``state``,
``attempts``, ``error`` if it did not complete, and ``worker`` if the backend knows where it
ran), ``total_units``, ``completed_units``, ``failed_units``, ``skipped_units``,
``canceled_units`` (counts), ``skip_causes`` (skipped units by cause: ``condition``,
``decision``, ``upstream_failed``, ``join_rule``), ``execution_trace``
(events in time order: ``start``, ``retry``, ``complete``, ``error``, ``timeout``, ``skip``,
``cancel``), ``unit_metrics`` (what units recorded with ``ctx.record_metric``),
``execution_mode``, ``max_workers``, and ``stop_reason`` (why the run stopped: ``completed``,
``deadline``, ``cancel``, ``interrupt`` or ``fail_fast``). A unit that waited for a named
limit has ``waited`` (seconds, over its attempts) and ``waited_for`` (the limit it waited
for last) in its ``unit_times``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import UnitSkippedError, error_text
from .._graph import UnitState

if TYPE_CHECKING:
    from .._run import Run

__all__ = ["build_metrics"]

_END_EVENT = {
    UnitState.COMPLETED: "complete",
    UnitState.FAILED: "error",
    UnitState.TIMEOUT: "timeout",
    UnitState.SKIPPED: "skip",
    UnitState.CANCELED: "cancel",
}


def build_metrics(run: Run) -> dict[str, Any]:
    """Build the metrics dict of ``run``."""
    sched = run.scheduler
    names = run.graph.names
    epoch = run.to_epoch
    unit_times: dict[str, dict[str, Any]] = {}
    trace: list[dict[str, Any]] = []
    gate = sched.gate
    waited = {} if gate is None else gate.unit_waited
    # Attempts that failed: each has a start; those that were not a unit's last attempt
    # (or whose unit still waits to retry) end in a retry.
    failed_attempts = set()
    for i, attempt, start, end, error in run.failed_attempts:
        failed_attempts.add((i, attempt))
        trace.append({"event": "start", "unit": names[i], "time": epoch(start), "attempt": attempt})
        if attempt < sched.attempts[i] or not sched.state[i].is_terminal:
            retry = {"event": "retry", "unit": names[i], "time": epoch(end), "attempt": attempt}
            trace.append({**retry, "error": error_text(error)})
    for i, state in enumerate(sched.state):
        name = names[i]
        attempts = sched.attempts[i]
        ran = attempts > 0
        end = sched.ended[i]
        if ran:
            start = sched.started[i]
            if (i, attempts) not in failed_attempts:
                trace.append(
                    {"event": "start", "unit": name, "time": epoch(start), "attempt": attempts}
                )
            times: dict[str, Any] = {
                "start": epoch(start),
                "end": epoch(end) if state.is_terminal else None,
                "duration": (end - start) if state.is_terminal else None,
                "state": state.value,
                "attempts": attempts,
            }
            if i in sched.errors:
                times["error"] = error_text(sched.errors[i])
            if i in run.unit_workers:
                times["worker"] = run.unit_workers[i]
            if gate is not None and i in gate.needs:
                times["waited"] = waited.get(i, 0.0)
                if i in waited:
                    times["waited_for"] = gate.unit_waited_for[i]
            unit_times[name] = times
        event = _END_EVENT.get(state)
        if event is not None:
            record: dict[str, Any] = {"event": event, "unit": name, "time": epoch(end)}
            if state is not UnitState.COMPLETED:
                reason = sched.errors.get(i)
                record["error"] = "None" if reason is None else error_text(reason)
                if isinstance(reason, UnitSkippedError):
                    record["cause"] = reason.cause.value
            trace.append(record)
    trace.sort(key=lambda record: record["time"])
    counts = run.counts()
    return {
        "start_time": epoch(run.started_at),
        "end_time": epoch(run.ended_at) if run.ended_at else None,
        "total_duration": (run.ended_at - run.started_at) if run.ended_at else None,
        "unit_times": unit_times,
        "total_units": len(names),
        "completed_units": counts[UnitState.COMPLETED],
        "failed_units": counts[UnitState.FAILED] + counts[UnitState.TIMEOUT],
        "skipped_units": counts[UnitState.SKIPPED],
        "canceled_units": counts[UnitState.CANCELED],
        "skip_causes": {cause.value: n for cause, n in run.skip_causes().items()},
        "execution_trace": trace,
        "unit_metrics": {names[i]: dict(m) for i, m in list(run.unit_metrics.items())},
        "execution_mode": run.mode,
        "max_workers": run.max_workers,
        "stop_reason": run.stop_reason,
    }
