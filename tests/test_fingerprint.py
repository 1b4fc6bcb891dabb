"""Content fingerprints: canonical values, functions, and stability across processes."""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import math
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import threading
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_partitioner.caching import _fingerprint
from quantum_partitioner.caching._fingerprint import (
    UnfingerprintableError,
    fingerprint,
    function_fingerprint,
)

# -- values ------------------------------------------------------------------------------------


def test_dict_insertion_order_does_not_count():
    """Two dicts with the same items in another order have one fingerprint."""
    assert fingerprint({"a": 1, "b": [2, 3]}) == fingerprint({"b": [2, 3], "a": 1})


def test_types_are_tagged():
    """Values that compare equal across types (1, 1.0, True) or look alike all differ."""
    values = [1, 1.0, True, "1", b"1", bytearray(b"1"), [1], (1,), {1}, frozenset({1}), None, 0]
    digests = [fingerprint(v) for v in values]
    assert len(set(digests)) == len(values)


def test_floats_by_bit_pattern_with_one_nan():
    """-0.0 and 0.0 differ; every NaN is the same NaN."""
    assert fingerprint(0.0) != fingerprint(-0.0)
    other_nan = struct.unpack(">d", b"\x7f\xf8\x00\x00\x00\x00\x00\x01")[0]
    assert math.isnan(other_nan)
    assert fingerprint(float("nan")) == fingerprint(other_nan)


def test_nesting_is_unambiguous():
    """Structure counts: [[1], 2] differs from [1, [2]], "ab" + "c" from "a" + "bc"."""
    assert fingerprint([[1], 2]) != fingerprint([1, [2]])
    assert fingerprint(["ab", "c"]) != fingerprint(["a", "bc"])
    assert fingerprint({"a": "b"}) != fingerprint({"b": "a"})


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


@dataclasses.dataclass
class Point:
    x: int
    y: int


Pair = collections.namedtuple("Pair", "a b")  # noqa: PYI024 - a plain namedtuple on purpose


def test_dataclasses_enums_and_subclasses():
    """Dataclasses by fields, enums by member, container subclasses tagged with their class."""
    assert fingerprint(Point(1, 2)) == fingerprint(Point(1, 2))
    assert fingerprint(Point(1, 2)) != fingerprint(Point(2, 1))
    assert fingerprint(Colour.RED) != fingerprint(Colour.BLUE)
    assert fingerprint(Colour.RED) != fingerprint(1)
    assert fingerprint(Pair(1, 2)) != fingerprint((1, 2))
    assert fingerprint(collections.OrderedDict(a=1)) != fingerprint({"a": 1})
    assert fingerprint(collections.defaultdict(list)) != fingerprint(collections.defaultdict(set))


class Keyed:
    def __init__(self, key, noise):
        self.key = key
        self.noise = noise

    def __cache_key__(self):
        return self.key


def test_cache_key_hook_decides():
    """An object's __cache_key__() is what counts, not its other state."""
    assert fingerprint(Keyed("a", 1)) == fingerprint(Keyed("a", 2))
    assert fingerprint(Keyed("a", 1)) != fingerprint(Keyed("b", 1))


class Plain:
    def __init__(self, value):
        self.value = value


def test_other_objects_count_what_pickle_saves():
    """An ordinary object is fingerprinted by its state, like pickle saves it."""
    assert fingerprint(Plain([1, 2])) == fingerprint(Plain([1, 2]))
    assert fingerprint(Plain([1, 2])) != fingerprint(Plain([1, 3]))


def test_unpicklable_value_names_its_path():
    """A lock deep inside a value is refused with the path to it."""
    with pytest.raises(UnfingerprintableError) as info:
        fingerprint({"a": [1, Plain(threading.Lock())]})
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert "['a'] -> [1] -> <Plain>" in message
    assert "lock" in message


