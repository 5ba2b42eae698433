import math

import pytest
import yaml

import farm.yamlio
from farm.scene import SceneInvalid, parse_scene
from farm.yamlio import YamlError, load_yaml
from tests.conftest import TINY_SCENE


def problems(text: str) -> list[str]:
    with pytest.raises(SceneInvalid) as info:
        parse_scene(text, source="s.yaml")
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("text", [
    "10:5",      # a keyframe without its parentheses: YAML 1.1 made it the sexagesimal 605
    "1:30",      # 90
    "-1:30",     # -90
    "1:30.5",    # sexagesimal float 90.5
    "1_000",     # 1000
    "1_000.5",   # 1000.5
    "0b101",     # 5
    "-0x1F",     # YAML 1.2 hex has no sign
    "0x",
    "1.2.3",
    "+",
    ".",
])
def test_yaml_1_1_number_forms_stay_strings(text):
    assert load_yaml(f"a: {text}\n").data == {"a": text}


@pytest.mark.parametrize("text, value", [
    ("017", 17),          # decimal, not YAML 1.1's octal 15
    ("-017", -17),
    ("+5", 5),
    ("0", 0),
    ("0x1F", 31),
    ("0o17", 15),
    ("1.5", 1.5),
    ("1.", 1.0),
    (".5", 0.5),
    ("-.5e-3", -0.0005),
    ("1e5", 100000.0),    # YAML 1.1 wanted a dot and a signed exponent: "1e5" was a string
    ("2.5E+2", 250.0),
])
def test_numbers_are_read_as_yaml_1_2_reads_them(text, value):
    (read,) = load_yaml(f"a: {text}\n").data.values()
    assert read == value and type(read) is type(value)


def test_infinities_nan_booleans_and_nulls_are_read_as_before():
    data = load_yaml("a: [.inf, -.inf, +.inf, .Inf, .nan, .NaN, yes, no, on, off, True, y, n, ~, null]\n").data["a"]
    assert data[:4] == [math.inf, -math.inf, math.inf, math.inf]
    assert math.isnan(data[4]) and math.isnan(data[5])
    assert data[6:] == [True, False, True, False, True, "y", "n", None, None]
    # booleans, nulls and dates as PyYAML's SafeLoader reads them
    same = "b: [yes, No, ON, off, TRUE, false, y, n, ~, null, '', 2001-12-14]\n"
    assert load_yaml(same).data == yaml.safe_load(same)


def test_mapping_keys_are_read_the_same_way():
    document = load_yaml("1:30: x\n017: y\n")
    assert document.data == {"1:30": "x", 17: "y"}
    assert document.lines == {("1:30",): 1, (17,): 2}


def test_pyyamls_safe_loader_is_left_as_it_was():
    load_yaml("a: 1\n")
    assert yaml.safe_load("a: 10:5\nb: 017\n") == {"a": 605, "b": 15}


def test_explicit_number_tags_follow_yaml_1_2_too():
    assert load_yaml("a: !!int 017\nb: !!float 5\nc: !!int 0x10\n").data == {"a": 17, "b": 5.0, "c": 16}
    with pytest.raises(YamlError, match="'1:30' is not an integer") as info:
        load_yaml("a: 1\nb: !!int 1:30\n")
    assert info.value.line == 2
    with pytest.raises(YamlError, match="'1_0.5' is not a number"):
        load_yaml("b: !!float 1_0.5\n")


def test_a_keyframe_without_parentheses_is_a_bad_keyframe_not_a_constant():
    (line,) = problems(TINY_SCENE + "animation_mode: 2D\nmax_frames: 3\nangle: 10:5\n")
    assert line.startswith("s.yaml:11: angle: bad keyframe string") and "'('" in line


def test_sexagesimal_and_binary_seeds_are_refused_and_leading_zeros_are_decimal():
    (line,) = problems(TINY_SCENE.replace("seed: 5", "seed: 1:30"))
    assert line == "s.yaml:5: seed: expected a whole number, got '1:30'"
    (line,) = problems(TINY_SCENE.replace("seed: 5", "seed: 0b101"))
    assert line == "s.yaml:5: seed: expected a whole number, got '0b101'"
    assert parse_scene(TINY_SCENE.replace("seed: 5", "seed: 017"))["seed"] == 17


def test_a_sexagesimal_prompt_frame_key_is_not_frame_90():
    (line,) = problems(TINY_SCENE.replace('text_prompts: {0: ["a red apple:2", "blue:1"]}',
                                          'text_prompts:\n  0: ["a"]\n  1:30: ["b"]'))
    assert "text_prompts: frame key '1:30' is not a frame number" in line


def test_a_big_plain_document_is_refused_as_big_not_as_aliases(monkeypatch):
    monkeypatch.setattr(farm.yamlio, "MAX_EXPANDED_NODES", 1000)
    load_yaml("[" + ", ".join(["1"] * 999) + "]")  # 999 values and the list itself
    with pytest.raises(YamlError) as info:
        load_yaml("[" + ", ".join(["1"] * 1000) + "]")
    assert str(info.value) == "document holds more than 1000 values (a scene needs far fewer)"


