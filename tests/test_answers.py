"""Answer parsing/matching: realistic small-model outputs plus property tests."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from semievol_core.answers import (
    LETTERS,
    ParsedAnswer,
    answers_equal,
    index_for,
    infer_answer_type,
    letter_for,
    normalize_text,
    numbers_match,
    parse_answer,
    parse_choice,
    parse_number,
    parse_text,
    texts_match,
)

SENTIMENT = ["negative", "neutral", "positive"]
FOOD = ["salt", "flour", "sugar", "pepper"]

# (model output, options, n_options, expected letter or None for a reported failure)
CHOICE_CASES = [
    ("Answer: C.", FOOD, 4, "C"),
    ("answer: (c)", FOOD, 4, "C"),
    ("The answer is C", FOOD, 4, "C"),
    ("The correct answer is option B", FOOD, 4, "B"),
    ("C. sugar", FOOD, 4, "C"),
    ("(B) neutral", SENTIMENT, 3, "B"),
    ("**Answer:** B", FOOD, 4, "B"),
    ("**Answer: B**", FOOD, 4, "B"),
    ("Answer: **D**", FOOD, 4, "D"),
    ("positive", SENTIMENT, 3, "C"),
    ("Positive.", SENTIMENT, 3, "C"),
    ("Answer: positive", SENTIMENT, 3, "C"),
    ("The answer is a positive sentiment.", SENTIMENT, 3, "C"),
    ("Answer: C. Sugar is sweet, while salt (A) is not.", FOOD, 4, "C"),
    ("Answer: C\nOption B is wrong because flour is not sweet, and (A) is salty.", FOOD, 4, "C"),
    ("Answer: C\nWait, let me reconsider.\nAnswer: B", FOOD, 4, "B"),
    ("Let me think step by step.\nSugar is sweet.\n\nThe answer is: D", FOOD, 4, "D"),
    ("Answer:\nB", FOOD, 4, "B"),
    ("A company reported record profits, so the sentiment is positive.", SENTIMENT, 3, "C"),
    ("A company reported record profits.", None, 4, None),
    ("I think the answer is B.", FOOD, 4, "B"),
    ("I think it's B.", FOOD, 4, "B"),
    ("I am not sure.", FOOD, 4, None),
    ("Answer: A", FOOD, 4, "A"),
    ("Answer: (A) salt", FOOD, 4, "A"),
    ("Answer: A salt", FOOD, 4, "A"),
    ("B", FOOD, 4, "B"),
    ("b)", FOOD, 4, "B"),
    ("The sweet one.\nC", FOOD, 4, "C"),
    ("Final answer: $\\boxed{C}$", FOOD, 4, "C"),
    ("", FOOD, 4, None),
    ("   \n\t ", FOOD, 4, None),
    ("Answer: E", FOOD, 4, None),
    ("E. pepper", FOOD, 4, None),
    ("Answer: J", None, 10, "J"),
    ("Answer: I", None, 10, "I"),
    ("Answer: I", None, 4, None),
    ("The sentiment is not negative, it is positive.", SENTIMENT, 3, "C"),
    ("It could be negative or positive.", SENTIMENT, 3, None),
    ("(A) negative (B) neutral (C) positive", SENTIMENT, 3, None),
    ("very positive", ["positive", "very positive", "negative"], 3, "B"),
    ("i.e. it depends", FOOD, 4, None),
    ("B, because sugar... no wait", FOOD, 4, "B"),
]


@pytest.mark.parametrize("text,options,n,expected", CHOICE_CASES)
def test_parse_choice_table(text, options, n, expected):
    got = parse_choice(text, options, n)
    assert isinstance(got, ParsedAnswer)
    if expected is None:
        assert not got.ok and got.value is None and got.method == "failed" and got.reason
    else:
        assert got.ok and got.value == expected, got


def test_choice_methods_and_reasons():
    assert parse_choice("Answer: C", FOOD, 4).method == "marker"
    assert parse_choice("C. sugar", FOOD, 4).method == "leading_letter"
    assert parse_choice("positive", SENTIMENT, 3).method == "option_text"
    assert "beyond" in parse_choice("Answer: E", FOOD, 4).reason
    assert "ambiguous" in parse_choice("negative or positive", SENTIMENT, 3).reason
    assert parse_choice("", FOOD, 4).reason == "empty output"
    # n_options defaults to len(options)
    assert not parse_choice("Answer: D", SENTIMENT).ok
    assert parse_choice("Answer: D").value == "D"


# (model output, expected number or None)
NUMBER_CASES = [
    ("1,234.5", 1234.5),
    ("12%", 12.0),
    ("$3", 3.0),
    ("It costs $3.50 in total.", 3.5),
    ("-2e3", -2000.0),
    ("Answer: 42", 42.0),
    ("the answer is 3/4", 0.75),
    ("Answer: 42\nBecause 40 + 2 = 42 and 7 apples.", 42.0),
    ("First 3 apples, then 5 more, so 8 apples.", 8.0),
    ("Answer: 5 + 3 = 8", 8.0),
    ("The final answer is $\\boxed{1,000}$", 1000.0),
    ("#### 72", 72.0),
    ("Answer: −7", -7.0),
    ("She paid -$4.", -4.0),
    ("The answer is 1/0", None),
    ("no numbers here", None),
    ("", None),
    ("Answer: 1,2345", 1.0),
    ("values 1,2,3", 3.0),
]


@pytest.mark.parametrize("text,expected", NUMBER_CASES)
def test_parse_number_table(text, expected):
    got = parse_number(text)
    if expected is None:
        assert not got.ok and got.number is None and got.reason
    else:
        assert got.ok and got.number == pytest.approx(expected), got
        assert float(got.value) == pytest.approx(expected)


def test_number_canonical_and_match():
    assert parse_number("1,234.0").value == "1234"
    assert parse_number("-0").value == "0"
    assert numbers_match(100, 100.9) and not numbers_match(100, 102)
    assert numbers_match(0, 1e-9) and not numbers_match(0, 0.01)
    assert numbers_match("12%", "12") and not numbers_match("12%", "0.12")
    assert not numbers_match(None, 1) and not numbers_match(float("nan"), float("nan"))


TEXT_CASES = [
    ("Answer: Paris.", "paris", True),
    ("The answer is: The Eiffel Tower", "eiffel tower", True),
    ("Paris\nIt is the capital of France.", "Paris", True),
    ("London", "Paris", False),
    ("Paris is the capital of France", "Paris", False),
    ("Answer: George Washington", "Washington, George", True),
]


@pytest.mark.parametrize("text,gold,expected", TEXT_CASES)
def test_text_table(text, gold, expected):
    parsed = parse_text(text)
    assert parsed.ok
    assert answers_equal(parsed.value, gold, "text") is expected


def test_normalize_text():
    assert normalize_text("  The  Eiffel-Tower!! ") == "eiffel tower"
    assert normalize_text("An apple, a day.") == "apple day"
    assert normalize_text(None) == "" and normalize_text("the") == ""
    assert texts_match("eiffel tower", "The Eiffel Tower.") and not texts_match("", "")
    assert not parse_text("The.").ok and not parse_text("  ").ok


def test_dispatch_and_helpers():
    assert parse_answer("Answer: B", "choice", options=FOOD).value == "B"
    assert parse_answer("Answer: 3/4", "number").number == 0.75
    assert parse_answer("Answer: Paris", "text").value == "Paris"
    with pytest.raises(ValueError):
        parse_answer("x", "essay")
    assert answers_equal("C", "c", "choice") and answers_equal("(C)", "C.", "choice")
    assert not answers_equal(None, "C", "choice") and not answers_equal("B", "C", "choice")
    assert answers_equal("1234.5", "1,234.5", "number") and not answers_equal(None, "3", "number")
    assert letter_for(0) == "A" and letter_for(9) == "J" and index_for(" c ") == 2
    with pytest.raises(ValueError):
        letter_for(10)
    with pytest.raises(ValueError):
        index_for("K")
    assert infer_answer_type(["x", "y"], "A") == "choice"
    assert infer_answer_type(None, "1,234") == "number"
    assert infer_answer_type([], "$3.50") == "number"
    assert infer_answer_type(None, "World War 2") == "text"
    assert infer_answer_type(None, "Paris") == "text"


# --- properties -----------------------------------------------------------------------------

# Filler made of words of >= 2 letters, digits and punctuation: no single letters as words.
_word = st.text(alphabet=string.ascii_letters, min_size=2, max_size=8)
_token = st.one_of(_word, st.text(alphabet=string.digits + ".,;!?-", min_size=1, max_size=4))
_filler = st.lists(_token, max_size=12).map(" ".join)
_templates = st.sampled_from(
    ["{f} Answer: {L}", "{f}\nAnswer: {L}", "{f}\n**Answer:** ({L})", "{f} The answer is {L}."]
)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10), data=st.data(), filler=_filler, template=_templates)
def test_marker_letter_always_wins(n, data, filler, template):
    letter = data.draw(st.sampled_from(LETTERS[:n]))
    got = parse_choice(template.format(f=filler, L=letter), None, n)
    assert got.ok and got.value == letter, got


@settings(max_examples=200, deadline=None)
@given(text=st.text(), kind=st.sampled_from(["choice", "number", "text"]),
       options=st.none() | st.lists(st.text(max_size=10), max_size=10))
@example(text="k 0", kind="choice", options=None)  # a lowercase letter past J once raised
def test_parsing_never_raises(text, kind, options):
    got = parse_answer(text, kind, options=options)
    assert got.ok == (got.value is not None)
    assert got.ok or (got.method == "failed" and got.reason)


@settings(max_examples=200, deadline=None)
@given(x=st.decimals(min_value=-1e9, max_value=1e9, places=2, allow_nan=False),
       fmt=st.sampled_from(["{:,}", "${:,}", "{:,}%", "Answer: {:,}", "about {:,} units"]))
def test_number_formats_round_trip(x, fmt):
    got = parse_number(fmt.format(x))
    assert got.ok and numbers_match(got.number, float(x)), (fmt.format(x), got)


@settings(max_examples=200, deadline=None)
@given(text=st.text(), kind=st.sampled_from(["choice", "number", "text"]))
def test_answers_equal_reflexive(text, kind):
    parsed = parse_answer(text, kind, n_options=10)
    if parsed.ok:
        assert answers_equal(parsed.value, parsed.value, kind)


@settings(max_examples=200, deadline=None)
@given(s=st.text())
def test_normalize_idempotent(s):
    once = normalize_text(s)
    assert normalize_text(once) == once
