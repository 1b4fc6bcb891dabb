"""Document pipeline: extract, chunk and embed every document in parallel, then index them.

The "Document Processing Pipeline" integration example. For each document ``i`` there is a chain
``extract_i -> chunk_i -> embed_i``, and ``index_embeddings`` depends on every ``embed_i``.
The chains share nothing, so they run side by side, and each starts its next step as soon
as its own previous step is done (dataflow: no waiting for the other documents).

Every step does real text work, with nothing simulated:

* ``extract_text`` parses a document's HTML (tags, entities, ``<script>`` and ``<style>``
  dropped) into its title and plain paragraphs, normalised to Unicode NFKC;
* ``chunk_text`` splits the text into sentences and packs them into chunks of at most
  ``MAX_CHUNK_WORDS`` words;
* ``generate_embeddings`` asks the embedding model for one vector per chunk. The model is a
  local stand-in for a remote embedding API: signed feature hashing of word unigrams and
  bigrams (BLAKE2b), L2-normalised, so the dot product of two vectors is their cosine;
* ``index_embeddings`` gathers every chunk's vector into an index that answers queries by
  cosine similarity.

Run it as a script (an optional query as arguments)::

    python examples/document_pipeline.py
    python examples/document_pipeline.py "feeding a sourdough starter"

or through the command line, which prints each unit's outcome::

    quantum-partitioner run examples/document_pipeline.py:build --mode process
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import sys
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from quantum_partitioner import ExecutionContext, QuantumPartitioner

MAX_CHUNK_WORDS = 45
DEFAULT_QUERY = "how long should green tea steep"

_STOPWORD_TEXT = (
    "a an and are as at be by can for from how if in into is it its of on or should so "
    "than that the then this to too until was what when which while with you your"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_SUFFIXES = ("ings", "ing", "ed", "es", "s")


# -- the data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """A document to ingest: an id and its HTML source."""

    id: str
    html: str


@dataclass(frozen=True)
class ExtractedText:
    """A document's title and plain text."""

    document_id: str
    title: str
    text: str


@dataclass(frozen=True)
class Chunk:
    """A run of whole sentences of one document; ``position`` counts chunks from 0."""

    document_id: str
    title: str
    position: int
    text: str


@dataclass(frozen=True)
class Hit:
    """A chunk that answers a query, with its cosine similarity."""

    score: float
    chunk: Chunk


SAMPLE_DOCUMENTS = [
    Document(
        "green-tea",
        """<html><head><title>Brewing green tea</title>
        <style>p { color: green; }</style></head><body>
        <h1>Brewing green tea</h1>
        <p>Green tea is delicate: water that is too hot scalds the leaves and makes the cup
        bitter. Heat the water to 70&ndash;80&nbsp;&deg;C, or let boiling water rest for two
        minutes.</p>
        <p>Steep the leaves for one to three minutes. Japanese sencha wants about one minute,
        Chinese pan-fired teas closer to three. Taste as you go &amp; pour the whole pot at
        once so the leaves do not keep steeping.</p>
        <p>Good leaves can be steeped again two or three times; add thirty seconds each
        time.</p></body></html>""",
    ),
    Document(
        "pour-over",
        """<html><head><title>Pour-over coffee</title></head><body>
        <h1>Pour-over coffee</h1>
        <p>Use fifteen grams of coffee for every 250 grams of water, ground about as fine as
        sea salt. Rinse the paper filter with hot water first, so it does not taste of
        paper.</p>
        <p>Pour a little water to let the grounds bloom for thirty seconds, then pour in slow
        circles. The whole brew should take three to four minutes: if it runs faster, grind
        finer; if it is slower and bitter, grind coarser.</p>
        <script>trackVisit("pour-over");</script></body></html>""",
    ),
    Document(
        "sourdough-starter",
        """<html><head><title>Caring for a sourdough starter</title></head><body>
        <h1>Caring for a sourdough starter</h1>
        <p>A starter is a culture of wild yeast and bacteria living in flour and water. Feed
        it once a day at room temperature: discard all but fifty grams, then add fifty grams
        of flour and fifty grams of water.</p>
        <p>A healthy starter doubles within four to eight hours of a feeding and smells
        pleasantly sour. Kept in the fridge, it needs feeding only once a week; give it two
        feedings at room temperature before baking.</p></body></html>""",
    ),
    Document(
        "bread",
        """<html><head><title>Baking a first loaf</title></head><body>
        <h1>Baking a first loaf</h1>
        <ul><li>500 g bread flour</li><li>350 g water</li><li>10 g salt</li>
        <li>100 g active starter</li></ul>
        <p>Mix the flour and water and let them rest for an hour, then add the starter and the
        salt. Fold the dough every half hour for two hours, shape it, and let it rise
        overnight in the fridge.</p>
        <p>Bake in a covered pot at 250&nbsp;&deg;C for twenty minutes, then uncovered for
        another twenty, until the crust is deep brown. Let the loaf cool for an hour before
        cutting it.</p></body></html>""",
    ),
]