def test_a_big_document_is_refused_while_it_is_read(monkeypatch):
    """Counting as values are read stops at the limit: what comes after it is never read
    (here, a syntax error that reading the whole document would have reported)."""
    monkeypatch.setattr(farm.yamlio, "MAX_EXPANDED_NODES", 1000)
    with pytest.raises(YamlError, match="document holds more than 1000 values"):
        load_yaml("[" + ", ".join(["1"] * 2000) + "]]]]\n")


def test_only_an_alias_expansion_mentions_aliases(monkeypatch):
    monkeypatch.setattr(farm.yamlio, "MAX_EXPANDED_NODES", 1000)
    text = "a: &a [" + ", ".join(["x"] * 100) + "]\nb: [" + ", ".join(["*a"] * 20) + "]\n"  # 125 written
    with pytest.raises(YamlError) as info:
        load_yaml(text)
    assert str(info.value).startswith("document expands to more than 1000 values through aliases")


def test_what_the_farm_writes_reads_back_as_the_same_values():
    """scene.yaml (submit, a cluster job's staged copy, import-dd) is written so the YAML 1.2
    reader gets the same values back: "2e3" stays a name, not the number 2000."""
    from farm.yamlio import dump_yaml

    data = {"name": "2e3", "text_prompts": {0: ["1e5", "0o17:2", "017"]}, "seed": 12, "zoom": "0: (1.02)",
            "clip_guidance_scale": 5000.0, "flag": True, "none": None, "angle": "10:5"}
    assert load_yaml(dump_yaml(data)).data == data


# -- PyYAML's key-length limit and values it cannot build, with their lines ---------------------

@pytest.mark.parametrize("text, line", [
    ("a: 1\n" + "k" * 3_000_000 + ": 1\n", 2),               # the auditor's 3,000,000-character key
    ("a: 1\n" + "k" * 1025 + ": 1\n", 2),                    # just over the limit
    ("a: 1\n\"" + "k" * 1100 + "\": 1\n", 2),               # quoted: the same limit
    ("a:\n  - " + "k" * 1100 + ": 1\n", 2),                  # in a block sequence
    ("{a: 1, " + "k" * 1100 + ": 1}\n", 1),                  # in a flow mapping
    ("x: [" + "k" * 1100 + ": 1]\n", 1),                     # in a flow sequence
])
def test_a_key_over_yamls_length_limit_is_named_as_such(text, line):
    """PyYAML said "could not find expected ':'" (or "expected ',' or '}'"), with a ':' in plain sight."""
    with pytest.raises(YamlError) as error:
        load_yaml(text)
    assert str(error.value).startswith("a key longer than 1024 characters (YAML's limit for plain keys")
    assert error.value.line == line


def test_keys_within_the_limit_and_long_values_still_read_and_a_missing_colon_is_not_a_long_key():
    assert load_yaml("k" * 1000 + ": 1\n").data == {"k" * 1000: 1}
    assert load_yaml("p: " + "word " * 1000 + "\nq: 1\n").data == {"p": ("word " * 1000).strip(), "q": 1}
    for text in ("a: 1\n" + "k" * 1100 + "\nb: 2\n", "a: 1\nkkk\nb: 2\n"):  # no ':' after it: the usual message
        with pytest.raises(YamlError, match="^could not find expected ':'$"):
            load_yaml(text)


def test_an_impossible_date_names_its_line():
    """`2024-13-45` is a YAML timestamp PyYAML cannot build: the ValueError lost its line."""
    with pytest.raises(YamlError) as error:
        load_yaml("a: 1\nname: 2024-13-45\n")
    assert str(error.value) == ("'2024-13-45' is read as a date but is not one (month must be in 1..12); "
                                "quote it to keep it as text")
    assert error.value.line == 2
    with pytest.raises(YamlError) as error:
        load_yaml("a: 1\nb:\n  c: [1, 2]\n  2024-02-30: x\n")  # as a key, deeper down
    assert "'2024-02-30' is read as a date but is not one (day is out of range for month)" in str(error.value)
    assert error.value.line == 4
    assert str(load_yaml("name: '2024-13-45'\n").data["name"]) == "2024-13-45"


def test_scene_errors_for_these_carry_file_and_line():
    scene = TINY_SCENE.replace("name: ", "name: 2024-13-45\nold_name: ", 1)
    line = scene.splitlines().index("name: 2024-13-45") + 1
    assert problems(scene) == [f"s.yaml:{line}: '2024-13-45' is read as a date but is not one "
                               "(month must be in 1..12); quote it to keep it as text"]
    assert problems("a: 1\n" + "k" * 2000 + ": 1\n") == [
        "s.yaml:2: a key longer than 1024 characters (YAML's limit for plain keys, written as 'key: value'): "
        "shorten it"]
