import pytest

from farm.cutschedule import CutScheduleError, format_cut_schedule, parse_cut_schedule


def test_dd_defaults_have_1000_slots_with_the_switch_at_400():
    overview = parse_cut_schedule("[12]*400+[4]*600")
    assert len(overview) == 1000
    assert overview[0] == overview[399] == 12 and overview[400] == overview[999] == 4
    gray = parse_cut_schedule("[0.2]*400+[0]*600")
    assert gray[399] == pytest.approx(0.2) and gray[400] == 0


def test_lists_in_a_term_repeat_as_a_whole():
    values = parse_cut_schedule("[1, 2]*500")
    assert values[:4] == (1, 2, 1, 2) and len(values) == 1000


def test_numbers_and_numeric_strings_are_constants():
    assert parse_cut_schedule(1) == (1.0,) * 1000
    assert parse_cut_schedule("1") == (1.0,) * 1000


@pytest.mark.parametrize("text,needle", [
    ("[12]*400+[4]*500", "900 entries"),
    ("[12]*400+[4]*700", "more than 1000"),
    ("__import__('os')", "not of the form"),
    ("[12]*400+", "not of the form"),
    ("[a]*1000", "'a' is not a number"),
    ("[]*1000", "empty list"),
])
def test_bad_schedules_say_what_is_wrong(text, needle):
    with pytest.raises(CutScheduleError, match=needle):
        parse_cut_schedule(text)


def test_format_round_trips():
    text = "[12]*400+[4]*600"
    assert format_cut_schedule(parse_cut_schedule(text)) == text
    assert parse_cut_schedule(format_cut_schedule(parse_cut_schedule("[0.2]*400+[0]*600"))) == parse_cut_schedule("[0.2]*400+[0]*600")


def test_count_first_terms_read_as_python_reads_them():
    """DD evaluated the string as Python, where 400*[12] is [12]*400."""
    assert parse_cut_schedule("400*[12]+600 * [4]") == parse_cut_schedule("[12]*400+[4]*600")
    assert parse_cut_schedule("2*[1, 2]+[0]*996") == (1.0, 2.0, 1.0, 2.0) + (0.0,) * 996
