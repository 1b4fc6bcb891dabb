"""Content fingerprints: what the cache keys of ``CachingQuantumPartitioner`` are made of.

A fingerprint is the BLAKE2b digest (32 bytes) of a canonical, type-tagged encoding of a
value. It never uses ``hash()``, ``id()`` or memory addresses, so the same value gives the
same fingerprint in every process and on every machine with the same Python minor version
(function fingerprints include bytecode, which changes between Python versions).

Encoding policy, by type:

* ``None``, ``bool``, ``int``, ``float`` (bit pattern; ``-0.0`` differs from ``0.0``, every
  NaN is one NaN), ``complex``, ``str``, ``bytes``, ``bytearray``: tagged by type, so ``1``,
  ``1.0``, ``True`` and ``"1"`` all differ.
* ``list``, ``tuple``: in order. ``dict``: entries sorted by their encoded key, so insertion
  order does not count. ``set``, ``frozenset``: sorted by encoded element.
* Subclasses of those (named tuples, ``OrderedDict``, ``Counter``): the base encoding plus the
  class's qualified name (and ``default_factory`` for a ``defaultdict``).
* Dataclass instances: class name and fields; enum members: class and member name;
  ``datetime``/``date``/``time``/``timedelta``, ``Decimal``, ``UUID``: ``repr``;
  ``Fraction``, ``range``, paths, ``SimpleNamespace``: their parts.
* An object whose class defines ``__cache_key__()``: the class name and what it returns.
* Classes and modules: by qualified name (plus the library's version for installed
  libraries). A module of the user's own code that a function reads as a global, closure
  variable or import also counts the attributes the function reads off it
  (``helpers.scale``), as values. A class's *methods* are not looked into: bump
  ``metadata["cache_version"]`` after editing one.
* Functions: see :func:`function_fingerprint`.
* Anything else: what pickle would save of it (``__reduce_ex__``), so an object that pickles
  faithfully fingerprints faithfully; one that cannot be pickled (a lock, a socket, a
  generator) cannot be fingerprinted, and :class:`UnfingerprintableError` says where it was
  found (``closure variable 'client' -> ['pool'] -> ._lock``). Reference cycles are refused
  too.

State: memos of code objects' encodings, global names and attribute chains (code is
immutable, so they never go stale), of which modules are libraries, and of source files'
digests by size and modification time; a caller's :class:`ModuleMemo` shares what the
units of one build have in common (a function, a code object, a module attribute).
"""

from __future__ import annotations

import builtins as _builtins
import collections
import dataclasses
import datetime as dt
import decimal
import dis
import enum
import fractions
import functools
import hashlib
import itertools
import math
import os
import pathlib
import struct
import sys
import sysconfig
import types
import uuid
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

# Nothing here is public API: CachingQuantumPartitioner is.
__all__: list[str] = []

DIGEST_SIZE: Final = 32
_PACK_DOUBLE = struct.Struct(">d").pack
_CODE_MEMO: dict[types.CodeType, bytes] = {}
_GLOBALS_MEMO: dict[types.CodeType, tuple[str, ...]] = {}
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})


class UnfingerprintableError(TypeError):
    """A value has no stable content fingerprint.

    Attributes:
        where: The path from the fingerprinted root to the value, outermost first.
        what: The offending value's type and why it was refused.
    """

    def __init__(self, what: str, where: list[str] | None = None) -> None:
        """Describe the value; containers prepend their part of the path as it propagates."""
        super().__init__(what)
        self.what = what
        self.where: list[str] = [] if where is None else where

    def __str__(self) -> str:
        """``path -> to -> value: why``."""
        path = " -> ".join(self.where)
        return f"{path}: {self.what}" if path else self.what


# Copied per digest: the same bytes as hashlib.blake2b(data, digest_size=32), in about
# two thirds of the time (the constructor's keyword parsing is most of a short digest).
_BLAKE2B: Final = hashlib.blake2b(digest_size=DIGEST_SIZE)


def digest(data: bytes | bytearray) -> bytes:
    """The 32-byte BLAKE2b digest of ``data``."""
    hasher = _BLAKE2B.copy()
    hasher.update(data)
    return hasher.digest()


def fingerprint(value: Any) -> bytes:
    """The content fingerprint of ``value`` (32 bytes).

    Plain containers nested deeper than the interpreter's stack allows (a tree of lists
    and dicts hundreds of levels deep) are encoded again without recursion, to the same
    bytes.

    Raises:
        UnfingerprintableError: Some part of ``value`` has no stable encoding, or an object
            other than a plain container is nested too deeply to be encoded.
    """
    try:
        return digest(_Encoder().encode(value))
    except RecursionError:
        pass  # leave the except clause first: the stack is nearly used up inside it
    return digest(_encode_deep(value))


# Plain containers, encoded without recursion by _encode_deep, exactly as _Encoder does.
_DEEP_TAGS: Final[dict[type, bytes]] = {
    list: b"[",
    tuple: b"(",
    dict: b"{",
    set: b"<",
    frozenset: b">",
}
_END: Final = object()


def _encode_deep(value: Any) -> bytes:
    """``_Encoder().encode(value)`` with an explicit stack for the plain containers.

    Each open container is a frame: the container, an iterator over what it holds (a dict's
    keys and values alternately) and the encodings of the parts done so far. Anything else
    is a leaf, encoded by :class:`_Encoder` (whose own recursion starts afresh there).
    """
    encoder = _Encoder()
    root: list[bytes] = []
    stack: list[tuple[Any, Iterator[Any], list[bytes]]] = []
    active: set[int] = set()
    pending: Any = value
    target = root
    while True:
        tag = _DEEP_TAGS.get(type(pending))
        if tag is None:
            out = bytearray()
            try:
                encoder.value(pending, out)
            except RecursionError:
                kind = type(pending).__qualname__
                raise UnfingerprintableError(
                    f"a {kind} nested deeper than the interpreter's recursion limit allows "
                    "cannot be fingerprinted (only lists, tuples, dicts and sets can)",
                    [f"(at depth {len(stack)})"],
                ) from None
            target.append(bytes(out))
        else:
            if id(pending) in active:
                raise UnfingerprintableError(
                    f"{type(pending).__name__} contains itself (a reference cycle)",
                    [f"(at depth {len(stack)})"],
                )
            active.add(id(pending))
            parts = pending.items() if tag == b"{" else pending
            items = itertools.chain.from_iterable(parts) if tag == b"{" else iter(parts)
            stack.append((pending, items, []))
        while stack:
            container, items, parts = stack[-1]
            pending = next(items, _END)
            if pending is not _END:
                target = parts
                break
            stack.pop()
            active.discard(id(container))
            (stack[-1][2] if stack else root).append(_assemble(container, parts))
        else:
            return root[0]


