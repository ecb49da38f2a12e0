"""Caffe's gflags spellings on protocaffe's command lines."""
import pytest

from protocaffe.errors import CaffeError
from protocaffe.flags import Flags


def parser():
    f = Flags("demo", "demo", [("root", "r"), ("db", "d")])
    f.flag("gray", False, "a boolean")
    f.flag("size", 0, "a number")
    f.flag("name", "", "a string")
    return f


@pytest.mark.parametrize("argv", [["-size", "3", "R", "D"], ["--size", "3", "R", "D"], ["--size=3", "R", "D"],
                                  ["R", "D", "-size=3"]])
def test_value_spellings(argv):
    assert parser().parse(argv).size == 3


def test_booleans_never_take_the_next_word():
    assert parser().parse(["--gray", "R", "D"]).gray is True
    assert parser().parse(["-gray", "R", "D"]).root == "R"
    assert parser().parse(["--gray=false", "R", "D"]).gray is False
    assert parser().parse(["--nogray", "R", "D"]).gray is False
    assert parser().parse(["R", "D"]).gray is False


def test_bad_flags_are_caffe_errors():
    with pytest.raises(CaffeError, match="expected true or false"):
        parser().parse(["--gray=maybe", "R", "D"])
    with pytest.raises(CaffeError, match="invalid int value"):
        parser().parse(["--size", "big", "R", "D"])
    with pytest.raises(CaffeError, match="unrecognized arguments"):
        parser().parse(["R", "D", "--what"])


def test_gflags_noflag_forms_and_defaults_in_help():
    assert parser().parse(["-nogray", "R", "D"]).gray is False
    f = Flags("demo", "demo")
    f.flag("gray", True, "a boolean")
    assert f.parse(["-nogray"]).gray is False and f.parse(["--nogray"]).gray is False
    assert f.parse([]).gray is True
    text = " ".join(parser().parser.format_help().split())
    assert "a boolean (default: false)" in text and "a number (default: 0)" in text
    assert 'a string (default: "")' in text


def test_no_abbreviations_and_a_suggestion():
    with pytest.raises(CaffeError, match=r"unrecognized arguments: --siz .*\(did you mean '--size'\?\)"):
        parser().parse(["--siz", "3", "R", "D"])