def test_reference_cycles_are_refused():
    """A list that contains itself cannot be fingerprinted; shared references are fine."""
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(UnfingerprintableError, match="reference cycle"):
        fingerprint(loop)
    shared = [1]
    assert fingerprint([shared, shared]) == fingerprint([[1], [1]])


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3), inner, max_size=4)
        | st.frozensets(st.integers(-3, 3) | st.text(max_size=2), max_size=4)
    ),
    max_leaves=12,
)


def canonical(value):
    """A type-aware comparison key: what two values must share to have one fingerprint."""
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else struct.pack(">d", value))
    if isinstance(value, dict):
        return ("dict", sorted((repr(canonical(k)), canonical(v)) for k, v in value.items()))
    if isinstance(value, frozenset):
        return ("frozenset", sorted(repr(canonical(v)) for v in value))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [canonical(v) for v in value])
    return (type(value).__name__, value)


@settings(max_examples=200, deadline=None, database=None)
@given(plain, plain)
def test_fingerprints_match_exactly_when_values_do(a, b):
    """Equal fingerprints if and only if the values are the same (type-aware)."""
    assert (fingerprint(a) == fingerprint(b)) == (canonical(a) == canonical(b))


@settings(max_examples=100, deadline=None, database=None)
@given(plain)
def test_fingerprint_survives_a_pickle_round_trip(value):
    """A value and its copy through pickle (a new object graph) have one fingerprint."""
    assert fingerprint(pickle.loads(pickle.dumps(value))) == fingerprint(value)


@settings(max_examples=100, deadline=None, database=None)
@given(plain)
def test_defect_15_deep_encoding_is_the_recursive_encoding(value):
    """Issue 9 defect 15: the encoder without recursion gives the recursive one's bytes.

    So a value's fingerprint does not depend on how much stack was left when it was taken.
    """
    wrapped = [value, {"k": (value, {1, 2})}]
    assert _fingerprint._encode_deep(wrapped) == bytes(_fingerprint._Encoder().encode(wrapped))


def test_defect_15_nesting_past_the_stack_is_fingerprinted_or_named():
    """Plain containers of any depth fingerprint; a deep object chain is refused by name."""

    def deep(leaf):
        value = leaf
        for _ in range(5000):
            value = [value]
        return value

    assert fingerprint(deep(0)) == fingerprint(deep(0))
    assert fingerprint(deep(0)) != fingerprint(deep(1))
    assert fingerprint(deep(0)) != fingerprint([deep(0)])
    chain = None
    for _ in range(5000):
        chain = Point(chain, 0)
    with pytest.raises(UnfingerprintableError, match="nested deeper than the interpreter's"):
        fingerprint({"chain": chain})
    with pytest.raises(UnfingerprintableError, match="nested deeper than the interpreter's"):
        function_fingerprint(make_closure(chain))
    memo = _fingerprint.ModuleMemo()  # the short way (a closure of a code seen before) too
    function_fingerprint(make_closure(0), memo=memo)
    with pytest.raises(UnfingerprintableError, match="nested deeper than the interpreter's"):
        function_fingerprint(make_closure(chain), memo=memo)


# -- functions ---------------------------------------------------------------------------------


def compile_function(source, namespace=None, name="f"):
    """Define a function from source, as if its module had been edited."""
    namespace = {} if namespace is None else namespace
    exec(textwrap.dedent(source), namespace)
    return namespace[name]


def test_same_function_same_fingerprint_and_edits_change_it():
    """Editing code or a constant changes the fingerprint; moving the code does not."""
    base = compile_function("def f(ctx):\n    return ctx['a'] + 1\n")
    same = compile_function("def f(ctx):\n    return ctx['a'] + 1\n")
    moved = compile_function("\n\n\n# a comment\ndef f(ctx):\n    return ctx['a'] + 1\n")
    constant = compile_function("def f(ctx):\n    return ctx['a'] + 2\n")
    code = compile_function("def f(ctx):\n    return ctx['a'] - 1\n")
    assert function_fingerprint(base) == function_fingerprint(same)
    assert function_fingerprint(base) == function_fingerprint(moved)
    assert function_fingerprint(base) != function_fingerprint(constant)
    assert function_fingerprint(base) != function_fingerprint(code)


