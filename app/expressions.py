"""Safe expressions for `where` filters and `computed` columns, through simpleeval (never eval).

An expression is parsed once, when the spec loads; its names are checked against the columns it may
use, so a typo fails at start naming the field. Evaluation only walks the parsed tree.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from typing import Any

from simpleeval import DEFAULT_OPERATORS, EvalWithCompoundTypes, SimpleEval

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

    def check_names(self, available: Mapping[str, Any] | set[str] | frozenset[str]) -> None:
        """ExpressionError naming the first unknown column."""
        unknown = sorted(self.names - set(available))
        if unknown:
            raise ExpressionError(f"unknown name {unknown[0]!r} in {self.source!r}")

    def evaluate(self, row: Mapping[str, Any]) -> Any:
        """The expression's value for ``row``; any failure raises (the caller dead-letters the event)."""
        self._evaluator.names = row
        return self._evaluator.eval(self.source, previously_parsed=self._tree)
