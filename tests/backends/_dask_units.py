"""Unit functions for the Dask tests, importable by name on the cluster's worker processes.

test_dask.py puts this directory on ``sys.path`` before it starts its cluster; the workers
are spawned with the test process's ``sys.path``, so functions defined here pickle by
reference and every worker imports them. (Lambdas and closures written in the tests travel
by value, as users' would.)
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _contract_units import BASE_EXCEPTIONS  # the same directory, on every worker's path

# -- small units -------------------------------------------------------------------------------


def exploding_unit(ctx: Any) -> None:
    """Raise on the worker."""
    raise ValueError(f"{ctx.unit_id} exploded")


def flaky(ctx: Any) -> str:
    """Fail on the first two attempts."""
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt}")
    return f"ok on {ctx.attempt}"


def fails_once(ctx: Any) -> float:
    """Fail on the first attempt; on the next one, return when it started."""
    if ctx.attempt == 1:
        raise ConnectionError("first attempt")
    return time.time()


def started_at(ctx: Any) -> float:
    """Return when the unit started, then take a little time (ordering tests)."""
    now = time.time()
    time.sleep(0.05)
    return now


def sleep_then(ctx: Any) -> str:
    """Sleep ``ctx["seconds"]`` (a context key), then return."""
    time.sleep(ctx["seconds"])
    return "slept"


def touch(ctx: Any) -> str:
    """Leave a file behind: proof that the unit ran."""
    Path(ctx["marker"]).write_text(ctx.unit_id)
    return "touched"


def where_am_i(ctx: Any) -> dict[str, Any]:
    """The worker running the unit and the Dask resources its task asked for."""
    from distributed import get_worker  # noqa: PLC0415 - only on a worker

    worker = get_worker()
    task = worker.state.tasks[worker.get_current_task()]
    return {"worker": worker.address, "resources": dict(task.resource_restrictions or {})}


def counting(ctx: Any) -> int:
    """Record metrics on the worker."""
    ctx.record_metric("rows", 42)
    ctx.record_metric("source", "db")
    return 42


def raise_base_exception(ctx: Any) -> None:
    """Raise the BaseException named like the unit (a key of ``BASE_EXCEPTIONS``)."""
    raise BASE_EXCEPTIONS[ctx.unit_id](f"{ctx.unit_id} raised it")


def returns_a_lock(ctx: Any) -> threading.Lock:
    """A result no serializer can send anywhere."""
    return threading.Lock()


# -- a large result that must not travel to the caller -------------------------------------

#: How many ``Big`` objects were unpickled in this process.
UNPICKLED = 0


def _rebuild_big(payload: bytes) -> Big:
    global UNPICKLED  # noqa: PLW0603 - the whole point: count unpickles per process
    UNPICKLED += 1
    return Big(payload)


class Big:
    """A large value that counts how often it is unpickled, per process."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_big, (self.payload,))


def make_big(ctx: Any) -> Big:
    """A 4 MB result, built on a worker, with a metric."""
    ctx.record_metric("bytes", 4_000_000)
    return Big(b"x" * 4_000_000)


def measure_big(ctx: Any) -> int:
    """Read the big result (moved here worker to worker)."""
    return len(ctx["big"].payload)


#: How many ``CountedList`` objects were unpickled in this process.
LISTS_UNPICKLED = 0


def _rebuild_list(items: list[Any]) -> CountedList:
    global LISTS_UNPICKLED  # noqa: PLW0603 - counts unpickles per process
    LISTS_UNPICKLED += 1
    return CountedList(items)


class CountedList(list[Any]):
    """A list (a map's input) that counts how often it is unpickled, per process."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_list, (list(self),))


def plan_of(ctx: Any) -> CountedList:
    """A plan of ``ctx["count"]`` tools, built on a worker."""
    return CountedList(f"tool-{k}" for k in range(ctx["count"]))


# -- workers that die --------------------------------------------------------------------------


def dies_once(ctx: Any) -> str:
    """Kill the worker process running it the first time; complete the next time."""
    marker = Path(ctx["marker"])
    if not marker.exists():
        marker.write_text("died once")
        os._exit(1)
    return "survived"


def always_dies(ctx: Any) -> None:
    """Kill every worker process that runs it."""
    os._exit(1)


# -- the document pipeline ("Document Processing Pipeline") ------------------------------------


@dataclass(frozen=True)
class Document:
    """A document as the original API's example expects one: an ``id`` and some content."""

    id: str
    content: str


@dataclass(frozen=True)
class EmbeddingModel:
    """A toy embedding model: a vector of letter counts."""

    letters: str = "aeiou"

    def embed(self, text: str) -> list[int]:
        """Count each letter of the model in ``text``."""
        return [text.count(letter) for letter in self.letters]


def extract_text(doc: Document) -> str:
    """Normalise a document's text."""
    return " ".join(doc.content.lower().split())


def chunk_text(text: str, size: int = 3) -> list[str]:
    """Split text into chunks of ``size`` words."""
    words = text.split()
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


def generate_embeddings(chunks: list[str], model: EmbeddingModel) -> list[list[int]]:
    """One embedding per chunk."""
    return [model.embed(chunk) for chunk in chunks]


def index_embeddings(ctx: Any) -> dict[str, Any]:
    """Index every ``embed_<i>`` result the unit declared."""
    vectors = {name: ctx[name] for name in sorted(ctx) if name.startswith("embed_")}
    return {
        "documents": len(vectors),
        "chunks": sum(len(v) for v in vectors.values()),
        "total": [
            sum(column)
            for column in zip(*(vec for v in vectors.values() for vec in v), strict=True)
        ],
    }