def test_nested_code_and_defaults_count():
    """A change inside a nested lambda, or in a default argument, changes the fingerprint."""
    inner1 = compile_function("def f(ctx):\n    g = lambda x: x + 1\n    return g(1)\n")
    inner2 = compile_function("def f(ctx):\n    g = lambda x: x + 2\n    return g(1)\n")
    assert function_fingerprint(inner1) != function_fingerprint(inner2)
    default1 = compile_function("def f(ctx, scale=1):\n    return scale\n")
    default2 = compile_function("def f(ctx, scale=2):\n    return scale\n")
    assert function_fingerprint(default1) != function_fingerprint(default2)


def make_closure(value):
    def unit(ctx):
        return value

    return unit


def test_closure_values_count():
    """Closures over equal values match; over different values they differ."""
    assert function_fingerprint(make_closure([1, 2])) == function_fingerprint(make_closure([1, 2]))
    assert function_fingerprint(make_closure([1, 2])) != function_fingerprint(make_closure([1, 3]))


def test_globals_read_count_and_others_do_not():
    """A global the function reads counts; an unrelated global in its module does not."""
    source = "def f(ctx):\n    return SCALE * 2\n"
    two = compile_function(source, {"SCALE": 2, "OTHER": 1})
    two_other = compile_function(source, {"SCALE": 2, "OTHER": 99})
    three = compile_function(source, {"SCALE": 3, "OTHER": 1})
    assert function_fingerprint(two) == function_fingerprint(two_other)
    assert function_fingerprint(two) != function_fingerprint(three)


def test_helper_functions_are_followed():
    """Editing a helper the unit calls (a global function of user code) changes the unit."""
    source = "def helper(x):\n    return x + {n}\ndef f(ctx):\n    return helper(ctx['a'])\n"
    one = compile_function(source.format(n=1))
    two = compile_function(source.format(n=2))
    assert function_fingerprint(one) != function_fingerprint(two)
    recursive = compile_function("def f(n):\n    return 1 if n < 1 else f(n - 1)\n")
    assert function_fingerprint(recursive) == function_fingerprint(recursive)


def user_module(monkeypatch, name, source):
    """A module of user code (no file, so not a library) registered in sys.modules."""
    module = types.ModuleType(name)
    exec(textwrap.dedent(source), vars(module))
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_defect_10_module_attributes_a_unit_reads_count(monkeypatch):
    """Issue 9 defect 10: ``helpers.scale`` counts like a global: what it is, not its name."""
    unit_source = "def f(ctx):\n    return qp_helpers.scale(ctx['a'])\n"
    helper = "FACTOR = {n}\ndef scale(x):\n    return x * FACTOR\ndef unused():\n    return {m}\n"

    def fingerprint_with(n, m):
        module = user_module(monkeypatch, "qp_helpers", helper.format(n=n, m=m))
        return function_fingerprint(compile_function(unit_source, {"qp_helpers": module}))

    assert fingerprint_with(2, 0) == fingerprint_with(2, 0)
    assert fingerprint_with(2, 0) != fingerprint_with(3, 0)  # a global the helper reads
    assert fingerprint_with(2, 0) == fingerprint_with(2, 1)  # a function no unit reads


def test_defect_10_chains_stop_at_values_and_libraries(monkeypatch):
    """A chain reads up to its first value (``m.CONFIG.get``) or library (``m.json.dumps``)."""
    unit_source = "def f(ctx):\n    return qp_chain.CONFIG.get('k'), qp_chain.json.dumps(1)\n"

    def fingerprint_with(config):
        module = user_module(monkeypatch, "qp_chain", f"import json\nCONFIG = {config!r}\n")
        return function_fingerprint(compile_function(unit_source, {"qp_chain": module}))

    assert fingerprint_with({"k": 1}) != fingerprint_with({"k": 2})
    assert fingerprint_with({"k": 1}) == fingerprint_with({"k": 1})


