"""DD's cut schedules ("[12]*400+[4]*600") parsed without eval, to exactly 1000 values."""

from __future__ import annotations

import math
import re

from engine.spec import CUT_SLOTS


class CutScheduleError(ValueError):
    pass


_TERM = re.compile(r"\s*\[\s*([^\[\]]*?)\s*\]\s*(?:\*\s*(\d+)\s*)?")
_COUNT_FIRST_TERM = re.compile(r"\s*(\d+)\s*\*\s*\[\s*([^\[\]]*?)\s*\]\s*")  # "400*[12]": Python's list * int


def _shown(text: str) -> str:
    """A value as errors quote it: long ones cut short."""
    return text if len(text) <= 24 else f"{text[:20]}..."


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CutScheduleError(f"'{_shown(text)}' is not a number") from None
    if not math.isfinite(value):
        raise CutScheduleError(f"'{_shown(text)}' is not a finite number")
    return value


def parse_cut_schedule(value: object) -> tuple[float, ...]:
    """A number (constant), a list of numbers, or DD's "[a]*n+[b, c]*m" string -> 1000 values."""
    if isinstance(value, bool):
        raise CutScheduleError("expected a schedule string like \"[12]*400+[4]*600\" or a number, got a boolean")
    if isinstance(value, int) and value.bit_length() > 1024:  # beyond a float (and str() past 4300 digits)
        raise CutScheduleError(f"a {value.bit_length()}-bit integer is not a finite number")
    if isinstance(value, (int, float)):
        return (_number(str(value)),) * CUT_SLOTS
    if isinstance(value, list):
        values = [_number(str(v)) for v in value]
    elif isinstance(value, str):
        text = value.strip()
        try:
            return (_number(text),) * CUT_SLOTS
        except CutScheduleError:
            pass
        values = []
        for index, part in enumerate(text.split("+")):
            match = _TERM.fullmatch(part)
            if match:
                listed, count_text = match.group(1), match.group(2) or "1"
            elif (match := _COUNT_FIRST_TERM.fullmatch(part)):
                count_text, listed = match.group(1), match.group(2)
            else:
                raise CutScheduleError(
                    f"term {index + 1} '{part.strip()}' is not of the form [numbers]*count"
                )
            items = [_number(item) for item in listed.split(",") if item.strip()]
            if not items:
                raise CutScheduleError(f"term {index + 1} '{part.strip()}' has an empty list")
            if len(count_text) > 4:  # more than 1000 entries in any case (and int() of 4300+ digits fails)
                raise CutScheduleError(f"term {index + 1}: count {_shown(count_text)} is far more than {CUT_SLOTS}")
            count = int(count_text)
            if len(values) + len(items) * count > CUT_SLOTS:
                raise CutScheduleError(f"schedule has more than {CUT_SLOTS} entries")
            values.extend(items * count)
    else:
        raise CutScheduleError(f"expected a schedule string or number, got {type(value).__name__}")
    if len(values) != CUT_SLOTS:
        raise CutScheduleError(f"schedule has {len(values)} entries; it must have exactly {CUT_SLOTS}")
    return tuple(values)


def format_cut_schedule(values: tuple[float, ...]) -> str:
    """The shortest DD-style run-length string for a schedule (inverse of parsing)."""
    runs: list[list] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    def fmt(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    return "+".join(f"[{fmt(v)}]*{n}" for v, n in runs)
