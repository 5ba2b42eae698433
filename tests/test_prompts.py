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


def test_a_text_set_summing_to_zero_is_the_scenes_to_judge():
    """DD divides by the sum of a frame's text AND image weights together: text weights
    summing to 0 alone are fine when an image prompt adds to them (scene._check_prompt_weights
    refuses the frame whose total is 0)."""
    schedule = parse_prompt_schedule({0: ["a:1", "b:-1"]})
    assert [p.weight for p in schedule.at(0)] == [1.0, -1.0]


def test_bad_frame_keys():
    with pytest.raises(PromptError, match="not a frame number"):
        parse_prompt_schedule({"soon": ["a"]})
    with pytest.raises(PromptError, match="negative"):
        parse_prompt_schedule({-1: ["a"]})


def test_huge_weights_are_refused_naming_the_prompt_and_the_frame():
    # 1e308 + 1e308 overflows the sum DD divides by: every weight would become 0
    with pytest.raises(PromptError) as info:
        parse_prompt_schedule({0: ["a:1"], 5: ["a lighthouse:1e308", "a ship:1e308"]})
    assert str(info.value) == "frame 5: prompt 'a lighthouse:1e308' has the weight 1e+308, beyond the limit of ±1000000000"
    with pytest.raises(PromptError, match="frame 0: prompt 'a:-2e9' has the weight -2e"):
        parse_prompt_schedule(["a:-2e9"])
    assert parse_prompt("a:1e9") == WeightedPrompt("a", 1e9)  # the limit itself is allowed
    with pytest.raises(PromptError, match="frame 3: prompt ':2' has no text"):
        parse_prompt_schedule({3: [":2"]})


def test_a_repelling_prompt_repels_through_the_whole_crossfade():
    """DD divides the weights by the magnitude of their sum: "b:-1" alone is -1, so fading in
    b must give it negative weights all the way (it used to be +0.33, +0.67, then -1)."""
    schedule = parse_prompt_schedule({0: ["a:1"], 3: ["b:-1"]}, crossfade=2)
    weights = [{p.text: p.weight for p in schedule.at(frame)} for frame in range(7)]
    assert weights[:3] == [{"a": 1.0}] * 3
    assert weights[3] == pytest.approx({"a": 2 / 3, "b": -1 / 3})
    assert weights[4] == pytest.approx({"a": 1 / 3, "b": -2 / 3})
    assert weights[5:] == [{"b": -1.0}] * 2
    # fading out of a set whose weights sum to a negative number keeps its signs too
    schedule = parse_prompt_schedule({0: ["c:1", "d:-3"], 4: ["e:2"]}, crossfade=1)
    assert {p.text: p.weight for p in schedule.at(4)} == pytest.approx({"c": 0.25, "d": -0.75, "e": 0.5})


def test_prompts_longer_than_any_clip_reads_are_refused_with_a_short_message():
    """plan.json repeats each frame's prompts: a 500 KB prompt in a 400-frame scene made a
    200 MB plan.json. CLIP reads 77 tokens; the limits leave room for long image paths."""
    from farm.prompts import MAX_PROMPT_LENGTH, MAX_PROMPT_SET_LENGTH

    assert parse_prompt("a " * 1000 + ":2").weight == 2  # long, within the limit
    with pytest.raises(PromptError, match=rf"frame 3: prompt 'a a .*' is 500000 characters long, beyond the "
                                          rf"limit of {MAX_PROMPT_LENGTH}") as caught:
        parse_prompt_schedule({3: ["a " * 250_000]})
    assert len(str(caught.value)) < 200
    many = ["x" * 3000] * 4
    with pytest.raises(PromptError, match=rf"frame 0: its 4 prompts hold 12000 characters, beyond the limit of "
                                          rf"{MAX_PROMPT_SET_LENGTH}"):
        parse_prompt_schedule(many)