def _assemble(container: Any, parts: list[bytes]) -> bytes:
    """A plain container's encoding from its parts' (see _Encoder.sequence & co)."""
    tag = _DEEP_TAGS[type(container)]
    if tag == b"{":
        pairs = sorted(zip(parts[0::2], parts[1::2], strict=True))
        return b"{%d:%s" % (len(pairs), b"".join(key + item for key, item in pairs))
    if tag in {b"<", b">"}:
        parts.sort()
    return b"%s%d:%s" % (tag, len(parts), b"".join(parts))


class ModuleMemo:
    """What was encoded while one graph is built, to share between its units.

    Units that run one function object, or closures of one code object that read one
    globals namespace, read the same globals, helpers and module attributes when they
    run, so within a build what those encode to is taken once, when the first such unit
    is added, and the others reuse it without reading it again:

    * ``functions``: whole fingerprints by the function's identity and ignored names, for
      the many units that share one function (the entry keeps the function, so its ``id``
      is not reused while the entry lives). A hit is one dict lookup.
    * ``globals_parts``: the encoding of the globals and imports a function reads, by code
      object, globals namespace and ignored names (the entry keeps the namespace).
    * ``closures``: by code object (with its globals namespace and ignored names), what the distinct
      closures of one function (``make_unit(k)`` called per unit) share once one of them
      was encoded: the code's bytes, the variables' names and the globals part. Another
      closure then encodes only its default arguments and closure values, to the very same
      bytes as the long way (without an encoder pass when they are plain: numbers, strings,
      bytes, None). A caller may keep such a closure's plain values instead and take its
      fingerprint later (:func:`closure_snapshot`); those are not kept in ``functions``.
    * ``entries``: module attributes. Many functions read the same ``helpers.scale``; each
      would encode it (and whatever it calls) again. Keyed by module, attribute path and
      ignored names; an entry is used only while the attribute is still the same object,
      so a function met later in the build sees ``importlib.reload`` or a rebinding.

    Its owner clears it when a run starts, so units added after a run read functions and
    modules afresh; a unit's own fingerprint is kept from when it was added (a closed-over
    object that changes while runs go on does not invalidate its entries).
    """

    __slots__ = ("closures", "entries", "functions", "globals_parts", "recent")

    def __init__(self) -> None:
        """An empty memo."""
        self.entries: dict[tuple[int, _Path, frozenset[str]], tuple[Any, Any, bytes]] = {}
        # Keyed by the function itself when it is a plain function (those hash and compare
        # by identity, and their hash spreads addresses where id()s, multiples of 16,
        # crowd a dict's low bits), else by its id (a callable object may define __eq__);
        # with the ignored names, if any. Most units run a plain function and ignore
        # nothing: a caller on a hot path can look the function itself up.
        self.functions: dict[Any, Fingerprinted] = {}
        self.globals_parts: dict[
            tuple[types.CodeType, int, frozenset[str]], tuple[dict[str, Any], bytes]
        ] = {}
        self.closures: dict[int, ClosureTemplate] = {}
        # The template closure_snapshot used last (one of ``closures``).
        self.recent: ClosureTemplate | None = None

    def clear(self) -> None:
        """Forget every entry."""
        self.entries.clear()
        self.functions.clear()
        self.globals_parts.clear()
        self.closures.clear()
        self.recent = None

    def function(self, fn: Any, ignore: frozenset[str]) -> Fingerprinted:
        """``(fn, ignore, its fingerprint)``: this build's, or taken now and kept for it.

        The record is shared by every unit of the build that runs ``fn``, so a caller can
        keep it per unit without making one. Raises as :func:`function_fingerprint` does.
        """
        key: Any = fn if type(fn) is types.FunctionType else id(fn)  # see ``functions``
        if ignore:
            key = (key, ignore)
        known = self.functions.get(key)
        if known is None or known[0] is not fn:  # (an id key's entry keeps its function)
            value = None
            if type(fn) is types.FunctionType:
                value = _closure_fingerprint(fn, ignore, self)
            if value is None:
                value = _function_fingerprint(fn, ignore, self)
            known = self.functions[key] = (fn, ignore, value)
        return known


# A function, the names left out of its fingerprint, and that fingerprint.
Fingerprinted = tuple[Any, frozenset[str], bytes]


def function_fingerprint(
    fn: Any, ignore: frozenset[str] = frozenset(), memo: ModuleMemo | None = None
) -> bytes:
    """The content fingerprint of a unit's function, taken once when the unit is added.

    It covers the function's bytecode, constants and names (nested functions and lambdas
    too, line numbers excepted, so moving code around changes nothing), its default
    arguments, the values of the variables it closes over, and the globals it reads. A
    global or closed-over function defined outside installed libraries is fingerprinted the
    same way, recursively; library functions, classes and modules count by name and the
    library's ``__version__``. ``functools.partial`` objects, bound methods and callable
    objects count their parts. The Python implementation and minor version are included.

    Args:
        fn: The function.
        ignore: Names of closure variables and globals to leave out (their values do not
            affect the result: a counter, a lock, a client); ``"self"`` leaves out the
            object a bound method is bound to; ``"module.name"`` a module attribute.
        memo: What the units of one build share (see :class:`ModuleMemo`).

    Raises:
        UnfingerprintableError: A value the function depends on has no stable encoding.
    """
    if memo is not None:
        return memo.function(fn, ignore)[2]
    return _function_fingerprint(fn, ignore, None)


def _function_fingerprint(fn: Any, ignore: frozenset[str], memo: ModuleMemo | None) -> bytes:
    """:func:`function_fingerprint` the long way: an encoder pass over all of ``fn``."""
    try:
        encoder = _Encoder(ignore, memo)
        out = bytearray(_FUNCTION_TAG)
        encoder.value(fn, out)
        value = digest(out)
    except RecursionError:
        pass  # raised below, outside the except clause, where the stack is free again
    else:
        return value
    raise UnfingerprintableError(
        "a value it depends on is nested deeper than the interpreter's recursion limit "
        "allows; pass it in the context instead"
    )


# What every function fingerprint starts with: the Python implementation and minor version.
_FUNCTION_TAG: Final = b"fn:" + (
    sys.implementation.cache_tag.encode() if sys.implementation.cache_tag else b"?"
)


