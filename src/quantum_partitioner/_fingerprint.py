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
* Classes and modules: by qualified name (plus the package's ``__version__`` for installed
  libraries). A class's *methods* are not looked into: bump ``metadata["cache_version"]``
  after editing one.
* Functions: see :func:`function_fingerprint`.
* Anything else: what pickle would save of it (``__reduce_ex__``), so an object that pickles
  faithfully fingerprints faithfully; one that cannot be pickled (a lock, a socket, a
  generator) cannot be fingerprinted, and :class:`UnfingerprintableError` says where it was
  found (``closure variable 'client' -> ['pool'] -> ._lock``). Reference cycles are refused
  too.

State: a memo of code objects' encodings and global names (code is immutable, so it never
goes stale); nothing else outlives one call.
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
import math
import os
import pathlib
import struct
import sys
import sysconfig
import types
import uuid
from typing import Any, Final

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


def digest(data: bytes | bytearray) -> bytes:
    """The 32-byte BLAKE2b digest of ``data``."""
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


def fingerprint(value: Any) -> bytes:
    """The content fingerprint of ``value`` (32 bytes).

    Raises:
        UnfingerprintableError: Some part of ``value`` has no stable encoding.
    """
    return digest(_Encoder().encode(value))


def function_fingerprint(fn: Any, ignore: frozenset[str] = frozenset()) -> bytes:
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
            object a bound method is bound to.

    Raises:
        UnfingerprintableError: A value the function depends on has no stable encoding.
    """
    encoder = _Encoder(ignore)
    out = bytearray(b"fn:")
    out += sys.implementation.cache_tag.encode() if sys.implementation.cache_tag else b"?"
    encoder.value(fn, out)
    return digest(out)


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

    Unknown modules, ``__main__`` and modules built at run time count as the user's, so
    their functions are fingerprinted by content.
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
    return os.path.realpath(file).startswith(_library_roots())


@functools.cache
def _library_version(module_name: str) -> bytes:
    top = sys.modules.get(module_name.partition(".")[0])
    version = getattr(top, "__version__", None)
    return _length_prefixed(b"v", _text(version)) if isinstance(version, str) else b"v-"


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


class _Encoder:
    """One fingerprinting pass: the objects on the current path and the functions under way."""

    __slots__ = ("active", "backrefs", "function_memo", "functions", "ignore")

    def __init__(self, ignore: frozenset[str] = frozenset()) -> None:
        self.ignore = ignore
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
        out += b"i%d;" % value

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
        out += b"q%d/%d;" % (value.numerator, value.denominator)

    def range_(self, value: range, out: bytearray) -> None:
        out += b"R%d,%d,%d;" % (value.start, value.stop, value.step)

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
            self.part(part, "default arguments", fn.__defaults__)
            self.part(part, "keyword defaults", fn.__kwdefaults__)
            cells = fn.__closure__ or ()
            part += b"%d:" % len(cells)
            for name, cell in zip(code.co_freevars, cells, strict=True):
                part += _length_prefixed(b"a", _text(name))
                if name in self.ignore:
                    part += b"~"
                    continue
                try:
                    contents = cell.cell_contents
                except ValueError:  # a cell not assigned yet
                    contents = _EMPTY_CELL
                if contents is _EMPTY_CELL:
                    part += b"_"
                else:
                    self.part(part, f"closure variable {name!r}", contents)
            if not library:
                self.globals_of(fn, code, part)
        finally:
            del self.functions[id(fn)]
        if self.backrefs == backrefs:
            self.function_memo[id(fn)] = bytes(part)
        out += part

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
                self.part(out, f"global {name!r}", namespace[name])
            elif name in builtins:
                out += b"!"  # a builtin: by name, like the library it is
            else:
                out += b"?"  # unbound: the call will fail, the same way every time

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
