"""The one preference parser, without a server: canonical form, both spellings, every error."""
import re

import pytest

from models_store.preference import PREFERENCE_PATTERN, PreferenceError, equal_preference, parse_preference

TASKS = ["digits", "glyphs", "shapes"]


@pytest.mark.parametrize("text,canonical", [
    ("1,1,2", "digits:0.25,glyphs:0.25,shapes:0.5"),
    (" 0.2 , 0.3 , 0.5 ", "digits:0.2,glyphs:0.3,shapes:0.5"),
    ("shapes:3,digits:1", "digits:0.25,glyphs:0,shapes:0.75"),
    ("digits:1", "digits:1,glyphs:0,shapes:0"),
    ("1,2,3e-7", "digits:0.333333,glyphs:0.666667,shapes:0"),
    ("1e300,1e300,0", "digits:0.5,glyphs:0.5,shapes:0"),
    (None, "digits:0.333333,glyphs:0.333333,shapes:0.333333"),
    ("  ", "digits:0.333333,glyphs:0.333333,shapes:0.333333"),
])
def test_canonical_form(text, canonical):
    pref = parse_preference(text, TASKS)
    assert pref.canonical == canonical
    assert parse_preference(pref.canonical, TASKS) == pref  # the canonical text parses to itself
    assert re.match(PREFERENCE_PATTERN, pref.canonical)


@pytest.mark.parametrize("text,message", [
    ("1,1", "expected 3 preference values"),
    ("1,-1,1", "negative"),
    ("nan,1,1", "not a finite number"),
    ("inf,1,1", "not a finite number"),
    ("0,0,0", "sum to zero"),
    ("1e308,1e308,0", "sum to more than the largest float"),
    ("a,b,c", "not a number"),
    ("1,,1", "empty value"),
    ("digits:1,2,3", "mixes named"),
    ("cats:1", "unknown task 'cats'"),
    ("digits:1,digits:2", "appears twice"),
])
def test_errors_name_the_problem(text, message):
    with pytest.raises(PreferenceError, match=message):
        parse_preference(text, TASKS)


def test_equal_preference_is_the_default():
    assert equal_preference(TASKS) == parse_preference(None, TASKS)