class ClosureTemplate:
    """What the functions of one code object, globals namespace and ignored names share.

    Their encoding is ``fn:``, the tag, ``L`` and the code's bytes (``head``), the default
    arguments and closure values, then the globals part (``tail``). ``head`` is fed to a
    BLAKE2b state once (``hasher``; ``plain`` has ``NN`` and the number of cells after it,
    what a function without defaults writes next), so each function hashes only its own
    values and the tail. ``cells`` is each closure variable's name as encoded (plus ``~``
    when it is ignored) and whether it is ignored; ``one_cell`` says there is one, not
    ignored. ``module`` is the first function's ``__module__``: user code (a library
    function is encoded by name).
    """

    __slots__ = (
        "cells",
        "code",
        "hasher",
        "ignore",
        "module",
        "namespace",
        "one_cell",
        "plain",
        "tail",
    )

    def __init__(
        self,
        code: types.CodeType,
        namespace: dict[str, Any],
        module: str,
        ignore: frozenset[str],
        tail: bytes,
    ) -> None:
        self.code = code
        self.namespace = namespace
        self.module = module
        self.ignore = ignore
        self.hasher = _BLAKE2B.copy()
        self.hasher.update(_FUNCTION_TAG + b"L" + _code_bytes(code))
        self.plain = self.hasher.copy()
        self.plain.update(b"NN%d:" % len(code.co_freevars))
        self.cells = tuple(
            (
                _length_prefixed(b"a", _text(name)) + (b"~" if name in ignore else b""),
                name in ignore,
            )
            for name in code.co_freevars
        )
        self.one_cell = len(self.cells) == 1 and not self.cells[0][1]  # (one, not ignored)
        self.tail = tail


# A closure's fingerprint, not taken yet: what ModuleMemo.function's record holds (the
# function and the names left out), then the template of its code object and the values of
# its cells when it was seen (None for an ignored cell, _EMPTY_CELL for an unassigned one)
# in place of the fingerprint. Every value is plain (None, bool, int, float, str, bytes:
# immutable, nothing inside to change), so the fingerprint taken from it later is the one
# the function had then. One tuple per unit (a list would be two allocations, resized as
# it is filled): a build of many closures pays for each object it keeps per unit.
ClosureSnapshot = tuple[Any, ...]


def closure_snapshot(
    fn: types.FunctionType, ignore: frozenset[str], memo: ModuleMemo
) -> ClosureSnapshot | None:
    """``fn``'s snapshot, to take its fingerprint from later, if a function of its code was seen.

    Distinct closures of one function (``make_unit(k)`` per unit) differ only in their
    default arguments and closure values. Once a function of the same code object and
    globals namespace was encoded in this build (its globals part is in
    ``memo.globals_parts``), this one's encoding is the template's head, its own defaults
    and cells, and the template's globals part. When it has no defaults and its closure
    values are all plain, they are all there is to keep: :func:`snapshot_fingerprint`
    makes the bytes ``_Encoder.function`` would have made now, whenever it is called.
    None otherwise (no template, defaults, a value that is not plain).
    """
    # The template used last, if it is this very code's, namespace's, ignored names' and
    # module's: a build adds the closures of one factory one after the other, so this is
    # the common case, proven by identities alone (the template keeps its code and
    # namespace, so ``is`` cannot match another's). Anything else looks the template up.
    template = memo.recent
    if (
        template is None
        or template.code is not fn.__code__
        or template.namespace is not fn.__globals__
        or template.ignore is not ignore
        or template.module is not fn.__module__
    ):
        template = _template_for(fn, ignore, memo)
        if template is None:
            return None
        memo.recent = template
    if fn.__defaults__ is not None or fn.__kwdefaults__ is not None:
        return None
    closure = fn.__closure__
    if template.one_cell:  # a factory's one argument, the commonest closure: no loop
        try:
            value = closure[0].cell_contents  # type: ignore[index]  # (one free variable)
        except ValueError:  # a cell not assigned yet
            return (fn, ignore, template, _EMPTY_CELL)
        return (fn, ignore, template, value) if type(value) in _PLAIN_CELLS else None
    values = _cell_values(closure or (), template)
    return None if values is None else (fn, ignore, template, *values)


def _cell_values(
    closure: tuple[types.CellType, ...], template: ClosureTemplate
) -> list[Any] | None:
    """A snapshot's values of the cells (None if one is not plain)."""
    values: list[Any] = []
    for cell, (_, ignored) in zip(closure, template.cells, strict=True):
        if ignored:
            values.append(None)  # not read
            continue
        try:
            contents = cell.cell_contents
        except ValueError:  # a cell not assigned yet
            contents = _EMPTY_CELL
        else:
            if type(contents) not in _PLAIN_CELLS:
                return None
        values.append(contents)
    return values


def snapshot_fingerprint(snapshot: ClosureSnapshot) -> bytes:
    """The fingerprint of the function a :func:`closure_snapshot` was taken of, as it was then."""
    template: ClosureTemplate = snapshot[2]
    out = bytearray()
    for position, (name, ignored) in enumerate(template.cells, 3):
        out += name
        if ignored:
            continue
        value = snapshot[position]
        if type(value) is int:  # the commonest, without a call: _Encoder.int_'s bytes
            try:
                out += _INT_FORMAT % value
            except ValueError:  # more digits than int-to-str conversion allows
                out += b"i%s;" % _decimal(value)
        elif value is _EMPTY_CELL:
            out += b"_"
        else:
            _PLAIN_CELLS[type(value)](_LEAVES, value, out)
    out += template.tail
    hasher = template.plain.copy()
    hasher.update(out)
    return hasher.digest()


def closure_fingerprint_as_added(
    fn: types.FunctionType, template: ClosureTemplate, value: Any, memo: ModuleMemo
) -> bytes:
    """The fingerprint ``fn`` had when its code was ``template``'s and its one cell held ``value``.

    For a closure whose cell value was kept (``_EMPTY_CELL``: an empty cell) but whose
    namespace turned out not to be the template's: the fingerprint of a twin made of those
    parts, the template's module (the closure's when it was kept), its namespace and names.

    Raises:
        UnfingerprintableError: As :func:`function_fingerprint`.
    """
    cell = types.CellType() if value is _EMPTY_CELL else types.CellType(value)
    twin = types.FunctionType(template.code, fn.__globals__, fn.__name__, None, (cell,))
    twin.__module__, twin.__qualname__ = template.module, fn.__qualname__
    found = _closure_fingerprint(twin, frozenset(), memo)
    return _function_fingerprint(twin, frozenset(), memo) if found is None else found


