"""Dask: attempts run as tasks on a ``dask.distributed`` cluster; results stay on the workers.

``execute(context, backend=DaskBackend(client))`` runs the same graph, with the same units, on
the cluster a :class:`distributed.Client` is connected to. ``docs/dask.md`` has the long form.

Policy:
    * One :class:`~distributed.Client.submit` per attempt. Its arguments are the *futures* of
      the unit's dependencies, so Dask moves inputs worker to worker and a result never
      visits the caller unless it is asked for (``gather=``). A dependency that failed with a
      fallback value hands that value over as a plain argument.
    * The caller's context is scattered once per run (``broadcast=True``) and every task
      receives it as a future.
    * The partitioner's scheduler decides every state change: when a unit is ready, its
      retries (with the partitioner's backoff, never Dask's ``retries``), its timeout,
      skip-downstream, fallbacks, ``fail_fast`` and cancellation. Dask decides only which
      worker runs a task and when: the task's Dask ``priority`` is the unit's place in the
      scheduler's order (``priority`` first, then remaining critical path).
    * Lookahead (default on): a unit is handed to Dask as soon as each of its dependencies
      has a future (is being computed or is done), not only once the client has heard that
      they completed, so Dask starts it the moment its inputs exist with no round trip
      through the client. The scheduler still starts the unit only when its dependencies
      completed; an early outcome waits until then. If a dependency fails, times out or is
      cancelled, the handed-over dependents are cancelled and handed over again with the
      retry (or the fallback). With a run cache, lookahead is off: a unit is looked up when
      it becomes ready and submitted only on a miss.
    * Maps: the result a map maps over stays on the cluster. ``Run.count_items`` asks the
      worker holding it for its length (``client.run``: no task thread needed); a task
      lists the items there once and each item's task takes its own through a task that
      picks it. An item-wise item takes the output of the item it follows. A map's result
      is the list of its items' futures until the end, when it is gathered with them (or
      withheld with them); a dependent receives it as that list, resolved on its worker.
      Maps and their items are never looked ahead; the other units still are.
    * ``metadata["resource_type"]`` becomes ``resources={type: 1}`` when some worker of the
      cluster declares that resource; otherwise it is ignored.
    * Timeouts: Dask cannot interrupt a running task. At the deadline the unit is TIMEOUT,
      its future is cancelled, its late result is discarded, and the worker thread stays
      busy until the function returns. A unit's timeout counts from when its inputs are
      complete, including any time its task waits for a free worker thread.
    * Cancellation (``cancel()``, Ctrl-C, ``fail_fast``): the futures of every attempt that
      should not run are cancelled on the cluster (``client.cancel``), nothing of the run is
      left queued there, and completed results are kept.
    * Whatever a unit raises fails it, ``BaseException`` subclasses included: on a worker,
      ``KeyboardInterrupt`` or ``SystemExit`` would take the worker down (Dask would
      reschedule the task and end with ``KilledWorker``), so the task carries them back as an
      ordinary exception and the unit is FAILED with the original.
    * A result that cannot be serialized (so could never reach the caller or another worker)
      fails its unit on the worker, with an error naming the unit and the value's type.
    * When the client loses its scheduler, every unit in flight is FAILED with
      :class:`BrokenBackendError` saying so, and so is every unit that would start later;
      results already gathered are kept.

State (per run, in :class:`_DaskRun`, touched only by the driver thread): each unit's live
future and the attempt it runs, outcomes of looked-ahead attempts that arrived early, the
attempts in flight, and the futures to watch and to cancel. Watchers in the client's event
loop only post ``(index, attempt, future)`` to the driver's queue. The scheduler's
``results`` hold each completed unit's future; at the end the requested results are gathered
in one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import time
import uuid
from collections.abc import Collection, Mapping
from concurrent.futures import CancelledError, ThreadPoolExecutor
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .._context import PAUSES_KEY, ExecutionContext, call_unit_function
from .._errors import BrokenBackendError, InternalError
from .._graph import UnitState, materialise, metadata_of
from ..observability._events import UnitFinished
from ._base import Backend, CarriedBaseException, carried_failure, check_sendable, root_cause

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._run import Run

__all__ = ["DaskBackend"]

LOGGER = logging.getLogger("quantum_partitioner")

#: What to install when ``distributed`` is missing.
INSTALL_HINT: Final = "pip install 'quantum-partitioner[dask]'"

#: How often the driver checks that the client still has its scheduler while it waits.
_WATCH_INTERVAL: Final = 1.0
#: The longest single wait; far deadlines are waited for in steps.
_MAX_WAIT: Final = 3600.0

_PENDING: Final = UnitState.PENDING
_RUNNING: Final = UnitState.RUNNING
_COMPLETED: Final = UnitState.COMPLETED
_FAILED: Final = UnitState.FAILED
_TIMEOUT: Final = UnitState.TIMEOUT
_FAILED_STATES: Final = frozenset({_FAILED, _TIMEOUT})
_DROPPED_STATES: Final = frozenset({UnitState.SKIPPED, UnitState.CANCELED})
_CONNECTION_LOST: Final = "scheduler-connection-lost"
#: Statuses of a done Dask future whose task did not produce a result.
_UNFINISHED: Final = frozenset({"error", "cancelled"})


#: How long results lost with their workers are waited for while the cluster has no worker.
_NO_WORKERS_SECONDS: Final = 30.0


class _LostResultError(RuntimeError):
    """A completed unit's result died with its worker and no worker was left to recompute it."""


class _Lost:
    """A stand-in for a future whose result is lost: ``result()`` raises why."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        raise self.error


def load_distributed() -> Any:
    """Import ``distributed``, or say which extra to install."""
    try:
        import distributed  # noqa: PLC0415 - an optional dependency, loaded when needed
    except ImportError as error:
        raise ImportError(
            f"DaskBackend needs dask.distributed, which is not installed: {INSTALL_HINT}"
        ) from error
    return distributed


# -- what runs on the workers ------------------------------------------------------------------


_NO_ERRORS: Mapping[str, BaseException] = MappingProxyType({})


class UnitOutput(NamedTuple):
    """What a unit's task leaves on its worker: the result and what the caller wants to know."""

    value: Any
    metrics: dict[str, Any] | None
    worker: str


