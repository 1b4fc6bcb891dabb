"""The bundled demo: a document ingestion pipeline, doing real work in every unit.

For each bundled document ``i`` (plain text in ``demo_data/``):

* ``extract_i`` reads the file and normalises it (Unicode NFKC, one title, collapsed
  whitespace);
* ``chunk_i`` splits the text into overlapping windows of words;
* ``embed_i`` turns each chunk into a deterministic hashed bag-of-words vector (signed
  feature hashing with BLAKE2b, L2-normalised, so a dot product is a cosine);

and ``index_embeddings``, which depends on every ``embed_i``, builds an inverted index and
a matrix of all the chunk vectors, then answers one query by cosine similarity. Nothing
sleeps: the durations are those of the work.

Units are module-level functions bound with :func:`functools.partial`, so the pipeline runs
in every mode, worker processes included. Nothing here prints: :func:`run_demo` returns a
:class:`DemoReport` and the CLI renders it.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import unicodedata
from dataclasses import dataclass
from functools import partial
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from ._graph import ExecutionMode, UnitState
from ._partitioner import QuantumPartitioner

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from importlib.resources.abc import Traversable
    from pathlib import Path

    from ._context import ExecutionContext
    from ._plan import ExecutionPlan

__all__ = [
    "DEMO_CONTEXT",
    "Chunk",
    "DemoReport",
    "Document",
    "Extracted",
    "Hit",
    "IndexSummary",
    "UnitRow",
    "bundled_documents",
    "create_document_pipeline",
    "run_demo",
]

#: What every unit of the demo sees in ``ctx`` besides its dependencies' results.
DEMO_CONTEXT: Mapping[str, Any] = {
    "query": "how do workers recover when a task fails",
    "top_k": 3,
    "window": 40,
    "overlap": 10,
    "dimensions": 256,
}

_STOPWORD_TEXT = (
    "a an and are as at be because by can do does for from has have how in into is it its "
    "no not of on once one or so such that the their them then there these they this to "
    "until what when where which while who will with"
)
#: Words too common to tell documents apart; they are left out of vectors and the index.
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Document:
    """A document to ingest: a name and where its text is."""

    doc_id: str
    source: Traversable


@dataclass(frozen=True, slots=True)
class Extracted:
    """A document's normalised text."""

    doc_id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """One window of words of a document; ``position`` counts windows from 0."""

    doc_id: str
    title: str
    position: int
    text: str


@dataclass(frozen=True, slots=True)
class Hit:
    """A chunk that answers the query, with its cosine similarity."""

    score: float
    chunk: Chunk


@dataclass(frozen=True, slots=True)
class IndexSummary:
    """What ``index_embeddings`` built, and its answer to the query."""

    chunks: int
    terms: int
    dimensions: int
    hits: tuple[Hit, ...]


@dataclass(frozen=True, slots=True)
class UnitRow:
    """One unit's line in the demo's summary."""

    name: str
    state: UnitState
    attempts: int
    duration: float | None
    metrics: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DemoReport:
    """Everything the demo measured, for the CLI to print."""

    documents: int
    mode: ExecutionMode
    workers: int
    plan: ExecutionPlan
    rows: tuple[UnitRow, ...]
    query: str
    index: IndexSummary | None
    seconds: float
    #: What the run wrote: ``(what, path)`` pairs (trace, report, picture).
    artifacts: tuple[tuple[str, Path], ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every unit completed."""
        return all(row.state is UnitState.COMPLETED for row in self.rows)


# -- the work ------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Lower-case words of ``text`` without stopwords, plurals folded (``tasks`` -> ``task``)."""
    return [_singular(word) for word in _TOKEN.findall(text.lower()) if word not in STOPWORDS]


def _singular(word: str) -> str:
    # A two-rule stemmer: enough for "retries" to meet "retry" and "tasks" to meet "task".
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def hashed_vector(tokens: Iterable[str], dimensions: int) -> tuple[float, ...]:
    """A signed feature-hashing vector of ``tokens``, L2-normalised (all zeros if empty).

    Each token adds +1 or -1 to one of ``dimensions`` buckets, both chosen by its BLAKE2b
    digest, so the vector is the same in every process and on every run (unlike ``hash()``).
    """
    counts = [0.0] * dimensions
    for token in tokens:
        value = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "big")
        counts[value % dimensions] += 1.0 if value >> 63 else -1.0
    norm = math.sqrt(math.fsum(c * c for c in counts))
    return tuple(c / norm for c in counts) if norm else tuple(counts)