def _closure_fingerprint(
    fn: types.FunctionType, ignore: frozenset[str], memo: ModuleMemo
) -> bytes | None:
    """A function's fingerprint from what another function of its code object left in ``memo``.

    See :func:`closure_snapshot`: plain values without defaults are written by
    :func:`snapshot_fingerprint`; anything else by an encoder pass over the defaults and
    cells only, with ``fn`` as the function under way (a cell holding ``fn`` itself refers
    back to it as the long way does). None when no template can be had (the caller then
    takes the long way).
    """
    snapshot = closure_snapshot(fn, ignore, memo)
    if snapshot is not None:
        return snapshot_fingerprint(snapshot)
    template = _template_for(fn, ignore, memo)
    if template is None:
        return None
    out = bytearray()
    hasher = template.hasher.copy()
    encoder = _Encoder(ignore, memo)
    encoder.functions[id(fn)] = 0
    try:
        encoder.closure_values(fn, fn.__code__, out)
    except RecursionError:
        return None  # the long way says what is too deep
    hasher.update(out)
    hasher.update(template.tail)
    return hasher.digest()


def _template_for(
    fn: types.FunctionType, ignore: frozenset[str], memo: ModuleMemo
) -> ClosureTemplate | None:
    """The template of ``fn``'s code object in this build (made now if it can be), or None."""
    code = fn.__code__
    # The template keeps its code object, so an id found here is that code object's.
    template = memo.closures.get(id(code))
    if template is None or template.namespace is not fn.__globals__ or template.ignore != ignore:
        template = _closure_template(fn, ignore, memo)
        if template is None:
            return None
        memo.closures[id(code)] = template  # one per code object: others are rare
    module = fn.__module__
    if module != template.module and _is_library(module or ""):  # functools.wraps made it so
        return None
    return template


def _closure_template(
    fn: types.FunctionType, ignore: frozenset[str], memo: ModuleMemo
) -> ClosureTemplate | None:
    """What functions of ``fn``'s code object share, once its globals part is in ``memo``."""
    code, namespace = fn.__code__, fn.__globals__
    known = memo.globals_parts.get((code, id(namespace), ignore))
    module = fn.__module__ or ""
    if known is None or known[0] is not namespace or _is_library(module):
        return None
    return ClosureTemplate(code, namespace, module, ignore, known[1])


def _length_prefixed(tag: bytes, data: bytes) -> bytes:
    return b"%s%d:%s" % (tag, len(data), data)


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _qualified_name(obj: Any) -> bytes:
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
    return _length_prefixed(b"n", _text(f"{module}:{qualname}"))


@functools.cache
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {
        os.path.realpath(paths[name])
        for name in ("stdlib", "platstdlib", "purelib", "platlib")
        if name in paths
    }
    return tuple(sorted(root + os.sep for root in roots))


@functools.cache
def _is_library(module_name: str) -> bool:
    """Whether a module is installed code (stdlib, site-packages) rather than the user's.

    Unknown modules, ``__main__``, modules built at run time and the packages of editable
    installs (``pip install -e``: ``dir_info.editable`` in the distribution's
    ``direct_url.json``) count as the user's, so their functions are fingerprinted by
    content. Memoised per module: a module does not move.
    """
    module = sys.modules.get(module_name)
    if module is None or module_name == "__main__":
        return False
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        spec = getattr(module, "__spec__", None)
        return module_name in sys.builtin_module_names or (
            getattr(spec, "origin", None) == "frozen"
        )
    return _is_library_file(file, module_name.partition(".")[0])


def _is_library_file(file: str, top_level: str) -> bool:
    """Whether ``file``, of top-level package ``top_level``, is installed library code."""
    if not os.path.realpath(file).startswith(_library_roots()):
        return False
    return top_level not in _editable_packages()


@functools.cache
def _editable_packages() -> frozenset[str]:
    """Top-level import names of the distributions installed in editable mode.

    Read once per process (one small file per installed distribution): the names in the
    distribution's ``top_level.txt``, else its normalised name.
    """
    import importlib.metadata  # noqa: PLC0415 - only needed once library code is met
    import json  # noqa: PLC0415

    names: set[str] = set()
    for distribution in importlib.metadata.distributions():
        try:
            direct_url = json.loads(distribution.read_text("direct_url.json") or "{}")
            editable = bool(direct_url.get("dir_info", {}).get("editable"))
        except (ValueError, AttributeError, OSError):
            continue
        if not editable:
            continue
        top_level = distribution.read_text("top_level.txt")
        if top_level:
            names.update(line.strip() for line in top_level.splitlines() if line.strip())
        else:
            name = distribution.metadata["Name"] or ""
            names.add(name.lower().replace("-", "_").replace(".", "_"))
    return frozenset(names)


@functools.cache
def _library_version(module_name: str) -> bytes:
    top_name = module_name.partition(".")[0]
    version = getattr(sys.modules.get(top_name), "__version__", None)
    if not isinstance(version, str):
        version = _distribution_version(top_name)
    return _length_prefixed(b"v", _text(version)) if isinstance(version, str) else b"v-"