def run_attempt(  # noqa: PLR0917 - called by Dask with positional arguments only
    function: Callable[[ExecutionContext], Any],
    unit_id: str,
    attempt: int,
    mode: str,
    names: tuple[str, ...],
    context: dict[str, Any],
    *inputs: Any,
    upstream_errors: Mapping[str, BaseException] = _NO_ERRORS,
    pause_token: str | None = None,
    item: tuple[int, Any] | None = None,
) -> UnitOutput:
    """Run one attempt of a unit on a Dask worker.

    ``inputs`` are the dependencies' outputs in the order of ``names``: a dependency's
    :class:`UnitOutput` (Dask resolved its future here, worker to worker) or a plain fallback
    value. ``upstream_errors``: why the other dependencies have no output (join rules).
    ``pause_token``: the run's, when it has named limits: ``ctx.pause_limit`` then tells the
    caller at once (:class:`_PauseFromWorker`). ``item``: a map item's ``(index, item)``.
    A map's result arrives as the list of its items' outputs.
    """
    results = {name: _value_of(value) for name, value in zip(names, inputs, strict=True)}
    if item is not None:
        item = (item[0], _value_of(item[1]))
    watch = None if pause_token is None else _PauseFromWorker(pause_token)
    ctx = ExecutionContext(
        context, results, unit_id, attempt, mode, watch, -1, upstream_errors, item
    )
    try:
        value = call_unit_function(function, ctx)
        check_sendable(unit_id, value, "the Dask worker", _serialize)
    except BaseException as error:  # it must fail the unit, not the worker
        carried = carried_failure(error, ctx.metrics)
        if carried is None:
            raise
        raise carried from None
    return UnitOutput(value, ctx.metrics, _worker_address())


def _value_of(value: Any) -> Any:
    """An input as the unit sees it: an output's value; a map's list of item outputs, values."""
    if type(value) is UnitOutput:
        return value.value
    if type(value) is list:  # a map's result: its items' outputs (or fallback values)
        return [v.value if type(v) is UnitOutput else v for v in value]
    return value


#: The event topic on which ``ctx.pause_limit`` calls travel from workers to the caller.
PAUSE_TOPIC: Final = "quantum-partitioner-pause-limit"
#: The runs of this process listening for pauses, by run token (they share one topic).
_pause_listeners: dict[str, Callable[[str, float], None]] = {}


class _PauseFromWorker:
    """``ctx.pause_limit`` on a worker: an event through the scheduler, to the caller at once.

    As in the caller's process, the pause holds while the attempt still runs, and also when
    it then fails (a 429 handler); the result may stay on the cluster, its metrics with it.
    """

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        self._token = token

    def attempt_abandoned(self, index: int, attempt: int) -> bool:
        """Unknown on a worker: never."""
        del index, attempt
        return False

    def pause_limit(self, name: str, seconds: float) -> None:
        """Send the pause to the run's driver."""
        from distributed import get_worker  # noqa: PLC0415 - present wherever this runs

        get_worker().log_event(PAUSE_TOPIC, (self._token, name, seconds))


def _on_pause(event: tuple[float, Any]) -> None:
    """In the client's loop: a unit paused a limit; hand it to its run's driver."""
    _, (token, name, seconds) = event
    listener = _pause_listeners.get(token)
    if listener is not None:
        listener(name, seconds)


def _serialize(value: Any) -> None:
    """Serialize ``value`` as Dask would to move it, or raise."""
    from distributed.protocol.serialize import serialize  # noqa: PLC0415 - on every worker

    serialize(value, on_error="raise")


def _fetch_output(value: Any) -> Any:
    """A value a ``when=`` predicate reads: a unit's output is brought here from the cluster.

    A map's value is the list of its items' futures (or fallback values): gathered at once.
    """
    future_type = load_distributed().Future
    if type(value) is list:
        futures = [v for v in value if isinstance(v, future_type)]
        if futures:
            return [_value_of(output) for output in futures[0].client.gather(value)]
    if isinstance(value, future_type):
        value = value.result()
    return value.value if type(value) is UnitOutput else value


def measure_items(  # noqa: PLR0917 - called by client.run with positional arguments
    key: str,
    map_name: str,
    over_name: str,
    digests: bool,
    max_items: int | None,
    dask_worker: Any = None,
) -> tuple[int, list[bytes | None] | None] | None:
    """On a worker (``client.run``): how many items the output under ``key`` gives, if held.

    With ``digests``, also each item's fingerprint (None for one that has none), for the
    cache keys of the items: their values never travel to the caller. Runs beside the
    worker's tasks, not in one of its threads: measuring never waits for a free thread.
    Raises the :func:`materialise` error for a result that is not iterable.
    """
    data = dask_worker.data
    if key not in data:
        return None
    items = materialise(map_name, over_name, _value_of(data[key]), max_items, in_caller=False)
    return len(items), item_digests(items) if digests else None


def item_digests(items: list[Any]) -> list[bytes | None]:
    """Each item's fingerprint, or None where it has none (its item then runs uncached)."""
    from ..caching._fingerprint import UnfingerprintableError, fingerprint  # noqa: PLC0415 - cache only

    out: list[bytes | None] = []
    for item in items:
        try:
            out.append(fingerprint(item))
        except UnfingerprintableError:
            out.append(None)
    return out


def list_items(map_name: str, over_name: str, output: Any, max_items: int | None) -> list[Any]:
    """On a worker: the items of a map, once, for the tasks that pick each."""
    return materialise(map_name, over_name, _value_of(output), max_items, in_caller=False)


def pick_item(items: list[Any], position: int) -> Any:
    """On a worker: one item of a map, so only that item travels to the task using it."""
    return items[position]


def _worker_address() -> str:
    from distributed import get_worker  # noqa: PLC0415 - present wherever this runs

    try:
        return str(get_worker().address)
    except ValueError:  # not inside a worker (a test calling run_attempt directly)
        return ""


