"""Scene text printed to a terminal: escape sequences shown, never sent."""

import os

from farm.cli import main
from farm.terminal import printable
from tests.conftest import TINY_SCENE


def test_controls_and_bidi_overrides_are_escaped_and_other_text_kept():
    assert printable("\x1b]2;OWNED\x07\x1b[2J red") == "\\x1b]2;OWNED\\x07\\x1b[2J red"
    assert printable("abc\u202edef\x9b") == "abc\\u202edef\\x9b"
    kept = "a lighthouse, 灯台, می\u200cخواهم 🌊\tweight"
    assert printable(kept) == kept.replace("\t", "\\t")


def test_plan_and_validation_errors_print_a_scenes_escape_sequences_escaped(tmp_path, capsys):
    scene = tmp_path / "esc.yaml"
    scene.write_text(TINY_SCENE.replace('"a red apple:2"', '"\\e]2;OWNED-TITLE\\a\\e[2J\\e[31mred:1"'))
    assert main(["plan", str(scene)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b]2;OWNED-TITLE\\x07" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_SCENE + 'init_image: "\\e[31mRED\\e]52;c;ZWNobyBwd25lZA==\\a"\n')
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b]52;c;" in err and "init_image" in err
    assert not os.path.exists(tmp_path / "\x1b[31mRED")