def _distribution_version(top_name: str) -> str | None:
    """The version of the distribution named like a top-level package, if there is one."""
    import importlib.metadata  # noqa: PLC0415 - only for libraries without __version__

    try:
        return importlib.metadata.version(top_name)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The global names ``code`` and the code nested in it read, sorted."""
    names = _GLOBALS_MEMO.get(code)
    if names is None:
        found: set[str] = set()
        stack = [code]
        while stack:
            current = stack.pop()
            for instruction in dis.get_instructions(current):
                if instruction.opname in _GLOBAL_OPS:
                    found.add(instruction.argval)
            stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
        names = tuple(sorted(found))
        _GLOBALS_MEMO[code] = names
    return names


# What a code object reads attributes of: ("g", name) a global, ("d", name) a closure
# variable, ("i", level, name) a module the code imports in its body. Each maps to the
# attribute paths read off it: ``helpers.scale(x)`` is ("g", "helpers") -> {("scale",)}.
_Root = tuple[Any, ...]
_Path = tuple[str, ...]
_Reads = tuple[dict[_Root, frozenset[_Path]], tuple[tuple[_Root, frozenset[_Path]], ...]]
_READS_MEMO: dict[types.CodeType, _Reads] = {}
_ATTRIBUTE_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_LOCAL_LOADS = frozenset({"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_DEREF", "LOAD_CLASSDEREF"})
_STORES = frozenset({"STORE_FAST", "STORE_DEREF", "STORE_NAME"})
_IMPORT_STEPS = frozenset({"IMPORT_FROM", "SWAP", "POP_TOP", *_STORES})


def _attribute_reads(code: types.CodeType) -> _Reads:
    """The attribute chains ``code`` and the code nested in it read (memoised per code).

    Chains start at a global (``helpers.scale``), a closure variable, or a module the code
    imports (``import m`` then ``m.f``; ``from m import f``; ``import a.b as s``), so that
    the module attributes a unit uses are fingerprinted like the globals it uses. A name
    once bound to an imported module counts as that module wherever the code reads it:
    more reads than happen are harmless, fewer would serve stale results.

    Returns:
        ``(paths by root, the imports among them, sorted)``.
    """
    reads = _READS_MEMO.get(code)
    if reads is None:
        found: dict[_Root, set[_Path]] = {}
        bound: dict[str, tuple[_Root, _Path]] = {}  # shared: nested code reads cells
        stack = [code]
        while stack:
            current = stack.pop()
            _scan_chains(current, found, bound)
            stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
        by_root = {root: frozenset(paths) for root, paths in found.items()}
        imports = tuple(sorted(item for item in by_root.items() if item[0][0] == "i"))
        reads = _READS_MEMO[code] = (by_root, imports)
    return reads


def _scan_chains(
    code: types.CodeType, found: dict[_Root, set[_Path]], bound: dict[str, tuple[_Root, _Path]]
) -> None:
    """Add one code object's attribute chains to ``found`` (see _attribute_reads)."""
    chain: tuple[_Root, list[str]] | None = None
    consts: list[Any] = [0, None]  # the last two constants: an import's level and fromlist
    importing: _Root | None = None  # set from IMPORT_NAME through its IMPORT_FROMs/stores
    base: _Path = ()
    taken: _Path = ()
    for instruction in dis.get_instructions(code):
        op, arg = instruction.opname, instruction.argval
        if chain is not None:
            if op in _ATTRIBUTE_OPS:
                chain[1].append(arg)
                continue
            found.setdefault(chain[0], set()).add(tuple(chain[1]))
            chain = None
        if importing is not None and op not in _IMPORT_STEPS:
            importing = None
        if op in _GLOBAL_OPS:
            chain = (("g", arg), [])
        elif op in _LOCAL_LOADS or op == "LOAD_FAST_LOAD_FAST":
            name = arg[-1] if isinstance(arg, tuple) else arg
            if name in bound:
                root, prefix = bound[name]
                chain = (root, list(prefix))
            elif op in {"LOAD_DEREF", "LOAD_CLASSDEREF"}:
                chain = (("d", name), [])
        elif op in {"LOAD_CONST", "LOAD_SMALL_INT"}:
            consts = [consts[-1], arg]
        elif op == "IMPORT_NAME":
            level, fromlist = consts
            # ``import a.b`` binds ``a``; ``from a.b import c`` takes c from ``a.b``.
            name = arg if fromlist else arg.partition(".")[0]
            importing = ("i", level if isinstance(level, int) else 0, name)
            found.setdefault(importing, set()).add(())
            base = taken = ()
        elif importing is not None:
            if op == "IMPORT_FROM":
                taken = (*base, arg)
                found.setdefault(importing, set()).add(taken)
            elif op == "SWAP":  # ``import a.b.c as s``: the next IMPORT_FROM goes deeper
                base = taken
            elif op in _STORES:
                bound[arg] = (importing, taken)


def _code_bytes(code: types.CodeType) -> bytes:
    """A code object's encoding: everything that decides what it does, no line numbers."""
    encoded = _CODE_MEMO.get(code)
    if encoded is None:
        out = bytearray(b"K")
        out += b"%d,%d,%d,%d;" % (
            code.co_argcount,
            code.co_posonlyargcount,
            code.co_kwonlyargcount,
            code.co_flags,
        )
        out += _length_prefixed(b"b", code.co_code)
        out += _length_prefixed(b"x", getattr(code, "co_exceptiontable", b""))
        encoder = _Encoder()
        for field in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
            encoder.value(field, out)
        out += b"%d:" % len(code.co_consts)
        for const in code.co_consts:
            encoder.value(const, out)
        encoded = bytes(out)
        _CODE_MEMO[code] = encoded
    return encoded


_EMPTY_CELL: Final = object()
_INT_FORMAT: Final = b"i%d;"
_MISSING: Final = object()


def _decimal(value: int) -> bytes:
    """``b"%d" % value``, however many digits it has.

    Python refuses to convert an int of more digits than ``sys.get_int_max_str_digits()``
    (4,300 unless the process changed it) to decimal; a fingerprint must not depend on that
    setting, so such an int is split at a power of ten until each part is short enough for
    any limit Python accepts (at least 640 digits).
    """
    try:
        return b"%d" % value
    except ValueError:
        pass
    if value < 0:
        return b"-" + _decimal_digits(-value)
    return _decimal_digits(value)


def _decimal_digits(value: int) -> bytes:
    """The decimal digits of ``value`` >= 0, in halves while they are more than 600."""
    if value < _SHORT_DECIMAL:
        return b"%d" % value
    low_digits = int(value.bit_length() * _DIGITS_PER_BIT) // 2
    high, low = divmod(value, 10**low_digits)
    return _decimal_digits(high) + _decimal_digits(low).rjust(low_digits, b"0")


_SHORT_DECIMAL: Final = 10**600  # fewer digits than the lowest limit Python accepts (640)
_DIGITS_PER_BIT: Final = math.log10(2)