def word_windows(words: Sequence[str], size: int, overlap: int) -> list[list[str]]:
    """Windows of ``size`` words, each sharing ``overlap`` words with the one before.

    Raises:
        ValueError: ``size`` is not greater than ``overlap``, or ``overlap`` is negative.
    """
    if overlap < 0 or size <= overlap:
        raise ValueError(f"need size > overlap >= 0, got size={size}, overlap={overlap}")
    if not words:
        return []
    step = size - overlap
    return [list(words[start : start + size]) for start in range(0, len(words) - overlap, step)]


def extract_text(document: Document, ctx: ExecutionContext) -> Extracted:
    """Unit ``extract_i``: read a document and normalise its text."""
    raw = document.source.read_text(encoding="utf-8")
    lines = [" ".join(line.split()) for line in unicodedata.normalize("NFKC", raw).splitlines()]
    lines = [line for line in lines if line]
    title = lines[0] if lines else document.doc_id
    text = " ".join(lines[1:])
    ctx.record_metric("words", len(text.split()))
    return Extracted(document.doc_id, title, text)


def chunk_text(extract_unit: str, ctx: ExecutionContext) -> list[Chunk]:
    """Unit ``chunk_i``: split the extracted text into overlapping word windows."""
    extracted: Extracted = ctx[extract_unit]
    windows = word_windows(extracted.text.split(), ctx.get("window", 40), ctx.get("overlap", 10))
    chunks = [
        Chunk(extracted.doc_id, extracted.title, position, " ".join(window))
        for position, window in enumerate(windows)
    ]
    ctx.record_metric("chunks", len(chunks))
    return chunks


def embed_chunks(chunk_unit: str, ctx: ExecutionContext) -> list[tuple[Chunk, tuple[float, ...]]]:
    """Unit ``embed_i``: one hashed bag-of-words vector per chunk."""
    dimensions: int = ctx.get("dimensions", 256)
    chunks: list[Chunk] = ctx[chunk_unit]
    embedded = [(chunk, hashed_vector(tokenize(chunk.text), dimensions)) for chunk in chunks]
    ctx.record_metric("vectors", len(embedded))
    return embedded


def index_embeddings(embed_units: Sequence[str], ctx: ExecutionContext) -> IndexSummary:
    """Unit ``index_embeddings``: index every chunk and answer ``ctx["query"]``.

    The inverted index finds the chunks sharing a word with the query; the matrix of
    vectors ranks them by cosine similarity (a dot product of unit vectors).
    """
    dimensions: int = ctx.get("dimensions", 256)
    chunks: list[Chunk] = []
    matrix: list[tuple[float, ...]] = []
    for name in embed_units:
        for chunk, vector in ctx[name]:
            chunks.append(chunk)
            matrix.append(vector)
    inverted: dict[str, set[int]] = {}
    for row, chunk in enumerate(chunks):
        for token in tokenize(chunk.text):
            inverted.setdefault(token, set()).add(row)
    query_tokens = tokenize(ctx["query"])
    query = hashed_vector(query_tokens, dimensions)
    candidates = set().union(*(inverted.get(token, set()) for token in query_tokens))
    scored = sorted(
        (
            (math.fsum(q * v for q, v in zip(query, matrix[row], strict=True)), row)
            for row in candidates
        ),
        key=lambda pair: (-pair[0], pair[1]),
    )
    hits = tuple(Hit(score, chunks[row]) for score, row in scored[: ctx.get("top_k", 3)])
    ctx.record_metric("chunks", len(chunks))
    ctx.record_metric("terms", len(inverted))
    return IndexSummary(len(chunks), len(inverted), dimensions, hits)


# -- the pipeline --------------------------------------------------------------------------


def bundled_documents() -> list[Document]:
    """The plain-text documents shipped in ``quantum_partitioner/demo_data``, by name."""
    folder = files("quantum_partitioner") / "demo_data"
    sources = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".txt")),
        key=lambda entry: entry.name,
    )
    return [Document(source.name.removesuffix(".txt"), source) for source in sources]