def read_outputs(keys: Collection[str], dask_worker: Any = None) -> dict[str, tuple[Any, str]]:
    """On a worker (``client.run``): the metrics and worker of the outputs it holds."""
    data = dask_worker.data
    found = {}
    for key in keys:
        if key in data:
            output = data[key]
            if type(output) is UnitOutput:
                found[key] = (output.metrics, output.worker)
    return found


# -- the backend -------------------------------------------------------------------------------


class DaskBackend(Backend):
    """Run attempts as tasks on a ``dask.distributed`` cluster (see the module docstring).

    Args:
        client: A synchronous :class:`distributed.Client`; None uses the default client at
            each run. The run never closes it.
        gather: Which results come back to the caller: ``"all"`` (the default, as
            ``execute()`` returns every result), None (none), or unit names. The other
            units' results stay on the workers and are absent from ``execute()``'s results,
            ``get_partial_results()`` and ``units[name].result``.
        lookahead: Hand a unit to Dask as soon as its dependencies have futures, so Dask
            starts it without a round trip through the client. False submits a unit only
            once its dependencies are known to have completed.

    Raises:
        ImportError: ``distributed`` is not installed (the message names the extra).

    .. versionadded:: 0.1
    """

    name = "dask"

    def __init__(
        self,
        client: Any = None,
        *,
        gather: str | Collection[str] | None = "all",
        lookahead: bool = True,
    ) -> None:
        """Check that ``distributed`` is installed and remember the options."""
        distributed = load_distributed()
        if client is not None and not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client or None, got {client!r}")
        if isinstance(gather, str):
            if gather != "all":
                raise ValueError(f'gather must be "all", None or unit names, got {gather!r}')
        elif gather is not None:
            if not isinstance(gather, Collection) or not all(isinstance(g, str) for g in gather):
                raise TypeError(f'gather must be "all", None or unit names, got {gather!r}')
            gather = frozenset(gather)
        self.client = client
        self.gather: frozenset[str] | str | None = gather
        self.lookahead = bool(lookahead)
        self._distributed = distributed
        #: Each run claimed and not yet driven: its state on the cluster.
        self._claimed: dict[Run, _DaskRun] = {}

    def __repr__(self) -> str:
        """Name the client and the options."""
        return f"DaskBackend({self.client!r}, gather={self.gather!r}, lookahead={self.lookahead})"

    def claim(self, run: Run) -> None:
        """Check the client can take ``run`` and send it the context, before the run begins.

        Raises:
            ValueError: ``gather`` names a unit the graph does not have.
            BrokenBackendError: The client is closed.
            TypeError: The client is asynchronous, or the context cannot be sent to the
                cluster.
        """
        client = self.client
        if client is None:
            client = self._distributed.client.default_client()
        if getattr(client, "asynchronous", False):
            raise TypeError("DaskBackend needs a synchronous Client (asynchronous=False)")
        if client.status != "running":
            raise BrokenBackendError(
                f"DaskBackend needs a running client; this one is {client.status}"
            )
        keep = self._indices_to_gather(run)
        dask_run = _DaskRun(run, client, keep, lookahead=self.lookahead and run.cache is None)
        try:
            dask_run.open()
        except BaseException:
            dask_run.close()
            raise
        # Runs of several partitioners may share the backend: each has its own.
        self._claimed[run] = dask_run

    def release(self, run: Run) -> None:
        """Let go of a claimed run that was not driven (its context leaves the cluster)."""
        dask_run = self._claimed.pop(run, None)
        if dask_run is not None:
            dask_run.close()

    def run(self, run: Run) -> None:
        """Drive ``run`` on the cluster until every unit is terminal (claiming it first).

        Raises:
            KeyboardInterrupt: After cancelling the run's futures on the cluster.
        """
        if run not in self._claimed:
            self.claim(run)
        dask_run = self._claimed.pop(run)
        previous_wake = run.wake
        run.wake = dask_run.wake
        try:
            run.fetch_value = _fetch_output
            if run.scheduler.maps:
                run.count_items = dask_run.count_items
            dask_run.drive()
            dask_run.collect()
        except BaseException as error:
            run.report(run.interrupt("interrupted", error))
            dask_run.cancel_all()
            with contextlib.suppress(Exception):  # a second Ctrl-C still gets through
                dask_run.collect()
            raise
        finally:
            run.wake = previous_wake
            dask_run.close()

    def _indices_to_gather(self, run: Run) -> frozenset[int]:
        names = run.graph.names
        if self.gather == "all":
            return frozenset(range(len(names)))
        if self.gather is None:
            return frozenset()
        assert isinstance(self.gather, frozenset)
        index = run.graph.index
        unknown = sorted(name for name in self.gather if name not in index)
        if unknown:
            raise ValueError(f"gather names units that do not exist: {unknown}")
        return frozenset(index[name] for name in self.gather)


class _Fetched(NamedTuple):
    """Outputs fetched during the run (for ``unit_finished`` hooks), posted to the driver."""

    units: list[tuple[int, int]]
    outputs: list[UnitOutput | BaseException]