def _cell_contents(cell: types.CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # a cell not assigned yet
        return _EMPTY_CELL


class _Unimported:
    """A submodule read as an attribute (``pkg.sub``) that nobody imported yet."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def _module_attribute(module: types.ModuleType, attribute: str) -> object:
    """``module.attribute`` without running code: its value, a submodule, or how it is made.

    An attribute a module makes on demand (PEP 562 ``__getattr__``) is represented by that
    function; a submodule not imported yet by its name.
    """
    namespace = vars(module)
    if attribute in namespace:
        return namespace[attribute]
    submodule = f"{module.__name__}.{attribute}"
    if submodule in sys.modules:
        return sys.modules[submodule]
    if "__getattr__" in namespace:
        return namespace["__getattr__"]
    if getattr(module, "__path__", None) is not None:
        return _Unimported(submodule)
    return _MISSING


def _resolve_import(name: str, level: int, namespace: dict[str, Any]) -> str:
    """The absolute name of ``from {'.' * level}{name} import ...`` run in ``namespace``."""
    if not level:
        return name
    import importlib.util  # noqa: PLC0415 - relative imports in unit bodies are rare

    package = namespace.get("__package__") or namespace.get("__name__", "")
    if not namespace.get("__path__") and not namespace.get("__package__"):
        package = str(package).rpartition(".")[0]
    return importlib.util.resolve_name("." * level + name, str(package))


def _unimported_module(name: str) -> bytes:
    """A module not imported yet: a library by name and version, user code by its source.

    Found the way the import system's path finder would, without running the module. The
    source's digest is memoised per file, size and modification time.
    """
    import importlib.machinery  # noqa: PLC0415 - only for modules nobody imported yet

    out = _length_prefixed(b"U", _text(name))
    search: list[str] | None = None
    spec = None
    parts = name.split(".")
    for count in range(1, len(parts) + 1):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:count]), search)
        if spec is None:
            return out + b"?"  # not found: the import fails the same way when it runs
        locations = spec.submodule_search_locations
        search = None if locations is None else list(locations)
    origin = getattr(spec, "origin", None)
    source = pathlib.Path(origin) if isinstance(origin, str) else None
    if source is None or not source.is_file():
        return out + b"-"
    if _is_library_file(str(source), parts[0]):
        return out + _length_prefixed(b"v", _text(_distribution_version(parts[0]) or "-"))
    info = source.stat()
    return out + _source_digest(str(source), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _source_digest(path: str, size: int, mtime_ns: int) -> bytes:
    del size, mtime_ns  # part of the memo's key: an edited file is read again
    return _length_prefixed(b"F", digest(pathlib.Path(path).read_bytes()))


class _Encoder:
    """One fingerprinting pass: the objects on the current path and the functions under way."""

    __slots__ = (
        "active",
        "backrefs",
        "function_memo",
        "functions",
        "ignore",
        "module_memo",
    )

    def __init__(
        self, ignore: frozenset[str] = frozenset(), module_memo: ModuleMemo | None = None
    ) -> None:
        self.ignore = ignore
        self.module_memo = module_memo
        self.active: set[int] = set()
        self.functions: dict[int, int] = {}
        self.function_memo: dict[int, bytes] = {}
        self.backrefs = 0

    def encode(self, value: Any) -> bytearray:
        out = bytearray()
        self.value(value, out)
        return out

    def value(self, value: Any, out: bytearray) -> None:
        handler = _EXACT.get(type(value))
        if handler is not None:
            handler(self, value, out)
        else:
            self.other(value, out)

    # -- leaves ----------------------------------------------------------------------------

    def none(self, value: None, out: bytearray) -> None:
        del value
        out += b"N"

    def bool_(self, value: bool, out: bytearray) -> None:
        out += b"T" if value else b"F"

    def int_(self, value: int, out: bytearray) -> None:
        try:
            out += _INT_FORMAT % value
        except ValueError:  # more digits than int-to-str conversion allows
            out += b"i%s;" % _decimal(value)

    def float_(self, value: float, out: bytearray) -> None:
        out += b"fnan" if math.isnan(value) else b"f" + _PACK_DOUBLE(value)

    def complex_(self, value: complex, out: bytearray) -> None:
        out += b"j"
        self.float_(value.real, out)
        self.float_(value.imag, out)

    def str_(self, value: str, out: bytearray) -> None:
        out += _length_prefixed(b"s", _text(value))

    def bytes_(self, value: bytes, out: bytearray) -> None:
        out += _length_prefixed(b"b", value)

    def bytearray_(self, value: bytearray, out: bytearray) -> None:
        out += _length_prefixed(b"B", bytes(value))

    def repr_(self, value: Any, out: bytearray) -> None:
        """Types whose ``repr`` is exact and stable (datetime, Decimal, UUID)."""
        out += _length_prefixed(b"r", _text(repr(value)))

    def fraction(self, value: fractions.Fraction, out: bytearray) -> None:
        out += b"q%s/%s;" % (_decimal(value.numerator), _decimal(value.denominator))

    def range_(self, value: range, out: bytearray) -> None:
        out += b"R%s,%s,%s;" % (_decimal(value.start), _decimal(value.stop), _decimal(value.step))

    def singleton(self, value: Any, out: bytearray) -> None:
        out += b"." + _text(repr(value))

    # -- containers ------------------------------------------------------------------------

    def enter(self, value: Any) -> None:
        key = id(value)
        if key in self.active:
            raise UnfingerprintableError(
                f"{type(value).__name__} contains itself (a reference cycle)"
            )
        self.active.add(key)

    def sequence(self, value: list[Any] | tuple[Any, ...], out: bytearray) -> None:
        self.enter(value)
        out += b"%s%d:" % (b"[" if isinstance(value, list) else b"(", len(value))
        index = 0
        try:
            for index, item in enumerate(value):  # noqa: B007 - read in the except clause
                self.value(item, out)
        except UnfingerprintableError as error:
            error.where.insert(0, f"[{index}]")
            raise
        finally:
            self.active.discard(id(value))

    def mapping(self, value: dict[Any, Any], out: bytearray) -> None:
        self.enter(value)
        try:
            items = []
            for key, item in value.items():
                try:
                    items.append((self.encode(key), self.encode(item)))
                except UnfingerprintableError as error:
                    error.where.insert(0, f"[{key!r}]")
                    raise
        finally:
            self.active.discard(id(value))
        items.sort()
        out += b"{%d:" % len(items)
        for key_bytes, item_bytes in items:
            out += key_bytes
            out += item_bytes

    def set_(self, value: set[Any] | frozenset[Any], out: bytearray) -> None:
        self.enter(value)
        try:
            members = sorted(self.encode(item) for item in value)
        except UnfingerprintableError as error:
            error.where.insert(0, "{...}")
            raise
        finally:
            self.active.discard(id(value))
        out += b"%s%d:" % (b"<" if isinstance(value, set) else b">", len(members))
        for member in members:
            out += member

    def attributes(self, tag: bytes, obj: Any, fields: dict[str, Any], out: bytearray) -> None:
        """An object as its class name and named parts (dataclass fields, namespace)."""
        self.enter(obj)
        try:
            out += tag + _qualified_name(type(obj))
            out += b"%d:" % len(fields)
            for name in sorted(fields):
                out += _length_prefixed(b"a", _text(name))
                try:
                    self.value(fields[name], out)
                except UnfingerprintableError as error:
                    error.where.insert(0, f".{name}")
                    raise
        finally:
            self.active.discard(id(obj))

    # -- code ------------------------------------------------------------------------------

    def code(self, value: types.CodeType, out: bytearray) -> None:
        out += _code_bytes(value)

    def module(self, value: types.ModuleType, out: bytearray) -> None:
        name = value.__name__
        out += _length_prefixed(b"M", _text(name))
        if _is_library(name):
            out += _library_version(name)

    def class_(self, value: type, out: bytearray) -> None:
        out += b"C" + _qualified_name(value)
        module = getattr(value, "__module__", None)
        if isinstance(module, str) and _is_library(module):
            out += _library_version(module)

    def builtin(self, value: Any, out: bytearray) -> None:
        """A C function or method: by name, plus the object it is bound to (if not a module)."""
        out += b"X" + _qualified_name(value)
        bound = getattr(value, "__self__", None)
        if bound is not None and not isinstance(bound, types.ModuleType | type):
            try:
                self.value(bound, out)
            except UnfingerprintableError as error:
                error.where.insert(0, ".__self__")
                raise

    def function(self, fn: types.FunctionType, out: bytearray) -> None:
        position = self.functions.get(id(fn))
        if position is not None:  # recursion: refer to the function under way
            out += b"^%d;" % position
            self.backrefs += 1
            return
        memo = self.function_memo.get(id(fn))
        if memo is not None:
            out += memo
            return
        module = fn.__module__ or ""
        library = _is_library(module)
        part = bytearray(b"L")
        if library:
            part += _qualified_name(fn) + _library_version(module)
            if not (fn.__closure__ or fn.__defaults__ or "<" in fn.__qualname__):
                out += part
                return
        self.functions[id(fn)] = len(self.functions)
        backrefs = self.backrefs
        try:
            code = fn.__code__
            part += _code_bytes(code)
            self.closure_values(fn, code, part)
            if not library:
                self.globals_and_imports(fn, code, part)
        finally:
            del self.functions[id(fn)]
        if self.backrefs == backrefs:
            self.function_memo[id(fn)] = bytes(part)
        out += part

    def closure_values(self, fn: types.FunctionType, code: types.CodeType, out: bytearray) -> None:
        """Its default arguments and closure values: what closures of one code object differ in."""
        self.part(out, "default arguments", fn.__defaults__)
        self.part(out, "keyword defaults", fn.__kwdefaults__)
        cells = fn.__closure__ or ()
        out += b"%d:" % len(cells)
        for name, cell in zip(code.co_freevars, cells, strict=True):
            out += _length_prefixed(b"a", _text(name))
            if name in self.ignore:
                out += b"~"
                continue
            contents = _cell_contents(cell)
            if contents is _EMPTY_CELL:
                out += b"_"
            elif isinstance(contents, types.ModuleType):
                reads = _attribute_reads(code)[0].get(("d", name), frozenset())
                self.module_reads(contents, reads, f"closure variable {name}", out)
            else:
                self.part(out, f"closure variable {name!r}", contents)

    def globals_and_imports(
        self, fn: types.FunctionType, code: types.CodeType, out: bytearray
    ) -> None:
        """The globals and imports ``fn`` reads, shared by the closures of one code object."""
        memo = None if self.module_memo is None else self.module_memo.globals_parts
        namespace = fn.__globals__
        key = (code, id(namespace), self.ignore)
        known = None if memo is None else memo.get(key)
        if known is not None and known[0] is namespace:
            out += known[1]
            return
        start, backrefs = len(out), self.backrefs
        self.globals_of(fn, code, out)
        self.imports_of(fn, code, out)
        if memo is not None and self.backrefs == backrefs:  # no reference to the caller
            memo[key] = (namespace, bytes(out[start:]))

    def globals_of(self, fn: types.FunctionType, code: types.CodeType, out: bytearray) -> None:
        namespace = fn.__globals__
        builtins = getattr(fn, "__builtins__", None) or vars(_builtins)
        names = _global_names(code)
        out += b"%d:" % len(names)
        for name in names:
            out += _length_prefixed(b"g", _text(name))
            if name in self.ignore:
                out += b"~"
            elif name in namespace:
                value = namespace[name]
                if isinstance(value, types.ModuleType):
                    reads = _attribute_reads(code)[0].get(("g", name), frozenset())
                    self.module_reads(value, reads, name, out)
                else:
                    self.part(out, f"global {name!r}", value)
            elif name in builtins:
                out += b"!"  # a builtin: by name, like the library it is
            else:
                out += b"?"  # unbound: the call will fail, the same way every time

    def imports_of(self, fn: types.FunctionType, code: types.CodeType, out: bytearray) -> None:
        """The modules the function imports in its body, and what it reads of them."""
        imports = _attribute_reads(code)[1]
        out += b"%d:" % len(imports)
        for (_, level, name), paths in imports:
            try:
                absolute = _resolve_import(name, level, fn.__globals__)
            except (ImportError, ValueError, TypeError):  # fails the same way when run
                out += b"?" + _length_prefixed(b"s", _text(f"{level}:{name}"))
                continue
            module = sys.modules.get(absolute)
            if module is None:
                out += _unimported_module(absolute)
            else:
                self.module_reads(module, paths, absolute, out)

    def module_reads(
        self, module: types.ModuleType, paths: frozenset[_Path], label: str, out: bytearray
    ) -> None:
        """A module, plus the values of the attributes read off it if it is user code.

        ``helpers.scale`` is encoded as the function ``scale`` is, so editing ``helpers.py``
        changes the units that use it; a library module counts by name and version. A path
        stops at the first value that is not a module of user code (``helpers.CONFIG.get``
        reads ``helpers.CONFIG``).
        """
        self.module(module, out)
        if _is_library(module.__name__) or not paths:
            return
        values: dict[_Path, Any] = {}
        for path in paths:
            value: Any = module
            taken: _Path = ()
            for attribute in path:
                value = _module_attribute(value, attribute)
                taken = (*taken, attribute)
                if not isinstance(value, types.ModuleType) or _is_library(value.__name__):
                    break
            if taken:
                values[taken] = value
        out += b"%d:" % len(values)
        memo = None if self.module_memo is None else self.module_memo.entries
        for taken in sorted(values):
            value = values[taken]
            key = (id(module), taken, self.ignore)
            known = None if memo is None else memo.get(key)
            if known is not None and known[0] is module and known[1] is value:
                out += known[2]
                continue
            part = bytearray(_length_prefixed(b"a", _text(".".join(taken))))
            backrefs = self.backrefs
            self.attribute_value(".".join((label, *taken)), value, part)
            if memo is not None and self.backrefs == backrefs:  # no reference to the caller
                memo[key] = (module, value, bytes(part))
            out += part

    def attribute_value(self, dotted: str, value: Any, out: bytearray) -> None:
        """One module attribute a unit reads, named ``dotted`` in errors and cache_ignore."""
        if dotted in self.ignore:
            out += b"~"
        elif value is _MISSING:
            out += b"?"  # not there (yet): reading it fails the same way every time
        elif isinstance(value, _Unimported):
            out += _unimported_module(value.name)
        elif isinstance(value, types.ModuleType):
            self.module(value, out)
        else:
            self.part(out, f"{dotted!r}", value)

    def part(self, out: bytearray, label: str, value: Any) -> None:
        """Encode one named part of a function, naming it in any error."""
        try:
            self.value(value, out)
        except UnfingerprintableError as error:
            error.where.insert(0, label)
            raise

    # -- everything else -------------------------------------------------------------------

    def other(self, value: Any, out: bytearray) -> None:  # noqa: PLR0911 - one per kind
        cls = type(value)
        if isinstance(value, type):
            self.class_(value, out)
            return
        cache_key = getattr(cls, "__cache_key__", None)
        if cache_key is not None:
            out += b"k" + _qualified_name(cls)
            self.part(out, f"{cls.__name__}.__cache_key__()", value.__cache_key__())
            return
        if isinstance(value, enum.Enum):
            out += b"E" + _qualified_name(cls) + _length_prefixed(b"s", _text(value.name))
            return
        if dataclasses.is_dataclass(value):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            self.attributes(b"D", value, fields, out)
            return
        if isinstance(value, types.FunctionType):
            self.function(value, out)
            return
        if isinstance(value, types.MethodType):
            out += b"m"
            self.part(out, "method", value.__func__)
            if "self" in self.ignore:
                out += b"~"
            else:
                self.part(out, "self", value.__self__)
            return
        if isinstance(value, functools.partial):
            out += b"p" + _qualified_name(cls)
            self.part(out, "partial.func", value.func)
            self.part(out, "partial.args", value.args)
            self.part(out, "partial.keywords", value.keywords)
            return
        if isinstance(value, _BUILTIN_CALLABLES):
            self.builtin(value, out)
            return
        for base, handler in _BASES:
            if isinstance(value, base):
                out += b"@" + _qualified_name(cls)
                handler(self, value, out)
                if isinstance(value, collections.defaultdict):
                    self.part(out, ".default_factory", value.default_factory)
                extra = getattr(value, "__dict__", None)
                if extra:
                    self.attributes(b"A", value, dict(extra), out)
                return
        if isinstance(value, pathlib.PurePath):
            out += b"P" + _qualified_name(cls) + _length_prefixed(b"s", _text(str(value)))
            return
        if isinstance(value, types.SimpleNamespace):
            self.attributes(b"S", value, vars(value), out)
            return
        wrapped = getattr(value, "__wrapped__", None)
        if wrapped is not None and callable(value):  # lru_cache & co: look at what they wrap
            out += b"w" + _qualified_name(cls)
            self.part(out, "__wrapped__", wrapped)
            return
        self.reduced(value, out)

    def reduced(self, value: Any, out: bytearray) -> None:
        """Anything else: what pickle would save of it."""
        cls = type(value)
        try:
            reduced = value.__reduce_ex__(4)
        except Exception as error:
            raise UnfingerprintableError(
                f"a {cls.__module__}.{cls.__qualname__} cannot be fingerprinted "
                f"(it cannot be pickled: {error})"
            ) from None
        self.enter(value)
        try:
            out += b"O" + _qualified_name(cls)
            if isinstance(reduced, str):  # a global, pickled by name
                out += _length_prefixed(b"s", _text(reduced))
                return
            parts = list(reduced)
            for position in (3, 4):  # list and dict item iterators become lists
                if len(parts) > position and parts[position] is not None:
                    parts[position] = list(parts[position])
            try:
                self.value(tuple(parts), out)
            except UnfingerprintableError as error:
                error.where.insert(0, f"<{cls.__qualname__}>")
                raise
        finally:
            self.active.discard(id(value))


_BUILTIN_CALLABLES = (
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
)

_EXACT: dict[type, Any] = {
    type(None): _Encoder.none,
    bool: _Encoder.bool_,
    int: _Encoder.int_,
    float: _Encoder.float_,
    complex: _Encoder.complex_,
    str: _Encoder.str_,
    bytes: _Encoder.bytes_,
    bytearray: _Encoder.bytearray_,
    list: _Encoder.sequence,
    tuple: _Encoder.sequence,
    dict: _Encoder.mapping,
    set: _Encoder.set_,
    frozenset: _Encoder.set_,
    range: _Encoder.range_,
    fractions.Fraction: _Encoder.fraction,
    decimal.Decimal: _Encoder.repr_,
    uuid.UUID: _Encoder.repr_,
    dt.datetime: _Encoder.repr_,
    dt.date: _Encoder.repr_,
    dt.time: _Encoder.repr_,
    dt.timedelta: _Encoder.repr_,
    dt.timezone: _Encoder.repr_,
    type(Ellipsis): _Encoder.singleton,
    type(NotImplemented): _Encoder.singleton,
    types.FunctionType: _Encoder.function,
    types.CodeType: _Encoder.code,
    types.ModuleType: _Encoder.module,
    type: _Encoder.class_,
}

# Closure values a closure_snapshot keeps and snapshot_fingerprint encodes itself: leaves,
# which read nothing of the encoder they are handed (no function, container or
# back-reference can be inside) and which nothing can change.
_PLAIN_CELLS: Final[dict[type, Any]] = {
    kind: _EXACT[kind] for kind in (type(None), bool, int, float, str, bytes)
}
_LEAVES: Final = _Encoder()

# Subclasses of the plain types are encoded as their base, tagged with their class.
_BASES: tuple[tuple[type, Any], ...] = (
    (int, _Encoder.int_),
    (float, _Encoder.float_),
    (complex, _Encoder.complex_),
    (str, _Encoder.str_),
    (bytes, _Encoder.bytes_),
    (bytearray, _Encoder.bytearray_),
    (list, _Encoder.sequence),
    (tuple, _Encoder.sequence),
    (dict, _Encoder.mapping),
    (set, _Encoder.set_),
    (frozenset, _Encoder.set_),
)


# A template no function matches, for a caller to hold in place of None: its code object
# is its own, compiled here.
NO_TEMPLATE: Final = ClosureTemplate(
    compile("", "<no template>", "exec"), {}, "<no template>", frozenset(), b""
)
