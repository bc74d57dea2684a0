"""Safe expressions for `where` filters and `computed` columns, parsed once and run by simpleeval
(never eval); common forms run as equivalent compiled closures, with simpleeval's results and errors."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from typing import Any

from simpleeval import (
    DEFAULT_OPERATORS,
    DISALLOW_FUNCTIONS,
    MAX_STRING_LENGTH,
    EvalWithCompoundTypes,
    SimpleEval,
)

#: Functions an expression may call. Pure, bounded, no attribute access or I/O.
FUNCTIONS: dict[str, Any] = {
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "len": len,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "lower": lambda s: s.lower(),
    "upper": lambda s: s.upper(),
    "sqrt": math.sqrt,
    "log": math.log,
    "coalesce": lambda *values: next((v for v in values if v is not None), None),
}


class ExpressionError(ValueError):
    """An expression that does not parse or names an unknown column (a spec error)."""


Node = Callable[[Mapping[str, Any]], Any]
_PLAIN = frozenset({int, float, str, bool, type(None)})  # values simpleeval passes through unchecked


class _Unsupported(Exception):
    """A node the closures do not handle: the expression is left to simpleeval."""


class _Fallback(Exception):
    """A name that is not a plain value of the row: this evaluation is left to simpleeval."""


def _compile(node: ast.AST, operators: Mapping[type, Any], functions: Mapping[str, Any]) -> Node:
    """A closure computing ``node`` as simpleeval's handler for it does; _Unsupported otherwise."""

    def sub(child: ast.AST) -> Node:
        return _compile(child, operators, functions)

    if isinstance(node, ast.Expr):
        return sub(node.value)
    if isinstance(node, ast.Constant):
        value = node.value
        if type(value) not in _PLAIN or (isinstance(value, str) and len(value) > MAX_STRING_LENGTH):
            raise _Unsupported
        return lambda row: value
    if isinstance(node, ast.Name):
        name = node.id

        def load(row: Mapping[str, Any]) -> Any:
            try:
                value = row[name]
            except (TypeError, KeyError):
                raise _Fallback from None
            if type(value) not in _PLAIN:
                raise _Fallback
            return value

        return load
    if isinstance(node, ast.UnaryOp | ast.BinOp | ast.Compare):
        used = node.ops if isinstance(node, ast.Compare) else [node.op]
        if any(type(op) not in operators for op in used):
            raise _Unsupported  # simpleeval raises OperatorNotDefined (or KeyError) for those
    if isinstance(node, ast.UnaryOp):
        unary, operand = operators[type(node.op)], sub(node.operand)
        return lambda row: unary(operand(row))
    if isinstance(node, ast.BinOp):
        binary, left, right = operators[type(node.op)], sub(node.left), sub(node.right)
        return lambda row: binary(left(row), right(row))
    if isinstance(node, ast.BoolOp):
        values = tuple(sub(v) for v in node.values)
        is_and = isinstance(node.op, ast.And)

        def boolop(row: Mapping[str, Any]) -> Any:
            result: Any = False
            for value in values:
                result = value(row)
                if not result if is_and else result:
                    break
            return result

        return boolop
    if isinstance(node, ast.Compare):
        first = sub(node.left)
        steps = tuple((operators[type(op)], sub(c)) for op, c in zip(node.ops, node.comparators, strict=True))
        if len(steps) == 1:
            compare, other = steps[0]
            return lambda row: compare(first(row), other(row))

        def chain(row: Mapping[str, Any]) -> Any:
            right = first(row)
            result: Any = True
            for compare, other in steps:
                if not result:
                    break
                left, right = right, other(row)
                result = compare(left, right)
            return result

        return chain
    if isinstance(node, ast.IfExp):
        test, body, orelse = sub(node.test), sub(node.body), sub(node.orelse)
        return lambda row: body(row) if test(row) else orelse(row)
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.keywords or node.func.id not in functions:
            raise _Unsupported
        func = functions[node.func.id]
        if func in DISALLOW_FUNCTIONS or any(isinstance(a, ast.Starred) for a in node.args):
            raise _Unsupported
        args = tuple(sub(a) for a in node.args)
        return lambda row: func(*[arg(row) for arg in args])
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        if any(isinstance(e, ast.Starred) for e in node.elts):
            raise _Unsupported
        elts = tuple(sub(e) for e in node.elts)
        kind = {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)]
        return lambda row: kind(elt(row) for elt in elts)
    raise _Unsupported


class Expression:
    """A parsed expression; :meth:`evaluate` runs it against one row of named values."""

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self._tree = SimpleEval.parse(source)
        except SyntaxError as exc:
            raise ExpressionError(f"cannot parse {source!r}: {exc.msg}") from None
        called = {
            node.func.id
            for node in ast.walk(self._tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        unknown_calls = called - FUNCTIONS.keys()
        if unknown_calls:
            allowed = ", ".join(FUNCTIONS)
            raise ExpressionError(
                f"unknown function {sorted(unknown_calls)[0]!r} in {source!r} (allowed: {allowed})"
            )
        self.names = frozenset(
            node.id for node in ast.walk(self._tree) if isinstance(node, ast.Name) and node.id not in called
        )
        # Compound types: `status in ('a', 'b')` and list literals work; still no attributes or imports.
        self._evaluator = EvalWithCompoundTypes(
            operators=dict(DEFAULT_OPERATORS), functions=FUNCTIONS, names={}
        )
        try:
            self._fast: Node | None = _compile(
                self._tree, self._evaluator.operators, self._evaluator.functions
            )
        except _Unsupported:
            self._fast = None

    def check_names(self, available: Mapping[str, Any] | set[str] | frozenset[str]) -> None:
        """ExpressionError naming the first unknown column."""
        unknown = sorted(self.names - set(available))
        if unknown:
            raise ExpressionError(f"unknown name {unknown[0]!r} in {self.source!r}")

    def evaluate(self, row: Mapping[str, Any]) -> Any:
        """The expression's value for ``row``; any failure raises (the caller dead-letters the event)."""
        if self._fast is not None:
            try:
                return self._fast(row)
            except _Fallback:
                pass  # the functions are pure: evaluating again from the start changes nothing
        self._evaluator.names = row
        return self._evaluator.eval(self.source, previously_parsed=self._tree)