def test_defect_10_an_unfingerprintable_module_attribute_is_named_and_can_be_ignored(
    monkeypatch,
):
    """A lock read as ``m.LOCK`` is refused by its dotted name; cache_ignore can list it."""
    module = user_module(monkeypatch, "qp_locked", "import threading\nLOCK = threading.Lock()\n")
    unit = compile_function(
        "def f(ctx):\n    with qp_locked.LOCK:\n        return 1\n", {"qp_locked": module}
    )
    with pytest.raises(UnfingerprintableError, match=r"'qp_locked\.LOCK'"):
        function_fingerprint(unit)
    ignored = frozenset({"qp_locked.LOCK"})
    assert function_fingerprint(unit, ignored) == function_fingerprint(unit, ignored)


def test_module_memo_is_shared_and_a_function_met_later_sees_a_rebound_attribute(monkeypatch):
    """One build encodes ``m.scale`` once; another function met after a rebinding sees it."""
    module = user_module(monkeypatch, "qp_memo", "def scale(x):\n    return x * 2\n")
    namespace = {"qp_memo": module}
    unit = compile_function("def f(ctx):\n    return qp_memo.scale(1)\n", namespace)
    memo = _fingerprint.ModuleMemo()
    first = function_fingerprint(unit, memo=memo)
    assert memo.entries
    exec("def scale(x):\n    return x * 3\n", vars(module))
    # The same function again in this build: its fingerprint is the one taken first.
    assert function_fingerprint(unit, memo=memo) == first
    other = compile_function("def g(ctx):\n    return qp_memo.scale(2)\n", namespace, "g")
    assert function_fingerprint(other, memo=memo) == function_fingerprint(other)
    memo.clear()  # a run: the units added after it read modules afresh
    assert function_fingerprint(unit, memo=memo) == function_fingerprint(unit) != first


def test_defect_10_editable_installs_are_user_code(tmp_path, monkeypatch):
    """A package whose distribution is an editable install is fingerprinted by content."""
    site = tmp_path / "site"
    (site / "qp_probe").mkdir(parents=True)
    (site / "qp_probe" / "__init__.py").write_text("def helper():\n    return 1\n")
    info = site / "qp_probe-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qp-probe\nVersion: 1.0\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(_fingerprint, "_library_roots", lambda: (str(site) + os.sep,))
    monkeypatch.delitem(sys.modules, "qp_probe", raising=False)
    __import__("qp_probe")

    def classify():
        _fingerprint._is_library.cache_clear()
        _fingerprint._editable_packages.cache_clear()
        return _fingerprint._is_library("qp_probe")

    try:
        assert classify() is True  # under a library root, installed normally
        (info / "direct_url.json").write_text(
            '{"url": "file:///src/qp-probe", "dir_info": {"editable": true}}'
        )
        assert classify() is False
    finally:
        monkeypatch.undo()
        classify()


def test_library_functions_count_by_name():
    """Modules and library functions are referenced by name (json.dumps is json.dumps)."""
    source = "import json\ndef f(ctx):\n    return json.dumps(ctx['a'])\n"
    assert function_fingerprint(compile_function(source)) == function_fingerprint(
        compile_function(source)
    )


def test_partials_and_methods_count_their_parts():
    """functools.partial and bound methods count their function and bound values."""

    def add(a, b):
        return a + b

    assert function_fingerprint(functools.partial(add, 1)) != function_fingerprint(
        functools.partial(add, 2)
    )
    assert function_fingerprint(Keyed("a", 0).__cache_key__) != function_fingerprint(
        Keyed("b", 0).__cache_key__
    )