# -- the steps ---------------------------------------------------------------------------------


class _TextExtractor(HTMLParser):
    """Collects a page's title and the text of its blocks, skipping scripts and styles."""

    BLOCKS = frozenset({"p", "li", "h1", "h2", "h3", "div", "br", "tr"})
    SKIPPED = frozenset({"script", "style"})
    VOID = frozenset({"br", "hr", "img", "input", "link", "meta"})  # never closed

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities become characters
        self.title = ""
        self.blocks: list[list[str]] = [[]]
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self._open.append(tag)
        if tag in self.BLOCKS:
            self.blocks.append([])

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            while self._open.pop() != tag:
                pass
        if tag in self.BLOCKS:
            self.blocks.append([])

    def handle_data(self, data: str) -> None:
        if any(tag in self.SKIPPED for tag in self._open):
            return
        if "title" in self._open:
            self.title += data
        elif "h1" not in self._open:
            self.blocks[-1].append(data)


def extract_text(document: Document) -> ExtractedText:
    """The document's title and its paragraphs as plain text, one paragraph per line."""
    parser = _TextExtractor()
    parser.feed(document.html)
    parser.close()
    paragraphs = [" ".join("".join(block).split()) for block in parser.blocks]
    text = "\n".join(paragraph for paragraph in paragraphs if paragraph)
    title = " ".join(parser.title.split()) or document.id
    return ExtractedText(
        document.id, unicodedata.normalize("NFKC", title), unicodedata.normalize("NFKC", text)
    )


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def chunk_text(extracted: ExtractedText) -> list[Chunk]:
    """Whole sentences packed into chunks of at most ``MAX_CHUNK_WORDS`` words."""
    sentences = [
        sentence if sentence.endswith((".", "!", "?")) else sentence + "."  # a list item
        for paragraph in extracted.text.splitlines()
        for sentence in _SENTENCE_END.split(paragraph)
    ]
    chunks: list[list[str]] = []
    size = 0
    for sentence in sentences:
        words = len(sentence.split())
        if not chunks or size + words > MAX_CHUNK_WORDS:
            chunks.append([])
            size = 0
        chunks[-1].append(sentence)
        size += words
    return [
        Chunk(extracted.document_id, extracted.title, position, " ".join(sentences))
        for position, sentences in enumerate(chunks)
    ]


def tokens(text: str) -> list[str]:
    """Lower-case content words, crudely stemmed (``steeping`` and ``steeped`` -> ``steep``)."""
    return [stem(word) for word in re.findall(r"[a-z0-9]+", text.lower()) if word not in STOPWORDS]