class _DaskRun:
    """One run on the cluster: the driver loop and the futures it reconciles with the scheduler."""

    def __init__(self, run: Run, client: Any, keep: frozenset[int], *, lookahead: bool) -> None:
        graph = run.graph
        n = len(graph)
        self.run = run
        self.client = client
        #: The units whose results come back: a map's items with their map.
        self.keep = set(keep)
        self.lookahead = lookahead
        self.token = uuid.uuid4().hex[:12]
        #: Keys are unique per submission: a cancelled key is never reused.
        self.serial = itertools.count()
        self.outcomes: queue.SimpleQueue[tuple[int, int, Any] | _Fetched | _Paused | None] = (
            queue.SimpleQueue()
        )
        #: Each unit's live future (running, looked ahead, or completed) and its attempt.
        self.futures: list[Any] = [None] * n
        self.future_attempt: list[int] = [0] * n
        #: Per unit, how many of its dependencies (in order) were seen with a future or value.
        self.scanned: list[int] = [0] * n
        #: Looked-ahead futures that ended before the scheduler started their unit.
        self.early: dict[int, Any] = {}
        #: Units the scheduler holds RUNNING, with the attempt.
        self.in_flight: dict[int, int] = {}
        self.to_cancel: list[Any] = []
        self.outputs: dict[int, UnitOutput] = {}
        self.broken: str | None = None
        self.context: Any = {}
        self.options: list[dict[str, Any]] = []
        #: The key each unit's function reads each dependency by (inner names in subgraphs).
        self.dep_names = graph.view_keys() or [
            tuple(graph.names[j] for j in row) for row in graph.deps
        ]
        self.future_type: type[Any] = load_distributed().Future
        #: Futures submitted since the driver last handed them to the client's loop to watch.
        self.to_watch: list[tuple[Any, int, int]] = []
        #: The loop-side tasks waiting on them (touched only in the client's loop).
        self.watchers: set[asyncio.Future[None]] = set()
        self.done_callback = getattr(load_distributed().client, "done_callback", None)
        self.fetcher: ThreadPoolExecutor | None = None
        self.fetching = 0
        self.to_fetch: list[tuple[int, int]] = []
        #: What every task of the run receives so its ``ctx.pause_limit`` reaches us.
        self.pause_kwargs: dict[str, str] = {}
        sched = run.scheduler
        #: Never handed over ahead: units a condition or a rule decides, and maps (which never
        #: run; their items exist only once the map expanded, and are submitted when started).
        self.not_ahead = sched.judged | frozenset(sched.maps)
        #: Each expanded map over a unit -> the list of its items on the cluster (a future),
        #: or, for a result that is here (cached, a fallback value), the items themselves.
        self.item_sources: dict[int, Any] = {}
        #: Each map item -> the future picking its item from that list (kept for retries).
        self.picks: dict[int, Any] = {}
        #: Each map -> the Dask priority of its items (item-wise ones rank after their parent).
        self.item_priority: dict[int, tuple[float, int]] = {}
        #: The gap between neighbouring units' Dask priorities (set by ``open``).
        self.priority_step = 1.0
        run.on_grow.append(self._grow)

    def _grow(self, items: range) -> None:
        """A map made ``items``: each is a unit with its map's task options."""
        if not items:
            return
        m = self.run.scheduler.item_of[items[0]][0]
        count = len(items)
        self.futures.extend([None] * count)
        self.future_attempt.extend([0] * count)
        self.scanned.extend([0] * count)
        options = self.options[m]
        priority = self._priority_of_items(m, options["priority"])
        if priority != options["priority"]:
            options = {**options, "priority": priority}
        self.options.extend([options] * count)
        self.dep_names.extend([()] * count)  # an item's inputs come from inputs_of
        if m in self.keep:
            self.keep.update(items)

    def _paused(self, name: str, seconds: float) -> None:
        """A unit paused limit ``name`` (in the client's loop): the driver applies it."""
        self.outcomes.put(_Paused(name, seconds))

    def wake(self) -> None:
        """Wake the driver (``cancel()`` from another thread)."""
        self.outcomes.put(None)

    # -- setting up ------------------------------------------------------------------------

    def open(self) -> None:
        """Scatter the context, listen for pauses, and work out each unit's task options."""
        run = self.run
        if run.context:
            self.context = self._scatter(dict(run.context))
        if run.limits:  # units may pause them
            _pause_listeners[self.token] = self._paused
            self.client.subscribe_topic(PAUSE_TOPIC, _on_pause)  # the same handler for all
            self.pause_kwargs = {"pause_token": self.token}
        graph = run.graph
        n = len(graph)
        _, position_of = graph.priority_order()
        declared = self._declared_resources()
        units = graph.units
        integral = all(float(unit.priority).is_integer() for unit in units)
        self.priority_step = 1 / (n + 1) if integral else 1.0
        for i, unit in enumerate(units):
            rank = n - position_of[i]  # higher runs sooner, as Dask reads priorities
            priority = unit.priority + rank / (n + 1) if integral else rank
            options: dict[str, Any] = {"priority": priority, "pure": False, "retries": 0}
            kind = metadata_of(unit).get("resource_type")
            if isinstance(kind, str) and kind in declared:
                options["resources"] = {kind: 1}
            self.options.append(options)

    def _scatter(self, context: dict[str, Any]) -> Any:
        client = self.client
        try:
            [future] = client.scatter([context], broadcast=True, hash=False)
        except Exception as error:
            pickle = load_distributed().protocol.pickle
            for key, value in context.items():
                try:
                    pickle.dumps(value)
                except Exception:
                    raise TypeError(
                        f"context key {key!r} ({type(value).__name__}) cannot be sent to the "
                        f"Dask cluster: {error}"
                    ) from error
            raise
        return future

    def _declared_resources(self) -> frozenset[str]:
        if not any(metadata_of(unit).get("resource_type") for unit in self.run.graph.units):
            return frozenset()  # spare the round trip
        workers = self.client.scheduler_info().get("workers", {})
        return frozenset(
            itertools.chain.from_iterable((w.get("resources") or {}) for w in workers.values())
        )

    # -- maps --------------------------------------------------------------------------------

    def count_items(self, m: int, over: int) -> int:
        """``Run.count_items``: measure the result map ``m`` maps over where it is kept.

        The worker holding it answers with the length (``client.run``, no task thread
        needed); a task then lists the items there once, and each item's task takes its own
        through a task picking it, so the list never travels to the caller.
        """
        names = self.run.graph.names
        map_name, over_name = names[m], names[over]
        source = self.run.scheduler.results[over]
        cached = self.run.cache is not None
        max_items = self.run.graph.units[m].max_items
        if not isinstance(source, self.future_type):  # a cached or fallback value: here
            values = materialise(map_name, over_name, source, max_items)
            self.item_sources[m] = values
            if cached:
                self.run.item_digests[m] = item_digests(values)
            return len(values)
        if self.broken is not None:
            raise BrokenBackendError(f"map {map_name!r}: {self.broken}")
        answers = self.client.run(measure_items, source.key, map_name, over_name, cached, max_items)
        measured = [answer for answer in answers.values() if answer is not None]
        if not measured:
            raise BrokenBackendError(
                f"map {map_name!r}: the result of {over_name!r} is lost from the Dask cluster"
            )
        count, digests = measured[0]
        if digests is not None:
            self.run.item_digests[m] = digests
        self.item_sources[m] = self._submit_helper(
            f"{map_name}-items", m, list_items, map_name, over_name, source, max_items
        )
        return int(count)

    def _submit_helper(self, stem: str, i: int, function: Callable[..., Any], *args: Any) -> Any:
        """Submit a task that lists or picks items, at unit ``i``'s priority."""
        return self.client.submit(
            function,
            *args,
            key=f"{stem}-{self.token}-{next(self.serial)}",
            priority=self.options[i]["priority"],
            pure=False,
        )

    def _priority_of_items(self, m: int, own: float) -> float:
        """The Dask priority of map ``m``'s items (its own is ``own``).

        Items of an item-wise map of equal ``priority`` rank right after the item they
        follow, before the remaining items of that map: depth-first, as in the scheduler.
        """
        sched = self.run.scheduler
        over = sched.maps[m]
        units = self.run.graph.units
        parent = self.item_priority.get(over)
        if parent is None or units[m].priority != units[over].priority:
            self.item_priority[m] = (own, 0)
            return own
        priority, depth = parent
        placed = priority + self.priority_step * 0.5 ** (depth + 1)
        self.item_priority[m] = (placed, depth + 1)
        return placed

    def _item_input(self, i: int, m: int, position: int) -> Any:
        """What item ``i`` (at ``position`` of map ``m``) maps: a pick, a value or a future."""
        sched = self.run.scheduler
        parent = sched.item_parent.get(i)
        if parent is not None:  # item-wise: the output of the item it follows
            return sched.results[parent]
        source = self.item_sources[m]
        if type(source) is list:
            return source[position]
        pick = self.picks.get(i)
        if pick is None:
            name = self.run.graph.names[i]
            pick = self._submit_helper(f"{name}-pick", i, pick_item, source, position)
            self.picks[i] = pick
        return pick

    # -- the driver loop -------------------------------------------------------------------

    def drive(self) -> None:
        """Start ready units, settle outcomes and act on deadlines until every unit is terminal.

        This has the shape of the lane driver: everything the scheduler decides happens in
        this thread; Dask's callbacks only post to ``outcomes``.
        """
        run = self.run
        sched, clock = run.scheduler, run.clock
        started_hooks = run.dispatcher.unit_started
        while sched.is_active() or self.fetching or self.to_fetch:
            if run.cancel_requested.is_set():
                transitions = run.interrupt("cancel() was called")
                self.cancel_all()
                run.report(transitions)
                return
            now = clock()
            if sched.has_deadlines:
                transitions = sched.advance(now)
                self._act(transitions)
                run.report(transitions)
            if sched.to_decide or sched.outbox:
                transitions = run.settle_decisions()
                self._act(transitions)
                run.report(transitions)
            while True:
                i = sched.start_next(now)
                if i < 0:
                    break
                attempt = sched.attempts[i]
                self.in_flight[i] = attempt
                if started_hooks:
                    run.emit_started(i, attempt, now)
                self._launch(i, attempt)
            self._flush()
            deadline = sched.next_deadline()
            if not self.in_flight and deadline is None and not self.fetching:
                if sched.waiting_on_limits:  # for a limit another run holds
                    self._settle(self.outcomes.get())
                    continue
                if sched.is_active() and not sched.ready_count:
                    raise InternalError("no unit is ready, running or waiting")
                continue  # units became ready, or the run is over
            timeout = _MAX_WAIT if deadline is None else max(0.0, deadline - clock())
            if self.in_flight:
                timeout = min(timeout, _WATCH_INTERVAL)
            try:
                item = self.outcomes.get(timeout=timeout)
            except queue.Empty:
                self._watch_client()
                continue
            self._settle(item)
            while True:  # drain what else arrived, without blocking
                try:
                    item = self.outcomes.get_nowait()
                except queue.Empty:
                    break
                self._settle(item)

    def _launch(self, i: int, attempt: int) -> None:
        """Start attempt ``attempt`` of unit ``i``, which the scheduler just marked RUNNING."""
        future = self.futures[i]
        if future is not None and self.future_attempt[i] == attempt:
            early = self.early.pop(i, None)  # looked ahead: Dask already has it
            if early is not None:
                self.outcomes.put((i, attempt, early))
        else:
            if future is not None:
                self._drop(i)
            run = self.run
            cache = run.cache
            if cache is not None:
                hit, value = run.lookup_cached(i)
                if hit:
                    self.outcomes.put((i, attempt, _Served(value)))
                    return
            sched = run.scheduler
            if sched.errors or sched.partial_inputs or sched.item_of:  # or a map's item
                self._submit_with_gaps(i, attempt)
            else:
                results = sched.results
                self._submit(i, attempt, [results[j] for j in run.graph.deps[i]])
        if self.lookahead:
            self._look_ahead(i)

    def _submit_with_gaps(self, i: int, attempt: int) -> None:
        """Submit a unit with the outputs that exist and why the others do not (join rules).

        A map's item gets its map's inputs and its item: a pick's future, the future of the
        item it follows, or a value.
        """
        run = self.run
        inputs, upstream = run.inputs_of(i)
        sched = run.scheduler
        place = sched.item_of.get(i) if sched.item_of else None
        item = None if place is None else (place[1], self._item_input(i, *place))
        self._submit(i, attempt, list(inputs.values()), tuple(inputs), upstream, item=item)

    def _submit(
        self,
        i: int,
        attempt: int,
        inputs: Sequence[Any],
        dep_names: tuple[str, ...] | None = None,
        upstream_errors: Mapping[str, BaseException] | None = None,
        *,
        item: tuple[int, Any] | None = None,
    ) -> None:
        """Hand attempt ``attempt`` of unit ``i`` to Dask with ``inputs`` (futures or values)."""
        run = self.run
        name = run.graph.names[i]  # an item's unit is its map's: the name is its own
        if self.broken is not None:
            error = BrokenBackendError(f"unit {name!r}: {self.broken}")
            self.outcomes.put((i, attempt, _Failed(error)))
            return
        unit = run.graph.units[i]
        try:
            future = self.client.submit(
                run_attempt,
                unit.function,
                name,
                attempt,
                run.mode,
                self.dep_names[i] if dep_names is None else dep_names,
                self.context,
                *inputs,
                key=f"{name}-{attempt}-{self.token}-{next(self.serial)}",
                **self.options[i],
                **({"upstream_errors": upstream_errors} if upstream_errors else {}),
                **({"item": item} if item is not None else {}),
                **self.pause_kwargs,
            )
        except Exception as error:  # e.g. a function that cannot be pickled
            failure: BaseException
            if self.client.status == "running":
                failure = TypeError(
                    f"unit {name!r} cannot be sent to the Dask cluster: {root_cause(error)}"
                )
            else:  # the client closed under us
                self._break(_went_away(f"the client is {self.client.status}"))
                failure = BrokenBackendError(f"unit {name!r}: {self.broken}")
            failure.__cause__ = error
            self.outcomes.put((i, attempt, _Failed(failure)))
            return
        self.futures[i] = future
        self.future_attempt[i] = attempt
        self.to_watch.append((future, i, attempt))

    def _look_ahead(self, start: int) -> None:
        """Hand over the dependents of ``start`` whose every dependency now has a future."""
        sched = self.run.scheduler
        if sched.stopped or self.broken is not None:
            return
        deps, dependents = self.run.graph.deps, self.run.graph.dependents
        state, attempts, results = sched.state, sched.attempts, sched.results
        # A unit that names limits goes to Dask only once it holds its slots.
        limited = {} if sched.gate is None else sched.gate.needs
        futures, scanned, has_value = self.futures, self.scanned, self._has_value
        items = sched.item_of
        judged = self.not_ahead  # a condition, a join rule or a map decides here, not ahead
        stack = [start]
        while stack:
            for k in dependents[stack.pop()]:
                if futures[k] is not None or state[k] is not _PENDING or attempts[k]:
                    continue  # handed over already, ended, or waiting for a retry
                if k in limited or (judged and k in judged):
                    continue
                if items and k in items:
                    continue  # an item-wise item: its item and inputs are named at its start
                row = deps[k]
                # Resume where the last look stopped: a sink of n units costs O(n) in all.
                c, m = scanned[k], len(row)
                while c < m and (futures[row[c]] is not None or has_value(row[c])):
                    c += 1
                scanned[k] = c
                if c == m:
                    inputs = [results[j] if futures[j] is None else futures[j] for j in row]
                    self._submit(k, 1, inputs)
                    if futures[k] is not None:
                        stack.append(k)

    def _has_value(self, j: int) -> bool:
        """Whether unit ``j``'s dependents can take its result: completed, or a fallback."""
        sched = self.run.scheduler
        state = sched.state[j]
        return state is _COMPLETED or (
            (state is _FAILED or state is _TIMEOUT) and j in sched.fallbacks
        )

    def _forget(self, i: int) -> None:
        """Unit ``i`` has no live future any more; its dependents' scans must look again."""
        self.futures[i] = None
        scanned = self.scanned
        for k in self.run.graph.dependents[i]:
            scanned[k] = 0

    def _settle(self, item: tuple[int, int, Any] | _Fetched | _Paused | None) -> None:
        if item is None:
            return
        if isinstance(item, _Fetched | _Paused):
            self._receive(item)
            return
        i, attempt, future = item
        local = isinstance(future, _Served | _Failed)
        if not local and self.futures[i] is not future:
            return  # dropped: timed out, cancelled or superseded; its outcome means nothing
        run = self.run
        sched = run.scheduler
        if sched.state[i] is not _RUNNING or sched.attempts[i] != attempt:
            if not local:
                self.early[i] = future  # looked ahead, and done before its inputs were known
            return
        del self.in_flight[i]
        now = run.clock()
        if isinstance(future, _Served):  # from the run's cache: a plain value
            self._forget(i)
            sched.complete(i, attempt, future.value, now)
            if run.dispatcher.unit_finished:
                run.emit_finished(i, attempt, now)
            return
        if not local and future.status not in _UNFINISHED:  # "lost" data Dask recomputes
            sched.complete(i, attempt, future, now)
            if run.dispatcher.unit_finished:
                if i in self.keep:
                    self.to_fetch.append((i, attempt))  # announced once its value is here
                else:
                    run.emit_finished(i, attempt, now)  # the event carries the future
            return
        if local:
            error = future.error
        else:
            try:
                error = self._error_of(i, future)
            except Exception as unknown:  # the client itself failed while asked why
                error = BrokenBackendError(f"unit {run.graph.names[i]!r}: {unknown!r}")
                error.__cause__ = unknown
        self._forget(i)
        transitions = sched.fail(i, attempt, error, now)
        self._drop_dependents(i)
        self._act(transitions)
        run.report(transitions)

    def _error_of(self, i: int, future: Any) -> BaseException:
        """Why a future did not finish: the unit's exception, or what Dask said.

        The ``ctx.pause_limit`` calls a failed attempt carried back are applied here.
        """
        name = self.run.graph.names[i]
        if future.status == "error":
            error: BaseException = future.exception()
            if isinstance(error, CarriedBaseException):
                if error.metrics:  # its ctx.pause_limit calls, in force before its retry
                    self.run.apply_pauses(error.metrics)
                error = error.error
            traceback = future.traceback()
            if traceback is not None:
                error = error.with_traceback(traceback)
            return error
        status = self.client.status
        reason = f"the client is {status}"
        if status in {"running", "connecting"}:  # its loop answers: ask the future why
            try:
                future.result()
            except CancelledError as cancelled:
                reason = getattr(cancelled, "reason", None) or str(cancelled)
            except Exception as error:
                return error
        if reason == _CONNECTION_LOST or status != "running":
            self._break(_went_away(reason))
            return BrokenBackendError(f"unit {name!r}: {self.broken}")
        return BrokenBackendError(f"unit {name!r}: the Dask cluster cancelled it ({reason})")

    def _break(self, reason: str) -> None:
        """The cluster is gone: fail every attempt in flight now, and every later one."""
        if self.broken is not None:
            return
        self.broken = reason
        LOGGER.error("Dask backend: %s; unfinished units fail", reason)
        for i, attempt in list(self.in_flight.items()):
            error = BrokenBackendError(f"unit {self.run.graph.names[i]!r}: {reason}")
            self.outcomes.put((i, attempt, _Failed(error)))
            self._forget(i)

    def _watch_client(self) -> None:
        """Notice a client that lost its scheduler while nothing arrives."""
        if self.broken is None and self.in_flight and self.client.status != "running":
            self._break(_went_away(f"the client is {self.client.status}"))

    def _act(self, transitions: Sequence[Any]) -> None:
        """Stop the attempts the scheduler gave up on: timed out, skipped, cancelled."""
        state = self.run.scheduler.state
        for t in transitions:
            i = t.index
            if t.was_running:  # timed out, or cancelled while running: its result is discarded
                self.in_flight.pop(i, None)
                self._drop(i)
                self._drop_dependents(i)
            elif state[i] in _DROPPED_STATES and self.futures[i] is not None:
                self._drop(i)  # looked ahead, but will never start

    def _drop(self, i: int) -> None:
        future = self.futures[i]
        self._forget(i)
        self.early.pop(i, None)
        if future is not None:
            self.to_cancel.append(future)

    def _drop_dependents(self, i: int) -> None:
        """Cancel the looked-ahead futures downstream of ``i``: an input of theirs will not come."""
        futures, dependents = self.futures, self.run.graph.dependents
        state = self.run.scheduler.state
        stack = [i]
        while stack:
            for k in dependents[stack.pop()]:
                if futures[k] is not None and state[k] is _PENDING:
                    self._drop(k)
                    stack.append(k)

    def _flush(self) -> None:
        """Watch the new futures, cancel the dropped ones, and start fetching for hooks."""
        if self.to_watch:
            watched, self.to_watch = self.to_watch, []
            put = self.outcomes.put
            if self.done_callback is None:
                for future, i, attempt in watched:
                    future.add_done_callback(partial(_post, put, i, attempt))
            else:  # one hop to the client's loop for the whole batch
                self.client.loop.add_callback(
                    _watch, self.done_callback, watched, put, self.watchers
                )
        if self.to_cancel:
            futures, self.to_cancel = self.to_cancel, []
            if self.broken is None:
                try:
                    self.client.cancel(futures, force=True)
                except Exception as error:  # released below anyway: nobody holds them
                    LOGGER.debug("Dask backend: cancel failed: %r", error)
        if self.to_fetch:
            batch, self.to_fetch = self.to_fetch, []
            if self.fetcher is None:
                self.fetcher = ThreadPoolExecutor(1, thread_name_prefix="quantum-partitioner-dask")
            futures = [self.run.scheduler.results[i] for i, _ in batch]
            self.fetching += 1
            self.fetcher.submit(self._fetch, batch, futures)

    # -- results -----------------------------------------------------------------------------

    def _fetch(self, batch: list[tuple[int, int]], futures: list[Any]) -> None:
        """In the fetcher thread: bring outputs here so ``unit_finished`` hooks get values."""
        outputs: list[UnitOutput | BaseException] = self._gather(futures)
        self.outcomes.put(_Fetched(batch, outputs))

    def _gather(self, futures: list[Any]) -> list[UnitOutput | BaseException]:
        """Gather outputs in one call; if that fails, one by one, keeping each error.

        A result whose worker died is recomputed by Dask, which needs a worker: while the
        cluster has none for :data:`_NO_WORKERS_SECONDS`, the results not yet here are
        given up (an error each) instead of waiting for ever.
        """
        futures = self._wait_while_workers(futures)
        try:
            if any(type(future) is _Lost for future in futures):
                raise _LostResultError  # noqa: TRY301 - take the one-by-one path below
            return list(self.client.gather(futures))
        except Exception:
            outputs: list[UnitOutput | BaseException] = []
            for future in futures:
                try:
                    outputs.append(future.result())
                except Exception as error:
                    outputs.append(error)
            return outputs

    def _wait_while_workers(self, futures: list[Any]) -> list[Any]:
        """``futures`` once done, or once the cluster has had no worker for a while.

        Then each one still pending is replaced by a stand-in whose ``result()`` says so.
        """
        # Polled, not distributed.wait(): that waits on the default client's loop, which
        # need not be this client's. The futures of completed units are done at once.
        workerless_since: float | None = None
        pause = 0.001
        checked = time.monotonic()
        while not all(future.done() for future in futures):
            time.sleep(pause)
            pause = min(2 * pause, 0.1)
            now = time.monotonic()
            if now - checked < 1.0:
                continue
            checked = now
            if self.client.scheduler_info().get("workers"):
                workerless_since = None
            elif workerless_since is None:
                workerless_since = now
            elif now - workerless_since >= _NO_WORKERS_SECONDS:
                lost = _LostResultError(
                    f"the cluster had no worker for {_NO_WORKERS_SECONDS:g} s to recompute it"
                )
                return [f if f.done() else _Lost(lost) for f in futures]
        return futures

    def _receive(self, item: _Fetched | _Paused) -> None:
        """News from the client's loop that is no attempt's outcome."""
        if isinstance(item, _Paused):
            self.run.apply_pauses({PAUSES_KEY: [item]})
        else:
            self._receive_fetched(item)

    def _receive_fetched(self, fetched: _Fetched) -> None:
        self.fetching -= 1
        run = self.run
        sched = run.scheduler
        hooks = run.dispatcher.unit_finished
        for (i, attempt), output in zip(fetched.units, fetched.outputs, strict=True):
            result = None
            if type(output) is UnitOutput:
                self.outputs[i] = output
                result = output.value
            else:
                LOGGER.warning(
                    "Dask backend: the result of %r is lost: %s", run.graph.names[i], output
                )
            ended = sched.ended[i]
            event = UnitFinished(
                run.graph.names[i], attempt, run.to_epoch(ended), ended - sched.started[i], result
            )
            run.dispatcher.emit(hooks, event)

    def collect(self) -> None:
        """Bring the requested results here; record metrics and workers; withhold the rest."""
        run = self.run
        sched = run.scheduler
        names = run.graph.names
        wanted = [
            i
            for i in self.keep
            if sched.state[i] is _COMPLETED
            and i not in self.outputs
            and isinstance(sched.results[i], self.future_type)
        ]
        if wanted and self.broken is not None:
            lost = sorted(names[i] for i in wanted)
            LOGGER.warning("Dask backend: results lost with the cluster: %s", lost)
        elif wanted:
            futures = [sched.results[i] for i in wanted]
            for i, gathered in zip(wanted, self._gather(futures), strict=True):
                if type(gathered) is UnitOutput:
                    self.outputs[i] = gathered
                else:
                    LOGGER.warning("Dask backend: the result of %r is lost: %s", names[i], gathered)
        remote: dict[str, int] = {}
        keep, future_type = self.keep, self.future_type
        gathered_by_key: dict[str, Any] = {}
        for i, state in enumerate(sched.state):
            if state is _COMPLETED:
                value = sched.results[i]
                output = self.outputs.get(i)
                if output is not None:
                    if isinstance(value, future_type):
                        gathered_by_key[value.key] = output.value
                    sched.results[i] = output.value
                    self._record(i, output.metrics, output.worker)
                    if run.cache is not None:
                        run.cache.remember(run, i, output.value)
                elif isinstance(value, future_type):  # not asked for, or lost
                    sched.results[i] = None
                    run.withheld.add(i)
                    remote[value.key] = i
                elif i not in keep:  # a cached value, not asked for
                    run.withheld.add(i)
            elif state in _FAILED_STATES and i in sched.fallbacks and i not in keep:
                run.withheld.add(i)
        self._collect_maps(gathered_by_key)
        if remote and self.broken is None:
            self._read_remote(remote)

    def _collect_maps(self, gathered_by_key: dict[str, Any]) -> None:
        """A map's result, the list of its items' futures, becomes their values.

        If an item did not come back (not asked for, or lost), the map is withheld instead,
        holding no future of the cluster.
        """
        run = self.run
        sched, future_type = run.scheduler, self.future_type
        results = sched.results
        for m in sched.items_of:
            values = results[m]
            if type(values) is not list:
                continue
            out = []
            for entry in values:
                if isinstance(entry, future_type):
                    if entry.key not in gathered_by_key:
                        results[m] = None
                        run.withheld.add(m)
                        break
                    out.append(gathered_by_key[entry.key])
                else:  # a fallback value
                    out.append(entry)
            else:
                results[m] = out
                if m not in self.keep:
                    run.withheld.add(m)

    def _read_remote(self, remote: dict[str, int]) -> None:
        """Metrics and worker of results that stay on the cluster, without moving them."""
        try:
            found = self.client.run(read_outputs, list(remote), on_error="return")
        except Exception as error:  # the metadata is a nicety: never fail the run for it
            LOGGER.warning("Dask backend: cannot read metrics from the workers: %s", error)
            return
        for per_worker in found.values():
            if isinstance(per_worker, dict):
                for key, (metrics, worker) in per_worker.items():
                    self._record(remote[key], metrics, worker)

    def _record(self, i: int, metrics: dict[str, Any] | None, worker: str) -> None:
        if metrics:
            self.run.keep_metrics(i, metrics)
        if worker:
            self.run.unit_workers[i] = worker

    # -- ending ------------------------------------------------------------------------------

    def cancel_all(self) -> None:
        """Cancel every future of the run that has not completed, on the cluster."""
        sched = self.run.scheduler
        for i, future in enumerate(self.futures):
            if future is not None and sched.state[i] is not _COMPLETED:
                self._drop(i)
        self.in_flight.clear()
        self.to_cancel += [f for f in self._map_helpers() if isinstance(f, self.future_type)]
        if self.to_cancel and self.broken is None:
            futures, self.to_cancel = self.to_cancel, []
            with contextlib.suppress(Exception):
                self.client.cancel(futures, force=True)

    def _map_helpers(self) -> list[Any]:
        """The tasks that list and pick map items."""
        return [*self.item_sources.values(), *self.picks.values()]

    def close(self) -> None:
        """Release every future of the run (the cluster frees what nobody else holds).

        The client stays subscribed to the pause topic: another run may be listening.
        """
        _pause_listeners.pop(self.token, None)
        if self.fetcher is not None:
            self.fetcher.shutdown(wait=False, cancel_futures=True)
        results = self.run.scheduler.results
        future_type, items_of = self.future_type, self.run.scheduler.items_of
        for i, value in enumerate(results):
            if isinstance(value, future_type) or (  # interrupted before collect() ran
                type(value) is list
                and i in items_of
                and any(isinstance(v, future_type) for v in value)
            ):
                results[i] = None
                self.run.withheld.add(i)
        self.futures = []
        self.item_sources.clear()
        self.picks.clear()
        self.early.clear()
        self.to_cancel = []
        self.context = {}