class Service:
    def __init__(self):
        self.lock = threading.Lock()

    def fetch(self, ctx):
        return 1


def test_bound_method_of_an_unpicklable_object_can_ignore_self():
    """A method bound to an object holding a lock is refused unless "self" is ignored."""
    with pytest.raises(UnfingerprintableError, match=r"self -> <Service>"):
        function_fingerprint(Service().fetch)
    ignored = frozenset({"self"})
    assert function_fingerprint(Service().fetch, ignored) == function_fingerprint(
        Service().fetch, ignored
    )


def test_unpicklable_closure_names_the_variable_and_can_be_ignored():
    """A closed-over lock is refused by name; ignoring it leaves it out."""
    lock = threading.Lock()

    def unit(ctx):
        with lock:
            return 1

    with pytest.raises(UnfingerprintableError, match="closure variable 'lock'"):
        function_fingerprint(unit)
    assert function_fingerprint(unit, frozenset({"lock"})) == function_fingerprint(
        unit, frozenset({"lock"})
    )


PROGRAM = """
import json, sys
from quantum_partitioner.caching._fingerprint import fingerprint, function_fingerprint
LIMIT = {"a": [1, 2], "b": frozenset({"x", "y", "z"})}
def helper(x):
    return x * 2
def unit(ctx):
    return helper(ctx["v"]) + len(LIMIT)
values = [{"k": {"s", "t", "u"}}, ("x", 1.5, None), LIMIT]
print(json.dumps([fingerprint(v).hex() for v in values] + [function_fingerprint(unit).hex()]))
"""


def test_fingerprints_are_stable_across_processes():
    """Two interpreters with different hash seeds compute the same fingerprints."""
    outputs = [
        subprocess.run(
            [sys.executable, "-c", PROGRAM],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            timeout=60,
        ).stdout
        for seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) > 64 * 4


def test_a_build_memo_takes_a_shared_function_once_until_it_is_cleared(monkeypatch):
    """Units of one build that run one function share one fingerprint, taken first.

    They all read the same globals, defaults and cells when they run, so a rebinding in
    between is no reason for them to differ; the build after a run (``clear``) sees it.
    """
    module = user_module(monkeypatch, "qp_shared", "LIMIT = 3\n")
    namespace = {"qp_shared": module, "OFFSET": 1}
    unit = compile_function(
        "def f(ctx, k=2):\n    return qp_shared.LIMIT + OFFSET + k\n", namespace
    )

    def make(value):
        def closure(ctx):
            return value

        return closure, lambda new: closure.__closure__[0].__setattr__("cell_contents", new)

    shared, rebind = make(1)
    memo = _fingerprint.ModuleMemo()
    first = function_fingerprint(unit, memo=memo)
    seen = function_fingerprint(shared, memo=memo)
    assert memo.functions
    for change in (
        lambda: unit.__globals__.__setitem__("OFFSET", 5),  # a rebound global
        lambda: setattr(unit, "__defaults__", (3,)),  # new default arguments
        lambda: setattr(module, "LIMIT", 4),  # a rebound module attribute
    ):
        before = function_fingerprint(unit)
        change()
        assert function_fingerprint(unit) != before
        assert function_fingerprint(unit, memo=memo) == first
    rebind(2)  # a rebound closure cell
    assert function_fingerprint(shared, memo=memo) == seen
    memo.clear()
    assert function_fingerprint(unit, memo=memo) == function_fingerprint(unit) != first
    assert function_fingerprint(shared, memo=memo) == function_fingerprint(shared) != seen
    partial = functools.partial(unit, k=1)  # other callables: by identity too
    assert memo.function(partial, frozenset()) is memo.function(partial, frozenset())


