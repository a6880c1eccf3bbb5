"""Site names from the code: a read-only scan of a function's source.

``z = lvm.latent(dist.Categorical(w))`` names its Pyro site ``"z"``. When a function is decorated (or first runs a
primitive), its source is parsed once with :mod:`ast`; every call of a ppl_lvm primitive is indexed by the position
where the call *ends*, which is also the position CPython records for the ``CALL`` instruction. At run time a
primitive looks at its caller's frame, finds its own call by that position and reads the assignment target. Nothing
is rewritten: tracebacks, debuggers and closures see the user's code as written.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import sys
import textwrap
import types
from dataclasses import dataclass, field

from .errors import ModelDefinitionError, SourceLocation

#: Attribute or function names that count as primitive calls in the scan.
PRIMITIVES = frozenset({"latent", "observe", "param", "plate", "module", "deterministic"})


@dataclass(frozen=True)
class CallSite:
    """One primitive call found in the source."""

    kind: str
    target: str | None  # the assignment / ``with ... as`` target, when it is a plain name
    value_name: str | None  # for ``observe(d, x)``: the name of the value argument, when it is a plain name
    location: SourceLocation


class SourceIndex:
    """The primitive calls of one code object, keyed by where each call ends."""

    def __init__(self, code: types.CodeType):
        self.code = code
        self.filename = code.co_filename
        self.function = code.co_name
        n_args = code.co_argcount + code.co_kwonlyargcount
        self.arg_names = frozenset(code.co_varnames[:n_args])
        self.calls: dict[tuple[int, int], CallSite] | None = None
        self.error: str | None = None
        self._positions: list | None = None
        self._by_offset: dict[int, CallSite | None] = {}
        #: (offset, kind, explicit name) -> the ResolvedName of a call that does not read an argument
        self.resolved: dict[tuple, ResolvedName] = {}
        try:
            lines, first = inspect.getsourcelines(code)
        except (OSError, TypeError) as exc:
            self.error = f"the source of {code.co_name}() cannot be read ({exc})"
            return
        source = textwrap.dedent("".join(lines))
        indent = len(lines[0]) - len(lines[0].lstrip())
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:  # e.g. a lambda inside a larger expression
            self.error = f"the source of {code.co_name}() cannot be parsed ({exc.msg})"
            return
        self.calls = {}
        _Scanner(self, first - 1, indent).visit(tree)

    def location(self, lineno: int) -> SourceLocation:
        return SourceLocation(
            self.filename, lineno, self.function, linecache.getline(self.filename, lineno)
        )

    def lookup(self, frame: types.FrameType) -> CallSite | None:
        """The call being executed in ``frame`` (cached by bytecode offset)."""
        offset = frame.f_lasti
        try:
            return self._by_offset[offset]
        except KeyError:
            pass
        site = None
        if self.calls is not None:
            if self._positions is None:
                self._positions = list(self.code.co_positions())
            _, end_line, _, end_col = self._positions[offset // 2]
            if end_line is not None:
                site = self.calls.get((end_line, end_col))
        self._by_offset[offset] = site
        return site


def _base_name(node: ast.AST) -> str | None:
    """``x`` for ``x``, ``x[t]``, ``x[:, t]`` (an observation indexed out of a data argument)."""
    while isinstance(node, ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


class _Scanner(ast.NodeVisitor):
    def __init__(self, index: SourceIndex, line_offset: int, col_offset: int):
        self.index = index
        self.line_offset = line_offset
        self.col_offset = col_offset
        self.targets: dict[int, str] = {}  # id(call node) -> target name

    def _add(self, node: ast.Call, target: str | None) -> None:
        func = node.func
        kind = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if kind not in PRIMITIVES:
            return
        value_name = None
        # observe(d, x) and module(net) take their name from a plain-name argument when unassigned
        position = {"observe": 1, "module": 0}.get(kind)
        if position is not None and len(node.args) > position:
            value_name = _base_name(node.args[position])
        first = node.args[0] if node.args else None
        if kind == "plate" and first is not None and not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            # an unnamed plate is named by its size expression: `with lvm.plate(len(x)):` is "len(x)"
            value_name = ast.unparse(node.args[0])
        for kw in node.keywords:
            if kw.arg in ("obs", "value") and _base_name(kw.value) is not None:
                value_name = _base_name(kw.value)
        lineno = node.lineno + self.line_offset
        end_line = node.end_lineno + self.line_offset
        # dedent shifts every column; undo it (the first line of a method is indented too)
        end_col = node.end_col_offset + self.col_offset
        self.index.calls[(end_line, end_col)] = CallSite(
            kind, target, value_name, self.index.location(lineno)
        )

    def _target_of(self, value: ast.AST, target: str) -> None:
        if isinstance(value, ast.Call):
            self.targets[id(value)] = target

    def visit_Assign(self, node: ast.Assign) -> None:
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self._target_of(node.value, node.targets[0].id)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if isinstance(node.target, ast.Name) and node.value is not None:
            self._target_of(node.value, node.target.id)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self._target_of(node.value, node.target.id)
        self.generic_visit(node)

    def visit_withitem(self, node: ast.withitem) -> None:
        if isinstance(node.optional_vars, ast.Name):
            self._target_of(node.context_expr, node.optional_vars.id)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        self._add(node, self.targets.get(id(node)))
        self.generic_visit(node)


_INDEX_CACHE: dict[types.CodeType, SourceIndex] = {}
#: the same indexes by ``id(code)``: hashing a code object hashes its constants on every call, and the index holds
#: its code object, so the id of a cached one is never reused
_INDEX_BY_ID: dict[int, SourceIndex] = {}


def source_index(code: types.CodeType) -> SourceIndex:
    """The (cached) :class:`SourceIndex` of a code object."""
    index = _INDEX_BY_ID.get(id(code))
    if index is None:
        index = _INDEX_CACHE.get(code)
        if index is None:
            index = _INDEX_CACHE[code] = SourceIndex(code)
        _INDEX_BY_ID[id(code)] = index
    return index


@dataclass(frozen=True)
class ResolvedName:
    name: str
    location: SourceLocation
    call: CallSite | None
    #: for ``latent`` calls: the value of the model argument of the same name, when there is one
    frame_locals_value: object = None
    is_argument: bool = False
    #: the site records of this call by kind, kept by the primitives for a site that has the call's own name (a
    #: call's steady state is then a look-up here, not a new record per run)
    records: dict = field(default_factory=dict, compare=False, repr=False)


_MISSING = object()
#: calls with ``name=`` are kept up to this many per code object (a loop may build its names: ``name=f"x_{t}"``)
_EXPLICIT_KEPT = 256


def resolve(kind: str, explicit: str | None, depth: int = 2) -> ResolvedName:
    """Name the primitive call ``depth`` frames up; ``explicit`` (the ``name=`` argument) always wins.

    A call whose name does not read the caller's arguments resolves the same way every time it runs: the answer is
    kept per call (its bytecode offset, kind and ``explicit``) and returned as is (it is immutable)."""
    frame = sys._getframe(depth)
    code = frame.f_code
    index = _INDEX_BY_ID.get(id(code))  # source_index(code), without its call once the code is known
    if index is None:
        index = source_index(code)
    key = (frame.f_lasti, kind, explicit)
    try:
        return index.resolved[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable name=, refused below
        key = None
    resolved = _resolve(kind, explicit, frame, index)
    if key is not None and not resolved.is_argument and (explicit is None or len(index.resolved) < _EXPLICIT_KEPT):
        index.resolved[key] = resolved
    return resolved


def _resolve(kind: str, explicit: str | None, frame: types.FrameType, index: SourceIndex) -> ResolvedName:
    call = index.lookup(frame)
    location = call.location if call is not None else index.location(frame.f_lineno)
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit:
            raise ModelDefinitionError(
                f"name= must be a non-empty string, got {explicit!r}", location
            )
        name = explicit
    else:
        if index.calls is None:
            raise ModelDefinitionError(
                f"{index.error}, so the {kind}() call has no automatic name. Pass name='...' to every "
                "primitive, or define the model in a file.",
                location,
            )
        name = None
        if call is not None:
            name = call.target or call.value_name
        if name is None:
            hint = (
                "assign the result to a variable (x = lvm.observe(d, x)) or pass the value as a plain name"
                if kind == "observe"
                else f"assign the result to a variable (z = lvm.{kind}(...)) or pass name='...'"
            )
            raise ModelDefinitionError(f"this {kind}() call has no name: {hint}.", location)
    arg_value = _MISSING
    if kind == "latent" and call is not None and name in index.arg_names and explicit is None:
        arg_value = frame.f_locals.get(name, None)
    return ResolvedName(
        name=name,
        location=location,
        call=call,
        frame_locals_value=None if arg_value is _MISSING else arg_value,
        is_argument=arg_value is not _MISSING,
    )