class _Served(NamedTuple):
    """An outcome decided here: a cached result."""

    value: Any


class _Paused(NamedTuple):
    """A unit's ``ctx.pause_limit`` call on a worker."""

    name: str
    seconds: float


class _Failed(NamedTuple):
    """An outcome decided here: an attempt that could not be handed to Dask."""

    error: BaseException


def _went_away(reason: str) -> str:
    if reason == _CONNECTION_LOST:
        reason = "the client lost the connection to the scheduler"
    return f"the Dask cluster went away ({reason})"


def _post(put: Callable[[Any], None], i: int, attempt: int, future: Any) -> None:
    """A future is done: tell the driver, nothing else (runs in the client's loop)."""
    put((i, attempt, future))


def _watch(
    done_callback: Callable[..., Any],
    batch: list[tuple[Any, int, int]],
    put: Callable[[Any], None],
    watchers: set[asyncio.Future[None]],
) -> None:
    """In the client's event loop: wait on each future of ``batch``; post it when done.

    ``Future.add_done_callback`` would do the same per future, plus a hop through a thread
    pool and one wake-up of the loop per future: on a scheduler that shares this process's
    GIL (a LocalCluster), that hand-off costs more than the rest of the driver's work.
    """
    for future, i, attempt in batch:
        watcher = asyncio.ensure_future(done_callback(future, partial(_post, put, i, attempt)))
        watchers.add(watcher)  # a reference, as asyncio asks: it keeps only weak ones
        watcher.add_done_callback(watchers.discard)
