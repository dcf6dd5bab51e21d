"""A safe integer calculator for tool calls: Python's ``ast`` parses the expression, a walk over an allow list
of nodes computes it. Nothing is ever handed to ``eval``.

Allowed: integer literals written in decimal digits, ``+ - * / // %`` (binary), unary ``-``/``+`` and
parentheses. ``/`` is exact division: a remainder is an error, never a float. Every intermediate value is
bounded (``max_digits``), as is the expression's length, so no call can run long or fill the memory.
"""

from __future__ import annotations

import ast
import re

__all__ = ["CalcError", "evaluate"]

ALLOWED_CHARACTERS = re.compile(r"[0-9+\-*/%() ]*")
_BINARY = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)


class CalcError(ValueError):
    """An expression the calculator refuses; its message is short enough to show the model."""


def evaluate(expression: str, max_chars: int = 64, max_digits: int = 32) -> int:
    """The integer value of ``expression``; :class:`CalcError` for anything else."""
    text = expression.strip()
    if not text:
        raise CalcError("empty")
    if len(text) > max_chars:
        raise CalcError("too long")
    if not ALLOWED_CHARACTERS.fullmatch(text):  # no names, dots, underscores, 0x..., strings
        raise CalcError("bad character")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalcError("bad expression") from None
    return _value(tree.body, 10 ** max_digits)


def _value(node: ast.AST, bound: int) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return _bounded(node.value, bound)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand, bound)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINARY):
        left, right = _value(node.left, bound), _value(node.right, bound)
        return _bounded(_apply(node.op, left, right), bound)
    raise CalcError("bad expression")


def _apply(op: ast.operator, left: int, right: int) -> int:
    if isinstance(op, ast.Add):
        return left + right
    if isinstance(op, ast.Sub):
        return left - right
    if isinstance(op, ast.Mult):
        return left * right
    if right == 0:
        raise CalcError("division by zero")
    if isinstance(op, ast.FloorDiv):
        return left // right
    if isinstance(op, ast.Mod):
        return left % right
    quotient, remainder = divmod(left, right)
    if remainder:
        raise CalcError("not whole")
    return quotient


def _bounded(value: int, bound: int) -> int:
    if abs(value) >= bound:
        raise CalcError("too big")
    return value
