"""Parse free-form model outputs into answers, and decide whether two answers match.

    parse_answer("**Answer:** (c) sugar", "choice", options=["salt", "flour", "sugar"])
        # -> ParsedAnswer(value="C", ok=True, method="marker")
    parse_answer("So the answer is $1,234.50.", "number")   # value "1234.5", number 1234.5
    parse_answer("The answer is: Paris.", "text")            # value "Paris"
    answers_equal("C", "c", "choice")                        # True; None/failed is never equal
    infer_answer_type(None, "42")                            # "number"

Parsing never raises on model output and never guesses: when the output is empty, ambiguous or
out of range the result has ok=False, method="failed" and a human-readable `reason`.

Decisions worth knowing:
- The LAST explicit answer marker ("Answer:", "the answer is", "final answer", "\\boxed{", "####")
  wins, because small models often restate or correct themselves at the end.
- A lone "A"/"I" followed by a word is read as the article/pronoun, not a letter, unless the
  following words are that option's text ("A sugar" when option A is "sugar").
- Percent signs are dropped, not divided: "12%" parses to 12, so "12%" matches "12" but not 0.12.
- Fractions "a/b" are split and divided by hand (never eval); x/0 is ignored.
- Text matching is SQuAD-style token F1 on normalize_text() output (not difflib), so word order
  and extra words matter but character-level typos do not get partial credit.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass

from .schema import LETTERS

# the option letters as a regex character range, "A-J" (LETTERS are consecutive)
_LETTER_RANGE = f"{LETTERS[0]}-{LETTERS[-1]}"
ANSWER_TYPES = ("choice", "number", "text")
_DEFAULT_N_OPTIONS = 4  # when a choice question arrives without its options: the usual MCQ size


@dataclass(frozen=True)
class ParsedAnswer:
    value: str | None
    ok: bool
    method: str
    reason: str | None = None
    number: float | None = None


def _failed(reason: str) -> ParsedAnswer:
    return ParsedAnswer(value=None, ok=False, method="failed", reason=reason)


def letter_for(index: int) -> str:
    if not 0 <= index < len(LETTERS):
        raise ValueError(f"option index {index} outside 0..{len(LETTERS) - 1}")
    return LETTERS[index]


def index_for(letter: str) -> int:
    key = letter.strip().upper()
    if len(key) != 1 or key not in LETTERS:
        raise ValueError(f"not an option letter: {letter!r}")
    return LETTERS.index(key)


# --- shared text helpers ---------------------------------------------------------------------

# "Answer:", "answer is", "The correct answer to this question is", "Final answer =",
# "\boxed{", "####".
_MARKER_RE = re.compile(
    r"(?:\b(?:final|correct|right|best)\s+(?:answer|option|choice)|\banswer)"
    r"(?:\s+to\s+(?:this|the)\s+(?:question|problem))?"
    r"\s*(?::|=|-|\bis\b|\bwould\s+be\b|\bshould\s+be\b|\bwill\s+be\b)\s*:?"
    r"|\\boxed\{|####",
    re.IGNORECASE,
)
# Softer phrasings, only consulted when no explicit marker gave an answer.
_SOFT_MARKER_RE = re.compile(
    r"\b(?:choose|chose|pick|select|go\s+with|it'?s|it\s+is)\s+", re.IGNORECASE
)
_ARTICLES = {"a", "an", "the"}
_PUNCT = set(string.punctuation)
_NEGATORS = {"not", "no", "never", "isnt", "isn", "nor"}


def _clean(text: str | None) -> str:
    """Drop markdown emphasis/code marks so '**Answer:** B' reads as 'Answer: B'."""
    if not text:
        return ""
    return text.replace("**", "").replace("__", "").replace("`", "").replace("\u2212", "-")


_SPAN_RE = re.compile(r"\s*([^\n]{0,300})")


def _span_after(text: str, end: int) -> str:
    """First non-empty line after a marker (models often put the answer on the next line).

    Capped at 300 characters so outputs with thousands of markers stay linear-ish.
    """
    return _SPAN_RE.match(text, end).group(1).strip()


def _markers_last_first(text: str) -> list[re.Match]:
    """Answer markers, last first; only the last 64 (pathological outputs repeat them forever)."""
    return list(_MARKER_RE.finditer(text))[-64:][::-1]


def normalize_text(s: str | None) -> str:
    """SQuAD-like: lowercase, punctuation -> space, drop a/an/the, collapse whitespace.

    Punctuation becomes a space (SQuAD deletes it) so "positive/negative" stays two words.
    """
    if not s:
        return ""
    chars = [
        " " if ch in _PUNCT or unicodedata.category(ch).startswith("P") else ch
        for ch in s.lower()
    ]
    return " ".join(tok for tok in "".join(chars).split() if tok not in _ARTICLES)


# --- multiple choice -------------------------------------------------------------------------

_PAREN_LETTER_RE = re.compile(r"[(\[{]\s*([A-Za-z])\s*[)\]}]")
_LONE_LETTER_RE = re.compile(r"([A-Za-z])(?![A-Za-z0-9_'’])")
_LEAD_STRIP = " \t\"'“”‘’$:\\{>#*-•"


def _letter_token(span: str, options: list[str] | None, strict: bool) -> str | None:
    """The letter a span starts with, if it is clearly a letter and not a word.

    strict (start of the output): lowercase letters need parentheses or a following '.', ')'.
    """
    span = span.lstrip(_LEAD_STRIP)
    span = re.sub(r"^(?:option|choice|letter)\b\s*[:#]?\s*", "", span, flags=re.IGNORECASE)
    m = _PAREN_LETTER_RE.match(span)
    if m:
        return m.group(1).upper()
    m = _LONE_LETTER_RE.match(span)
    if not m:
        return None
    ch, rest = m.group(1), span[1:]
    if re.match(r"\.\s?[A-Za-z]\.", rest):  # "e.g.", "i.e.", "A. B." initials
        return None
    if not rest.strip():
        return ch.upper()
    if rest[0] in ".):]}":
        return ch.upper()
    if rest[0] in ",;!?\"'*" and ch.upper() not in "AI" and (ch.isupper() or not strict):
        return ch.upper()
    if not rest[0].isspace():
        return None
    after = rest.lstrip()
    if not after[0].isalnum():  # "B - neutral", "A : sugar"
        return ch.upper()
    if ch.upper() in "AI" or (strict and ch.islower()):
        # Article/pronoun ("A company...", "I think...") unless the words are that option's text.
        idx = LETTERS.find(ch.upper())  # -1: a letter past the last option letter ("k 0")
        if options and 0 <= idx < len(options):
            opt = normalize_text(options[idx])
            if opt and f"{normalize_text(after)} ".startswith(f"{opt} "):
                return ch.upper()
        return None
    return ch.upper()


def _option_text_match(span: str, options: list[str]) -> tuple[int | None, str | None]:
    """(index, None) for a unique whole-word option mention, else (None, why-not)."""
    norm = normalize_text(span)
    if not norm:
        return None, "nothing to match"
    opts = [normalize_text(o) for o in options]
    exact = [i for i, o in enumerate(opts) if o and o == norm]
    if len(exact) == 1:
        return exact[0], None
    words = norm.split()
    hits = []
    for i, opt in enumerate(opts):
        ow = opt.split()
        if not ow:
            continue
        for k in range(len(words) - len(ow) + 1):
            # "not negative" must not count as choosing "negative".
            if words[k : k + len(ow)] == ow and (k == 0 or words[k - 1] not in _NEGATORS):
                hits.append(i)
                break
    # "very positive" also contains "positive": keep only the most specific mention.
    hits = [i for i in hits if not any(j != i and f" {opts[i]} " in f" {opts[j]} " for j in hits)]
    if len(set(opts[i] for i in hits)) == 1:
        return hits[0], None
    if hits:
        return None, "ambiguous option text: " + ", ".join(LETTERS[i] for i in hits)
    return None, "no option text found"


def parse_choice(
    text: str | None, options: list[str] | None = None, n_options: int | None = None
) -> ParsedAnswer:
    """Letter A.. of the chosen option; n_options defaults to len(options), else 4."""
    if n_options is None:
        n_options = len(options) if options else _DEFAULT_N_OPTIONS
    valid = LETTERS[: max(0, min(n_options, len(LETTERS)))]
    text = _clean(text)
    if not text.strip():
        return _failed("empty output")
    opts = list(options[: len(valid)]) if options else None

    def found(letter: str, method: str) -> ParsedAnswer:
        return ParsedAnswer(value=letter, ok=True, method=method)

    def out_of_range(letter: str) -> ParsedAnswer:
        return _failed(f"letter {letter} is beyond the {len(valid)} options")

    # 1. Explicit markers, last first: the final statement is the model's answer.
    for m in _markers_last_first(text):
        span = _span_after(text, m.end())
        letter = _letter_token(span, opts, strict=False)
        if letter:
            return found(letter, "marker") if letter in valid else out_of_range(letter)
        if opts:
            idx, _ = _option_text_match(span, opts)
            if idx is not None:
                return found(LETTERS[idx], "option_text")

    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # 2. Output starts with the letter: "C. sugar", "(B) neutral", "B". A first line carrying
    # several labels ("(A) negative (B) neutral ...") is an echo of the options, not an answer.
    labels = set(re.findall(rf"(?:^|\s)[(\[]?([{_LETTER_RANGE}])[)\].:](?:\s|$)", lines[0]))
    letter = _letter_token(lines[0], opts, strict=True) if len(labels) <= 1 else None
    if letter:
        if letter in valid:
            return found(letter, "leading_letter")
        # An out-of-range lead letter conflicts with anything found later: report, don't guess.
        return out_of_range(letter)
    # 3. A line that is nothing but a letter, e.g. after a short explanation.
    for line in reversed(lines):
        bare = line.strip(_LEAD_STRIP)
        m = re.fullmatch(rf"[(\[]?([{_LETTER_RANGE}{_LETTER_RANGE.lower()}])[)\]]?[.:]?", bare)
        if m and m.group(1).upper() in valid:
            return found(m.group(1).upper(), "standalone_letter")
    # 4. Unambiguous inline letters: "(B)", "option B", "I choose B".
    inline = {x.upper() for x in _PAREN_LETTER_RE.findall(text)}
    inline |= {
        x.upper() for x in re.findall(rf"\b(?:option|choice)\s+([{_LETTER_RANGE}])\b", text, re.IGNORECASE)
    }
    for m in _SOFT_MARKER_RE.finditer(text):
        letter = _letter_token(text[m.end() : m.end() + 300].split("\n", 1)[0], opts, False)
        if letter:
            inline.add(letter)
    inline &= set(valid)
    if len(inline) == 1:
        return found(inline.pop(), "inline_letter")
    # 5. The option text itself: "positive" for [negative, neutral, positive].
    why = None
    if opts:
        for candidate in (lines[0], text):
            idx, why = _option_text_match(candidate, opts)
            if idx is not None:
                return found(LETTERS[idx], "option_text")
    if len(inline) > 1:
        return _failed("several candidate letters: " + ", ".join(sorted(inline)))
    return _failed(why if why and why.startswith("ambiguous") else "no answer letter found")


# --- numbers ---------------------------------------------------------------------------------

_NUM_CORE = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_NUMBER_RE = re.compile(
    rf"(?<![\w.])(?P<sign>[-+])?(?P<cur>[$€£¥]\s?)?(?P<sign2>[-+])?(?P<num>{_NUM_CORE})"
    rf"(?P<exp>[eE][-+]?\d+)?(?:\s?/\s?(?P<den>{_NUM_CORE}))?(?P<pct>\s?%)?"
)


def _number_of(m: re.Match) -> float | None:
    try:
        value = float(m.group("num").replace(",", "") + (m.group("exp") or ""))
        if m.group("den"):
            den = float(m.group("den").replace(",", ""))
            if den == 0:
                return None
            value /= den
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(value):
        return None
    negative = (m.group("sign") == "-") != (m.group("sign2") == "-")
    return -value if negative else value


def _canonical(x: float) -> str:
    if x == 0:
        return "0"  # also folds -0.0
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.12g}"


def _numbers_in(span: str) -> list[float]:
    return [v for v in map(_number_of, _NUMBER_RE.finditer(span)) if v is not None]


def parse_number(text: str | None) -> ParsedAnswer:
    """First number after the last answer marker (after its last '='), else the last number."""
    text = _clean(text)
    if not text.strip():
        return _failed("empty output")

    def found(x: float, method: str) -> ParsedAnswer:
        return ParsedAnswer(value=_canonical(x), ok=True, method=method, number=x)

    for m in _markers_last_first(text):
        span = _span_after(text, m.end())
        # "Answer: 5 + 3 = 8": the result follows the last '='.
        numbers = _numbers_in(span.rsplit("=", 1)[-1])
        if numbers:
            return found(numbers[0], "marker")
    numbers = _numbers_in(text)
    if numbers:
        return found(numbers[-1], "last_number")
    return _failed("no number found")


def numbers_match(
    a: float | str | None, b: float | str | None, rel_tol: float = 1e-2, abs_tol: float = 1e-6
) -> bool:
    """Relative tolerance, plus a tiny absolute one so 0 matches 1e-9."""
    x = parse_number(a).number if isinstance(a, str) else a
    y = parse_number(b).number if isinstance(b, str) else b
    if x is None or y is None or math.isnan(x) or math.isnan(y):
        return False
    return math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol)


# --- short text ------------------------------------------------------------------------------


def parse_text(text: str | None) -> ParsedAnswer:
    """The first line after the last answer marker, else the first non-empty line."""
    text = _clean(text)
    if not text.strip():
        return _failed("empty output")
    for m in _markers_last_first(text):
        span = _span_after(text, m.end()).strip(" \t\"'“”.}$")
        if normalize_text(span):
            return ParsedAnswer(value=span, ok=True, method="marker")
    for line in text.splitlines():
        span = line.strip().strip(" \t\"'“”.}$")
        if normalize_text(span):
            return ParsedAnswer(value=span, ok=True, method="first_line")
    return _failed("no content after normalisation")


def token_f1(a: str, b: str) -> float:
    ta, tb = normalize_text(a).split(), normalize_text(b).split()
    common = sum((Counter(ta) & Counter(tb)).values())
    if not ta or not tb or not common:
        return 0.0
    precision, recall = common / len(ta), common / len(tb)
    return 2 * precision * recall / (precision + recall)


def texts_match(a: str | None, b: str | None, threshold: float = 0.8) -> bool:
    """Token F1 (SQuAD) on normalised strings >= threshold; empty never matches."""
    if a is None or b is None:
        return False
    return token_f1(a, b) >= threshold


# --- dispatch --------------------------------------------------------------------------------


def parse_answer(
    text: str | None,
    answer_type: str,
    options: list[str] | None = None,
    n_options: int | None = None,
) -> ParsedAnswer:
    kind = answer_type.strip().lower()
    if kind == "choice":
        return parse_choice(text, options, n_options)
    if kind == "number":
        return parse_number(text)
    if kind == "text":
        return parse_text(text)
    raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")


def _as_letter(s: str) -> str | None:
    key = s.strip().strip("().[]:*").strip().upper()
    return key if len(key) == 1 and key in LETTERS else None


def answers_equal(pred: str | None, gold: str, answer_type: str) -> bool:
    """Compare an already-parsed prediction with the gold label; None never equals anything."""
    if pred is None or gold is None:
        return False
    kind = answer_type.strip().lower()
    if kind == "choice":
        p, g = _as_letter(pred), _as_letter(gold)
        return p is not None and p == g
    if kind == "number":
        return numbers_match(pred, gold)
    if kind == "text":
        return texts_match(pred, gold)
    raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")


_STRICT_NUMBER_RE = re.compile(rf"\s*{_NUMBER_RE.pattern}\s*\.?\s*")


def infer_answer_type(options: list[str] | None, answer: str) -> str:
    """"choice" if options exist; "number" if the whole gold is one number; else "text"."""
    if options:
        return "choice"
    m = _STRICT_NUMBER_RE.fullmatch(str(answer))
    if m and _number_of(m) is not None:
        return "number"
    return "text"


def canonical_answer(parsed: ParsedAnswer, answer_type: str) -> str | None:
    """The form answers are voted and stored in: the letter, the canonical number string, or the
    normalised text (so "The Eiffel Tower." and "eiffel tower" count as one vote). None if unparsed."""
    if not parsed.ok or parsed.value is None:
        return None
    return normalize_text(parsed.value) if answer_type == "text" else parsed.value
