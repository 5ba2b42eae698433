"""Safe numeric expressions in keyframe values, e.g. ``10*sin(2*pi*t/48)``.

The text is parsed with :mod:`ast` and only a whitelist is compiled (never eval/exec):
number literals, ``+ - * / // % **``, unary ``+``/``-``, parentheses, the variables
``t`` (frame index) and ``s`` (seconds, ``t / fps``), the constants in :data:`CONSTANTS`
and calls of the functions in :data:`FUNCTIONS` with positional arguments. All
arithmetic is in floats (so ``9**9**9`` overflows at once instead of building a huge
integer) and every result must be finite.

The whitelist is compiled once into nested closures; parts without ``t``/``s`` are folded
to numbers at compile time, so ``compile_expression("9**9**9")`` already fails.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Callable

MAX_TEXT_LENGTH = 1000
MAX_DEPTH = 100
MAX_NODES = 500

VARIABLES = ("t", "s")
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _clamp(x: float, lo: float, hi: float) -> float:
    if lo > hi:
        raise ValueError("clamp: lo is greater than hi")
    return min(max(x, lo), hi)


def _log(x: float, base: float | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _sign(x: float) -> float:
    return float((x > 0) - (x < 0))


# name -> (function, minimum arguments, maximum arguments or None for any number).
# The arc*/a* pairs accept both Python's and numexpr's (Deforum's) spelling.
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "atan2": (math.atan2, 2, 2),
    "arcsin": (math.asin, 1, 1),
    "arccos": (math.acos, 1, 1),
    "arctan": (math.atan, 1, 1),
    "arctan2": (math.atan2, 2, 2),
    "sinh": (math.sinh, 1, 1),
    "cosh": (math.cosh, 1, 1),
    "tanh": (math.tanh, 1, 1),
    "asinh": (math.asinh, 1, 1),
    "acosh": (math.acosh, 1, 1),
    "atanh": (math.atanh, 1, 1),
    "arcsinh": (math.asinh, 1, 1),
    "arccosh": (math.acosh, 1, 1),
    "arctanh": (math.atanh, 1, 1),
    "exp": (math.exp, 1, 1),
    "expm1": (math.expm1, 1, 1),
    "log": (_log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "log1p": (math.log1p, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "hypot": (math.hypot, 2, 2),
    "abs": (lambda x: abs(x), 1, 1),
    "sign": (_sign, 1, 1),
    "min": (lambda *xs: min(xs), 1, None),
    "max": (lambda *xs: max(xs), 1, None),
    "floor": (lambda x: float(math.floor(x)), 1, 1),
    "ceil": (lambda x: float(math.ceil(x)), 1, 1),
    "trunc": (lambda x: float(math.trunc(x)), 1, 1),
    "round": (lambda x: float(round(x)), 1, 1),  # half to even, like Python and numpy
    "fmod": (math.fmod, 2, 2),
    "pow": (math.pow, 2, 2),
    "clamp": (_clamp, 3, 3),
    "degrees": (math.degrees, 1, 1),
    "radians": (math.radians, 1, 1),
}

_BINARY_OPERATORS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: math.pow,  # float power: O(1), raises on overflow and on (-8)**(1/3)
}

_REFUSED: dict[type, str] = {
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "subscripts are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.Compare: "comparisons are not allowed",
    ast.BoolOp: "'and'/'or' are not allowed",
    ast.IfExp: "conditional expressions are not allowed",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Set: "sets are not allowed",
    ast.JoinedStr: "strings are not allowed",
    ast.NamedExpr: "assignments are not allowed",
    ast.Starred: "starred arguments are not allowed",
    ast.Slice: "slices are not allowed",
}

_OPERATOR_SYMBOLS: dict[type, str] = {
    ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
    ast.LShift: "<<", ast.RShift: ">>", ast.Invert: "~", ast.Not: "not",
}

_ARITHMETIC_ERRORS = (ArithmeticError, ValueError)

# A compiled node is either a folded number or a function of (t, s).
_Node = float | Callable[[float, float], float]


class ExpressionError(ValueError):
    """An expression was refused or could not be evaluated.

    ``reason`` is the message without a position; ``position`` is the 0-based character
    offset in the expression text where the problem is, or None.
    """

    def __init__(self, reason: str, position: int | None = None):
        where = f" (at character {position + 1})" if position is not None else ""
        super().__init__(reason + where)
        self.reason = reason
        self.position = position


@dataclass(frozen=True)
class Expression:
    """A compiled expression; call it with the frame index and fps."""

    text: str
    variables: frozenset[str]
    _evaluate: Callable[[float, float], float] = field(compare=False, repr=False)

    @property
    def is_constant(self) -> bool:
        """True when the value uses neither ``t`` nor ``s``."""
        return not self.variables

    def __call__(self, t: float, fps: float = 12.0) -> float:
        """Value at frame ``t``; ``fps`` converts frames to seconds for ``s``."""
        t = float(t)
        if "s" in self.variables and not fps > 0:
            raise ExpressionError(f"fps must be positive to evaluate 's', got {fps!r}")
        try:
            value = self._evaluate(t, t / fps if "s" in self.variables else 0.0)
        except _ARITHMETIC_ERRORS as error:
            raise ExpressionError(f"{self.text!r} at frame {t:g}: {_describe(error)}") from None
        if not math.isfinite(value):
            raise ExpressionError(f"{self.text!r} at frame {t:g}: result is not a finite number ({value})")
        return value

    def __reduce__(self):
        # Closures do not pickle; recompile from the text (Ray ships schedules around).
        return (compile_expression, (self.text,))


def compile_expression(text: str) -> Expression:
    """Parse and check ``text``, returning a callable :class:`Expression`."""
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be text, got {type(text).__name__}")
    if len(text) > MAX_TEXT_LENGTH:
        raise ExpressionError(f"expression is {len(text)} characters long; at most {MAX_TEXT_LENGTH} are allowed")
    stripped = text.strip()
    if not stripped:
        raise ExpressionError("empty expression")
    lead = len(text) - len(text.lstrip())
    # Newlines and tabs become spaces so that multi-line YAML values parse; offsets stay put.
    source = stripped.translate({ord("\n"): " ", ord("\r"): " ", ord("\t"): " "})
    if (grouped := re.search(r"[0-9.]_[0-9]", source)) is not None:  # Python reads 1_000; DD and YAML do not
        raise ExpressionError("numbers are written without '_'", lead + grouped.start() + 1)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as error:
        position = lead + (error.offset - 1 if error.offset else 0)
        detail = "" if error.msg == "invalid syntax" else f" ({error.msg})"
        raise ExpressionError("invalid syntax" + detail, position) from None
    except (ValueError, RecursionError, MemoryError) as error:
        raise ExpressionError(f"cannot parse expression: {error}") from None
    _check_size(tree)
    compiler = _Compiler(source, lead)
    node = compiler.compile(tree.body)
    if callable(node):
        evaluate = node
    else:
        value = node
        evaluate = lambda t, s: value  # noqa: E731
    return Expression(stripped, frozenset(compiler.variables), evaluate)


def expression_variables(text: str) -> frozenset[str]:
    """The variables (``t``, ``s``) that ``text`` uses."""
    return compile_expression(text).variables


def _check_size(tree: ast.AST) -> None:
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ExpressionError(f"expression is too large (more than {MAX_NODES} syntax nodes)")
        if depth > MAX_DEPTH:
            raise ExpressionError(f"expression is nested too deeply (more than {MAX_DEPTH} levels)")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _describe(error: Exception) -> str:
    if isinstance(error, ZeroDivisionError):
        return "division by zero"
    if isinstance(error, OverflowError):
        return "number too large"
    message = str(error)
    return "math domain error (e.g. sqrt or log of a negative number)" if message == "math domain error" else message


class _Compiler:
    """Turns a checked AST into a folded number or a closure of (t, s)."""

    def __init__(self, source: str, lead: int):
        self.source = source
        self.lead = lead
        self.variables: set[str] = set()

    def position(self, node: ast.AST) -> int:
        # ast offsets count UTF-8 bytes; convert to characters of the original text.
        offset = getattr(node, "col_offset", 0)
        return self.lead + len(self.source.encode()[:offset].decode(errors="ignore"))

    def refuse(self, node: ast.AST, reason: str) -> ExpressionError:
        return ExpressionError(reason, self.position(node))

    def compile(self, node: ast.AST) -> _Node:
        method = getattr(self, "compile_" + type(node).__name__, None)
        if method is not None:
            return method(node)
        if type(node) in _REFUSED:
            raise self.refuse(node, _REFUSED[type(node)])
        raise self.refuse(node, f"{type(node).__name__} is not allowed in an expression")

    def compile_Constant(self, node: ast.Constant) -> _Node:
        value = node.value
        if isinstance(value, (str, bytes)):
            raise self.refuse(node, "strings are not allowed")
        if isinstance(value, complex):
            raise self.refuse(node, "complex numbers are not allowed")
        if type(value) not in (int, float):  # bool, None, Ellipsis
            raise self.refuse(node, f"the constant {value!r} is not allowed")
        try:
            number = float(value)
        except OverflowError:
            raise self.refuse(node, "number literal is too large") from None
        if not math.isfinite(number):
            raise self.refuse(node, "number literal is too large")
        return number

    def compile_Name(self, node: ast.Name) -> _Node:
        name = node.id
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name == "t":
            self.variables.add("t")
            return lambda t, s: t
        if name == "s":
            self.variables.add("s")
            return lambda t, s: s
        if name in FUNCTIONS:
            raise self.refuse(node, f"'{name}' is a function; call it like {name}(x)")
        raise self.refuse(node, f"unknown name '{name}' (allowed: t, s, {', '.join(CONSTANTS)})")

    def compile_UnaryOp(self, node: ast.UnaryOp) -> _Node:
        if isinstance(node.op, ast.UAdd):
            return self.compile(node.operand)
        if not isinstance(node.op, ast.USub):
            raise self.refuse(node, f"operator '{_OPERATOR_SYMBOLS.get(type(node.op), '?')}' is not allowed")
        operand = self.compile(node.operand)
        if not callable(operand):
            return -operand
        return lambda t, s: -operand(t, s)

    def compile_BinOp(self, node: ast.BinOp) -> _Node:
        op = _BINARY_OPERATORS.get(type(node.op))
        if op is None:
            raise self.refuse(node, f"operator '{_OPERATOR_SYMBOLS.get(type(node.op), '?')}' is not allowed")
        left, right = self.compile(node.left), self.compile(node.right)
        if not callable(left) and not callable(right):
            return self.fold(node, op, left, right)
        if not callable(left):
            return lambda t, s: op(left, right(t, s))
        if not callable(right):
            return lambda t, s: op(left(t, s), right)
        return lambda t, s: op(left(t, s), right(t, s))

    def compile_Call(self, node: ast.Call) -> _Node:
        if not isinstance(node.func, ast.Name):
            if isinstance(node.func, ast.Attribute):
                raise self.refuse(node.func, "attribute access is not allowed")
            if isinstance(node.func, ast.Constant):
                raise self.refuse(node, "a number cannot be called (missing '*' before '('?)")
            raise self.refuse(node, "only the listed functions can be called, by name")
        name = node.func.id
        if name not in FUNCTIONS:
            if name in VARIABLES or name in CONSTANTS:
                raise self.refuse(node, f"'{name}' is not a function")
            raise self.refuse(node, f"unknown function '{name}'")
        if node.keywords:
            raise self.refuse(node, f"keyword arguments are not allowed (in {name}())")
        function, least, most = FUNCTIONS[name]
        count = len(node.args)
        if count < least or (most is not None and count > most):
            wanted = f"{least}" if least == most else f"{least} or more" if most is None else f"{least} to {most}"
            raise self.refuse(node, f"{name}() takes {wanted} argument{'s' if wanted != '1' else ''}, got {count}")
        args = [self.compile(arg) for arg in node.args]
        if not any(callable(arg) for arg in args):
            return self.fold(node, function, *args)
        parts = [arg if callable(arg) else (lambda value: lambda t, s: value)(arg) for arg in args]
        if len(parts) == 1:
            (only,) = parts
            return lambda t, s: function(only(t, s))
        if len(parts) == 2:
            first, second = parts
            return lambda t, s: function(first(t, s), second(t, s))
        return lambda t, s: function(*[part(t, s) for part in parts])

    def fold(self, node: ast.AST, function: Callable[..., float], *args: float) -> float:
        try:
            value = function(*args)
        except _ARITHMETIC_ERRORS as error:
            raise self.refuse(node, _describe(error)) from None
        if not math.isfinite(value):
            raise self.refuse(node, f"result is not a finite number ({value})")
        return value
