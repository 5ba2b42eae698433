"""The safe expression evaluator: what it computes and what it refuses."""

import ast
import math
import pickle
import tracemalloc

import pytest

from animation.expressions import (
    CONSTANTS,
    FUNCTIONS,
    MAX_TEXT_LENGTH,
    Expression,
    ExpressionError,
    compile_expression,
    expression_variables,
)


@pytest.mark.parametrize(
    "text, t, fps, expected",
    [
        ("1", 0, 12, 1.0),
        ("1.05", 7, 12, 1.05),
        ("-2.5e-1", 0, 12, -0.25),
        ("+3", 0, 12, 3.0),
        ("1 + 2 * 3", 0, 12, 7.0),
        ("(1 + 2) * 3", 0, 12, 9.0),
        ("7 / 2", 0, 12, 3.5),
        ("7 // 2", 0, 12, 3.0),
        ("-7 % 3", 0, 12, 2.0),
        ("2 ** 10", 0, 12, 1024.0),
        ("2 ** -1", 0, 12, 0.5),
        ("-2 ** 2", 0, 12, -4.0),
        ("t", 17, 12, 17.0),
        ("s", 18, 12, 1.5),
        ("s", 18, 24, 0.75),
        ("t / 2 + s", 24, 12, 14.0),
        ("10*sin(2*pi*t/48)", 12, 12, 10.0),
        ("10*sin(2*pi*t/48)", 36, 12, -10.0),
        ("cos(tau * s)", 6, 12, -1.0),
        ("e", 0, 12, math.e),
        ("atan2(1, 1)", 0, 12, math.pi / 4),
        ("arctan2(1, -1)", 0, 12, 3 * math.pi / 4),
        ("log(e ** 3)", 0, 12, 3.0),
        ("log(8, 2)", 0, 12, 3.0),
        ("log10(1000) + log2(8)", 0, 12, 6.0),
        ("sqrt(t)", 16, 12, 4.0),
        ("abs(-t)", 3, 12, 3.0),
        ("min(t, 5, 9)", 7, 12, 5.0),
        ("max(t, 5)", 7, 12, 7.0),
        ("floor(-1.5) + ceil(1.2)", 0, 12, 0.0),
        ("round(2.5) + round(3.5)", 0, 12, 6.0),  # half to even
        ("pow(t, 0.5)", 9, 12, 3.0),
        ("clamp(t, 2, 4)", 0, 12, 2.0),
        ("clamp(t, 2, 4)", 3, 12, 3.0),
        ("clamp(t, 2, 4)", 9, 12, 4.0),
        ("sign(-t) + trunc(-2.7)", 3, 12, -3.0),
        ("t % 10", 23, 12, 3.0),
        ("1.0025+0.002*sin(1.25*3.14*t/30)", 0, 12, 1.0025),
    ],
)
def test_evaluates_arithmetic_and_functions(text, t, fps, expected):
    assert compile_expression(text)(t, fps) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_every_listed_function_and_constant_is_callable():
    sample_args = {1: (0.5,), 2: (0.5, 0.25), 3: (0.5, 0.0, 1.0)}
    for name, (_, least, _) in FUNCTIONS.items():
        args = sample_args[least] if name != "acosh" and name != "arccosh" else (1.5,)
        text = f"{name}({', '.join(map(str, args))})"
        assert math.isfinite(compile_expression(text)(0, 12)), text
    for name, value in CONSTANTS.items():
        assert compile_expression(name)(0, 12) == value


def test_variables_and_is_constant():
    assert compile_expression("2*pi + sin(1)").is_constant
    assert compile_expression("2*pi + sin(1)").variables == frozenset()
    assert compile_expression("t + 1").variables == frozenset({"t"})
    assert compile_expression("sin(s) * t").variables == frozenset({"t", "s"})
    assert not compile_expression("s").is_constant
    assert expression_variables("0.5 * s") == frozenset({"s"})


def test_expression_is_frozen_and_keeps_stripped_text():
    expression = compile_expression("  t * 2 ")
    assert expression.text == "t * 2"
    with pytest.raises(AttributeError):
        expression.text = "t * 3"  # type: ignore[misc]
    assert expression == compile_expression("t * 2")


def test_pickles_by_recompiling():
    expression = compile_expression("3 + sin(t) * s")
    copy = pickle.loads(pickle.dumps(expression))
    assert isinstance(copy, Expression)
    assert copy == expression
    assert copy(5, 10) == expression(5, 10)


def test_multiline_text_and_leading_space():
    assert compile_expression("\n  1 +\n  2 * t\n")(3, 12) == 7.0


