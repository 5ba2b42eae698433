import pytest

from engine.spec import WeightedPrompt
from farm.prompts import PromptError, parse_prompt, parse_prompt_schedule


def test_weight_is_the_last_colon_number_and_not_part_of_the_text():
    assert parse_prompt("a lighthouse:3") == WeightedPrompt("a lighthouse", 3.0)
    assert parse_prompt("ratio 16:9 poster: -0.5") == WeightedPrompt("ratio 16:9 poster", -0.5)
    assert parse_prompt("time: noon") == WeightedPrompt("time: noon", 1.0)
    assert parse_prompt("plain") == WeightedPrompt("plain", 1.0)


def test_schedule_switches_hard_at_the_key_frame_like_dd():
    schedule = parse_prompt_schedule({0: ["a:1"], "100": ["b:5"]})
    assert [p.text for p in schedule.at(0)] == ["a"]
    assert [p.text for p in schedule.at(99)] == ["a"]
    assert [p.text for p in schedule.at(100)] == ["b"]
    assert [p.text for p in schedule.at(5000)] == ["b"]


def test_crossfade_blends_normalised_weights_over_n_frames():
    schedule = parse_prompt_schedule({0: ["a:1", "c:3"], 10: ["b:2"]}, crossfade=3)
    assert schedule.at(9) == (WeightedPrompt("a", 1), WeightedPrompt("c", 3))
    mid = {p.text: p.weight for p in schedule.at(11)}  # 2/4 of the way
    assert mid == pytest.approx({"a": 0.25 * 0.5, "c": 0.75 * 0.5, "b": 0.5})
    assert sum(mid.values()) == pytest.approx(1.0)
    assert [p.text for p in schedule.at(13)] == ["b"]


def test_zero_weight_sum_is_refused_like_dd():
    with pytest.raises(PromptError, match="sum to 0"):
        parse_prompt_schedule({0: ["a:1", "b:-1"]})


def test_bad_frame_keys():
    with pytest.raises(PromptError, match="not a frame number"):
        parse_prompt_schedule({"soon": ["a"]})
    with pytest.raises(PromptError, match="negative"):
        parse_prompt_schedule({-1: ["a"]})