class AlwaysEqual:
    """A callable object that claims to equal every other (and hashes alike)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, ctx):
        return self.value

    def __eq__(self, other):
        return True

    def __hash__(self):
        return 0


def test_a_build_memo_keys_callable_objects_by_identity_not_equality():
    """Two callables that compare equal but hold different values keep their own prints."""
    memo = _fingerprint.ModuleMemo()
    one, two = AlwaysEqual(1), AlwaysEqual(2)
    assert function_fingerprint(one, memo=memo) == function_fingerprint(one)
    assert function_fingerprint(two, memo=memo) == function_fingerprint(two)
    assert function_fingerprint(one, memo=memo) != function_fingerprint(two, memo=memo)


def test_a_build_memo_encodes_the_globals_of_distinct_closures_once(monkeypatch):
    """Closures of one code object share the globals part; their closure values still count."""
    module = user_module(monkeypatch, "qp_closures", "def scale(x):\n    return x * 2\n")
    make = compile_function(
        "def make(k):\n    def unit(ctx):\n        return qp_closures.scale(k)\n    return unit\n",
        {"qp_closures": module},
        name="make",
    )
    memo = _fingerprint.ModuleMemo()
    prints = [function_fingerprint(make(k), memo=memo) for k in range(3)]
    assert len(set(prints)) == 3
    assert prints == [function_fingerprint(make(k)) for k in range(3)]
    assert sorted(key[0].co_name for key in memo.globals_parts) == ["scale", "unit"]  # once each
    assert function_fingerprint(make(0), memo=memo) == prints[0]  # equal values, equal prints
    exec("def scale(x):\n    return x * 3\n", vars(module))  # the helper edited
    assert function_fingerprint(make(0), memo=memo) == prints[0]  # this build: as taken first
    memo.clear()
    assert function_fingerprint(make(0), memo=memo) == function_fingerprint(make(0)) != prints[0]


def test_closures_of_one_code_object_are_encoded_as_the_long_way_does(monkeypatch):
    """After one closure, the others (plain values, ignored ones) get the very same bytes."""
    module = user_module(monkeypatch, "qp_plain", "FACTOR = 2\n")
    make = compile_function(
        "def make(k, s, lock):\n"
        "    def unit(ctx):\n"
        "        return qp_plain.FACTOR * k, s, lock\n"
        "    return unit\n",
        {"qp_plain": module},
        name="make",
    )
    values = [(1, "a"), (2.5, b"b"), (None, True), (float("nan"), "é"), ([1], "list")]
    for ignore in (frozenset(), frozenset({"lock"})):
        memo = _fingerprint.ModuleMemo()
        made = [make(k, s, object() if ignore else 0) for k, s in values]
        prints = [function_fingerprint(fn, ignore, memo) for fn in made]
        assert prints == [function_fingerprint(fn, ignore) for fn in made]
        assert len(set(prints)) == len(values)
        assert memo.closures  # the closures after the first took the short way
        again = function_fingerprint(make(*values[0], 0), ignore, memo)
        assert again == prints[0]  # equal values: equal fingerprints
        module.FACTOR = 3  # the next build (after clear) sees a rebound module attribute
        memo.clear()
        assert function_fingerprint(made[0], ignore, memo) == function_fingerprint(made[0], ignore)
        assert function_fingerprint(made[1], ignore, memo) != prints[1]
        module.FACTOR = 2


def test_closures_interleaved_across_code_namespaces_and_modules_get_the_long_ways_bytes(
    monkeypatch,
):
    """The template used last serves only its own code, namespace, module and ignored names.

    Closures of three factories, of one code object under another globals namespace, with
    an unassigned cell, with ``__module__`` set to a library's (as ``functools.wraps``
    does) or ignoring their one cell are added in turn; each gets the bytes of the long way.
    """
    source = (
        "def make(k):\n"
        "    def unit(ctx):\n"
        "        return qp_interleaved.BASE + k\n"
        "    return unit\n"
        "def other(k):\n"
        "    def unit(ctx):\n"
        "        return k, later\n"
        "    if k is not None:\n"
        "        later = k\n"
        "    return unit\n"
        "def unset(flag):\n"
        "    def unit(ctx):\n"
        "        return later\n"
        "    if flag:\n"
        "        later = flag\n"
        "    return unit\n"
    )
    module = user_module(monkeypatch, "qp_interleaved", "BASE = 1\n")
    # Named like a module (functions take their __module__ from it), both the same.
    namespace = {"__name__": "qp_factories", "qp_interleaved": module}
    make = compile_function(source, namespace, name="make")
    other, unset = namespace["other"], namespace["unset"]
    elsewhere = {"__name__": "qp_factories", "qp_interleaved": types.SimpleNamespace(BASE=2)}

    def rehomed(k):  # the code of make's closures, under another globals namespace
        fn = make(k)
        return types.FunctionType(fn.__code__, elsewhere, fn.__name__, None, fn.__closure__)

    def library_module(k):
        fn = make(k)
        fn.__module__ = "json"
        return fn

    made = []
    for k in range(3):
        made += [make(k), other(k), rehomed(k), make(k + 10), library_module(k), other(None)]
        made += [unset(k), unset(0)]  # one cell, assigned or not
    memo = _fingerprint.ModuleMemo()
    prints = [function_fingerprint(fn, memo=memo) for fn in made]
    assert prints == [function_fingerprint(fn) for fn in made]
    assert memo.closures  # the closures after the first of each took the short way
    ignore = frozenset({"k"})
    pairs = [(make(k), names) for k in range(3) for names in (ignore, frozenset())]
    prints = [function_fingerprint(fn, names, memo) for fn, names in pairs]
    assert prints == [function_fingerprint(fn, names) for fn, names in pairs]
    assert len(set(prints[0::2])) == 1  # k ignored: one fingerprint
    assert len(set(prints[1::2])) == 3


def test_closures_with_defaults_or_any_values_take_the_short_way_to_the_same_bytes(
    monkeypatch,
):
    """Defaults, containers, functions, modules, empty cells and the closure itself as a value.

    They are encoded by an encoder pass over the defaults and cells only: the bytes are the
    long way's, recursion (a closure calling itself) included.
    """
    module = user_module(monkeypatch, "qp_values", "BASE = 10\ndef helper(x):\n    return x\n")
    make = compile_function(
        "def make(value, default):\n"
        "    def unit(ctx, d=default, *, kw=default):\n"
        "        return qp_values.BASE + value, d, kw, unit, later\n"
        "    if value != 'unset':\n"
        "        later = value\n"
        "    return unit\n",
        {"qp_values": module},
        name="make",
    )
    values = [1, "unset", [1, {"a": (2, None)}], module.helper, module, {3}, 1.5]
    memo = _fingerprint.ModuleMemo()
    made = [make(value, default) for value in values for default in (0, [0])]
    prints = [function_fingerprint(fn, memo=memo) for fn in made]
    assert memo.closures
    assert prints == [function_fingerprint(fn) for fn in made]
    assert len(set(prints)) == len(made)
    assert function_fingerprint(make([1, {"a": (2, None)}], [0]), memo=memo) == prints[5]
    with pytest.raises(UnfingerprintableError, match="closure variable 'later'"):
        function_fingerprint(make(threading.Lock(), 0), memo=memo)


def test_a_closure_whose_module_is_a_library_is_not_taken_for_user_code(monkeypatch):
    """functools.wraps copies ``__module__``: a library's name there takes the long way."""
    make = compile_function(
        "def make(k):\n    def unit(ctx):\n        return k\n    return unit\n", name="make"
    )
    memo = _fingerprint.ModuleMemo()
    first, second = make(1), make(2)
    function_fingerprint(first, memo=memo)
    second.__module__ = "json"
    second.__qualname__ = "dumps"
    assert function_fingerprint(second, memo=memo) == function_fingerprint(second)