@pytest.mark.parametrize(
    "text, words",
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("().__class__", "attribute access"),
        ("t.real", "attribute access"),
        ("math.sin(t)", "attribute access"),
        ("[1][0]", "subscripts"),
        ("'a'", "strings"),
        ("b'a'", "strings"),
        ("f'{t}'", "strings"),
        ("lambda: 1", "lambda"),
        ("[x for x in (1, 2)]", "comprehensions"),
        ("sum(x for x in (1, 2))", "unknown function 'sum'"),
        ("open('x')", "unknown function 'open'"),
        ("eval('1')", "unknown function 'eval'"),
        ("__builtins__", "unknown name '__builtins__'"),
        ("x + 1", "unknown name 'x'"),
        ("sin", "'sin' is a function"),
        ("t(2)", "'t' is not a function"),
        ("2(t + 1)", "a number cannot be called"),
        ("sin(x=1)", "keyword arguments"),
        ("max(*(1, 2))", "starred arguments"),
        ("sin(1, 2)", "sin() takes 1 argument, got 2"),
        ("clamp(t, 1)", "clamp() takes 3 arguments, got 2"),
        ("max()", "max() takes 1 or more arguments, got 0"),
        ("t < 1", "comparisons"),
        ("t and 1", "'and'/'or'"),
        ("1 if t else 2", "conditional expressions"),
        ("(t := 3)", "assignments"),
        ("(1, 2)", "tuples"),
        ("{1: 2}", "dicts"),
        ("~t", "operator '~'"),
        ("not t", "operator 'not'"),
        ("t << 2", "operator '<<'"),
        ("t @ t", "operator '@'"),
        ("1j", "complex numbers"),
        ("True", "the constant True"),
        ("None", "the constant None"),
        ("1e999", "number literal is too large"),
        ("9" * 400, "number literal is too large"),
        ("1 +", "invalid syntax"),
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("t\x00", "null bytes"),
        ("1_000 * t", "numbers are written without '_'"),  # Python's literal; DD and YAML have none
        ("t * 0.5_0", "numbers are written without '_'"),
    ],
)
def test_refuses_with_a_message_naming_the_problem(text, words):
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text)
    assert words in str(caught.value)


def test_refusal_reports_position():
    with pytest.raises(ExpressionError) as caught:
        compile_expression("  1 + foo")
    assert caught.value.position == 6
    assert "at character 7" in str(caught.value)
    assert caught.value.reason == "unknown name 'foo' (allowed: t, s, pi, e, tau)"


def test_huge_power_is_refused_without_building_a_huge_integer():
    tracemalloc.start()
    try:
        for text in ("9**9**9", "9**9**9**9", "2**100000", "pow(10, 400)"):
            with pytest.raises(ExpressionError, match="number too large"):
                compile_expression(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # 9**9**9 as an integer would take about 150 MB


def test_constant_errors_are_found_at_compile_time():
    for text, words in [("1/0", "division by zero"), ("sqrt(-1)", "math domain"),
                        ("(-8) ** (1/3)", "math domain"), ("exp(1000)", "number too large"),
                        ("clamp(1, 3, 2)", "lo is greater than hi")]:
        with pytest.raises(ExpressionError, match=words.replace("(", r"\(")):
            compile_expression(text)


@pytest.mark.parametrize(
    "text, t, words",
    [
        ("1 / (t - 12)", 12, "at frame 12: division by zero"),
        ("log(t - 5)", 3, "at frame 3: math domain"),
        ("t ** 9 ** 9", 2, "at frame 2: number too large"),
        ("exp(t)", 1000, "at frame 1000: number too large"),
        ("1e308 * t", 10, "at frame 10: result is not a finite number"),
        ("1e308 * t - 1e308 * t", 10, "at frame 10: result is not a finite number"),
    ],
)
def test_evaluation_errors_mention_the_frame(text, t, words):
    expression = compile_expression(text)
    with pytest.raises(ExpressionError) as caught:
        expression(t, 12)
    assert words in str(caught.value)
    assert text in str(caught.value)


def test_seconds_need_positive_fps():
    with pytest.raises(ExpressionError, match="fps must be positive"):
        compile_expression("s")(1, 0)
    assert compile_expression("t")(1, 0) == 1.0  # fps unused without s


def test_size_limits():
    with pytest.raises(ExpressionError, match=f"at most {MAX_TEXT_LENGTH}"):
        compile_expression("1" + " " * MAX_TEXT_LENGTH)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression("-" * 150 + "1")
    with pytest.raises(ExpressionError, match="nested too deeply|too large"):
        compile_expression("+".join(["t"] * 300))
    assert compile_expression("+".join(["t"] * 40))(2, 12) == 80.0


def test_evaluation_reuses_the_compiled_expression(monkeypatch):
    expression = compile_expression("1.0025 + 0.002*sin(1.25*pi*t/30) + clamp(s, 0, 2) * abs(cos(t))")

    def parse_again(*args, **kwargs):
        raise AssertionError("an evaluation parsed the text again")

    monkeypatch.setattr(ast, "parse", parse_again)
    values = [expression(t, 12.0) for t in range(10_000)]
    assert values[30] == pytest.approx(1.0025 + 0.002 * math.sin(1.25 * math.pi) + 2 * abs(math.cos(30)))