def create_document_pipeline(
    documents: Sequence[Document] | None = None, max_workers: int = 4
) -> QuantumPartitioner[Mapping[str, Any], Any]:
    """The document pipeline: ``extract_i -> chunk_i -> embed_i -> index_embeddings``.

    Args:
        documents: What to ingest; the bundled corpus by default.
        max_workers: The partitioner's worker count.

    Returns:
        A partitioner holding ``3 * len(documents) + 1`` units.
    """
    docs = bundled_documents() if documents is None else list(documents)
    partitioner: QuantumPartitioner[Mapping[str, Any], Any] = QuantumPartitioner(max_workers)
    embed_units: list[str] = []
    for i, doc in enumerate(docs):
        extract, chunk, embed = f"extract_{i}", f"chunk_{i}", f"embed_{i}"
        partitioner.add_unit(
            partial(extract_text, doc),
            [],
            extract,
            metadata={"document_id": doc.doc_id, "resource_type": "cpu"},
        )
        partitioner.add_unit(
            partial(chunk_text, extract),
            [extract],
            chunk,
            metadata={"document_id": doc.doc_id, "resource_type": "cpu"},
        )
        partitioner.add_unit(
            partial(embed_chunks, chunk),
            [chunk],
            embed,
            metadata={"document_id": doc.doc_id, "resource_type": "io"},
        )
        embed_units.append(embed)
    partitioner.add_unit(
        partial(index_embeddings, tuple(embed_units)),
        embed_units,
        "index_embeddings",
        metadata={"resource_type": "cpu"},
    )
    return partitioner


def run_demo(
    mode: ExecutionMode = ExecutionMode.THREAD,
    max_workers: int = 4,
    *,
    output_dir: Path | None = None,
    progress: bool = False,
) -> DemoReport:
    """Build the pipeline over the bundled corpus, run it, and report what happened.

    Args:
        mode: Where the units run.
        max_workers: How many units may run at once.
        output_dir: Where to write the run's trace, report and picture (None: nowhere).
        progress: Show a progress bar while the run goes on (on a terminal).
    """
    if output_dir is not None:  # a directory that cannot be made fails before the run
        output_dir.mkdir(parents=True, exist_ok=True)
    documents = bundled_documents()
    partitioner = create_document_pipeline(documents, max_workers)
    plan = partitioner.build_execution_plan()
    started = time.perf_counter()
    results = partitioner.execute(
        DEMO_CONTEXT, execution_mode=mode, progress=progress, trace=output_dir is not None
    )
    seconds = time.perf_counter() - started
    artifacts = () if output_dir is None else write_artifacts(partitioner, output_dir)
    metrics = partitioner.last_execution_metrics or {}
    recorded: Mapping[str, Mapping[str, Any]] = metrics.get("unit_metrics", {})
    rows = tuple(
        UnitRow(name, unit.state, unit.attempt, unit.execution_time, recorded.get(name, {}))
        for name, unit in partitioner.units.items()
    )
    index = results.get("index_embeddings")
    return DemoReport(
        documents=len(documents),
        mode=mode,
        workers=max_workers,
        plan=plan,
        rows=rows,
        query=DEMO_CONTEXT["query"],
        index=index if isinstance(index, IndexSummary) else None,
        seconds=seconds,
        artifacts=artifacts,
    )


def write_artifacts(
    partitioner: QuantumPartitioner[Any, Any], output_dir: Path
) -> tuple[tuple[str, Path], ...]:
    """Write the last run's Chrome trace, HTML report and picture into ``output_dir``.

    The picture is SVG when Graphviz's ``dot`` is installed, else its DOT source.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    written = [
        ("trace", partitioner.export_trace(output_dir / "demo-trace.json")),
        ("report", partitioner.write_report(output_dir / "demo-report.html")),
    ]
    try:
        written.append(("picture", partitioner.render(output_dir / "demo-graph.svg")))
    except FileNotFoundError:  # no Graphviz here: keep the DOT source instead
        dot = output_dir / "demo-graph.dot"
        dot.write_text(partitioner.build_execution_plan().visualize(), encoding="utf-8")
        written.append(("picture (DOT; install Graphviz for SVG)", dot))
    return tuple(written)