def stem(word: str) -> str:
    """``word`` without its first matching suffix, keeping at least three letters."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


class HashingEmbedder:
    """A local stand-in for a remote embedding model: hashed unigrams and bigrams.

    Each feature is hashed with BLAKE2b to a dimension and a sign; counts are damped with
    ``1 + log(count)`` and the vector is L2-normalised.
    """

    def __init__(self, dimensions: int = 1024) -> None:
        self.dimensions = dimensions

    def __repr__(self) -> str:
        return f"HashingEmbedder(dimensions={self.dimensions})"

    def embed(self, text: str) -> tuple[float, ...]:
        words = tokens(text)
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        counts: dict[tuple[int, float], int] = {}
        for feature in features:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            slot = int.from_bytes(digest[:4], "little") % self.dimensions
            sign = 1.0 if digest[4] & 1 else -1.0
            counts[slot, sign] = counts.get((slot, sign), 0) + 1
        vector = [0.0] * self.dimensions
        for (slot, sign), count in counts.items():
            vector[slot] += sign * (1.0 + math.log(count))
        norm = math.sqrt(math.fsum(value * value for value in vector)) or 1.0
        return tuple(value / norm for value in vector)


def generate_embeddings(
    chunks: list[Chunk], model: HashingEmbedder
) -> list[tuple[Chunk, tuple[float, ...]]]:
    """One vector per chunk, from ``model``; the title gives each chunk its context."""
    return [(chunk, model.embed(f"{chunk.title}. {chunk.text}")) for chunk in chunks]


@dataclass(frozen=True)
class VectorIndex:
    """Every chunk and its vector; answers a query vector by cosine similarity."""

    chunks: tuple[Chunk, ...]
    vectors: tuple[tuple[float, ...], ...]
    documents: int

    def search(self, query: tuple[float, ...], k: int = 3) -> list[Hit]:
        """The ``k`` chunks most similar to ``query``, best first."""
        scores = [
            math.fsum(q * v for q, v in zip(query, vector, strict=True)) for vector in self.vectors
        ]
        best = sorted(range(len(scores)), key=lambda row: (-scores[row], row))[:k]
        return [Hit(scores[row], self.chunks[row]) for row in best]


def index_embeddings(ctx: ExecutionContext) -> VectorIndex:
    """Index the vectors of every ``embed_i`` unit this unit depends on, in document order."""
    embedded = ctx.unit_results
    chunks: list[Chunk] = []
    vectors: list[tuple[float, ...]] = []
    for name in sorted(embedded, key=lambda name: int(name.removeprefix("embed_"))):
        for chunk, vector in embedded[name]:
            chunks.append(chunk)
            vectors.append(vector)
    return VectorIndex(tuple(chunks), tuple(vectors), len(embedded))


# -- the graph, written against the original QuantumPartitioner API: units are lambdas -----


# Document processing workflow
def create_document_pipeline(
    documents: list[Document], embedding_model: HashingEmbedder
) -> QuantumPartitioner[dict[str, Any], Any]:
    """Create parallel document processing pipeline."""
    partitioner: QuantumPartitioner[dict[str, Any], Any] = QuantumPartitioner(max_workers=4)

    # Add extraction units for each document
    for i, doc in enumerate(documents):
        partitioner.add_unit(
            fn=lambda ctx, d=doc: extract_text(d),
            dependencies=[],  # No dependencies
            name=f"extract_{i}",
            metadata={"document_id": doc.id, "resource_type": "cpu"},
        )

        # Add chunking units depending on extraction
        partitioner.add_unit(
            fn=lambda ctx, i=i: chunk_text(ctx[f"extract_{i}"]),
            dependencies=[f"extract_{i}"],
            name=f"chunk_{i}",
            metadata={"document_id": doc.id, "resource_type": "cpu"},
        )

        # Add embedding units depending on chunking
        partitioner.add_unit(
            fn=lambda ctx, i=i, model=embedding_model: generate_embeddings(
                ctx[f"chunk_{i}"], model
            ),
            dependencies=[f"chunk_{i}"],
            name=f"embed_{i}",
            metadata={"document_id": doc.id, "resource_type": "io"},
        )

    # Add final indexing unit depending on all embedding units
    embedding_units = [f"embed_{i}" for i in range(len(documents))]
    partitioner.add_unit(
        fn=lambda ctx: index_embeddings(ctx),  # noqa: PLW0108 - a lambda, as the original API's examples write it
        dependencies=embedding_units,
        name="index_embeddings",
    )

    return partitioner


# -- running it ------------------------------------------------------------------------------


def build() -> QuantumPartitioner[dict[str, Any], Any]:
    """The partitioner for ``quantum-partitioner run``: the sample documents."""
    return create_document_pipeline(SAMPLE_DOCUMENTS, HashingEmbedder())


def main(argv: list[str]) -> int:
    """Ingest the sample documents, then answer the query in ``argv`` (or the default)."""
    query = " ".join(argv) or DEFAULT_QUERY
    model = HashingEmbedder()
    partitioner = create_document_pipeline(SAMPLE_DOCUMENTS, model)
    results = partitioner.execute({})
    if "index_embeddings" not in results:
        for name, error in partitioner.get_failed_units().items():
            print(f"{name} {partitioner.units[name].state.name}: {error!r}")
        return 1
    index: VectorIndex = results["index_embeddings"]
    print(
        f"Indexed {index.documents} documents as {len(index.chunks)} chunks "
        f"({len(partitioner.units)} units, {model.dimensions}-dim vectors)"
    )
    print(f"Query: {query}")
    for rank, hit in enumerate(index.search(model.embed(query)), 1):
        words = hit.chunk.text.split()
        snippet = " ".join(words[:10]) + (" ..." if len(words) > 10 else "")
        print(f"  {rank}. {hit.score:.3f}  {hit.chunk.title} #{hit.chunk.position}: {snippet}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
