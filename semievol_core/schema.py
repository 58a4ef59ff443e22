"""Table schemas, stable ids and row validation for the Parquet data layer (see data.py).

    from semievol_core.schema import SCHEMAS, DataError, content_id
    SCHEMAS["labeled"].names         # ['id', 'question', 'options', 'answer', 'metadata']
    content_id("2+2?", ["3", "4"])   # '…16 hex chars…', stable across runs and machines
    str(DataError("fpb/labeled.csv", 17, "answer", "'F' is not an option letter (4 options: A-D)"))

Kinds: labeled and test (id, question, options, answer, metadata); unlabeled (no answer, ever);
oracle (id, answer) holds true answers of unlabeled rows, only to score pseudo-labels afterwards;
quarantine holds rows an import skipped, with the reason. `options` is a list of strings, or None
for a free-form question. An answer to a multiple-choice question is an option letter (A = first):
LETTERS, the one definition every module uses (import, prompts, answer parsing, letter scoring).

Row numbers in DataError are 1-based data rows as a user counts them: for CSV the first record
after the header is row 1 (a quoted field spanning several lines still counts as one row; blank
lines are skipped, not counted), for JSONL the line number, for Parquet and DataFrames the
position + 1. None means the whole file (a missing column, an unreadable or empty file).

normalize_record() turns one source record into a table row; RowCollector does that for a whole
file, dropping duplicates (same question, options and answer; counted) and quarantining or raising
(BadRowError) on bad rows.

Rules every path shares (import-csv, ingest, evolve's checks), each defined once here:
  - answer_columns(): which extra columns of unlabeled rows give the answer away (kept out of
    metadata, with answer_note() saying so);
  - is_multiple_choice() / check_form(): a dataset is multiple choice when every labeled row has
    options, free-form when none has; its unlabeled and test rows must have the same form;
  - line endings in questions and options are unified to "\n" (CRLF files get the same ids).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa

# Option letters, so at most 10 options. Not A-Z: the paper's datasets stop at 10 (MMLU-Pro, A-J),
# and answer parsing reads a lone letter after "Answer:" as the choice, which past J would also take
# variables and units ("Answer: x = 3", "K") for option letters.
LETTERS = "ABCDEFGHIJ"
MAX_OPTIONS = len(LETTERS)

_ID = pa.field("id", pa.string(), nullable=False)
_QUESTION = pa.field("question", pa.string(), nullable=False)
_OPTIONS = pa.field("options", pa.list_(pa.string()), nullable=True)
_ANSWER = pa.field("answer", pa.string(), nullable=False)
_METADATA = pa.field("metadata", pa.string(), nullable=False)

SCHEMAS: dict[str, pa.Schema] = {
    "labeled": pa.schema([_ID, _QUESTION, _OPTIONS, _ANSWER, _METADATA]),
    "unlabeled": pa.schema([_ID, _QUESTION, _OPTIONS, _METADATA]),
    "test": pa.schema([_ID, _QUESTION, _OPTIONS, _ANSWER, _METADATA]),
    "oracle": pa.schema([_ID, _ANSWER]),
    "quarantine": pa.schema(
        [
            pa.field("source", pa.string()),
            pa.field("row", pa.int64()),
            pa.field("column", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("raw", pa.string()),  # the rejected record as a JSON object
        ]
    ),
}
KINDS = tuple(SCHEMAS)
QUESTION_KINDS = ("labeled", "unlabeled", "test")

# Column names that carry a question's answer (fpb `gt` is the answer's text, mmlu_pro
# `cot_content` ends in "the answer is (X)"), compared as snake_case lower case ("Ground Truth",
# "groundTruth" -> ground_truth): never copied into unlabeled metadata, where an answer could reach
# prompts or training.
ANSWER_REVEALING = frozenset({
    "answer", "answers", "answer_index", "answer_idx", "answer_key", "answer_text", "gt", "label",
    "labels", "target", "targets", "gold", "gold_label", "cot_content", "correct", "correct_answer",
    "solution", "solutions", "ground_truth", "explanation", "rationale",
})
# A column under another name whose value is an option's text or letter on this share of the rows
# that have both (and at least this many rows, so a few coincidences do not count) is an answer too.
ANSWER_MATCH_SHARE, ANSWER_MATCH_MIN_ROWS = 0.8, 5


class DataError(ValueError):
    """A data file breaks the rules; str() is one line: `<file> row <n>, column '<c>': <msg>`."""

    def __init__(self, path: str | Path, row: int | None, column: str | None, message: str):
        self.path, self.row, self.column = str(path), row, column
        self.message = " ".join(str(message).split("\n"))  # one line, whatever the input
        super().__init__(str(self))

    def __str__(self) -> str:
        where = short_path(self.path)
        if self.row is not None:
            where += f" row {self.row}"
        if self.column is not None:
            where += f", column {self.column!r}"
        return f"{where}: {self.message}"

    def __reduce__(self):  # keep all four fields and the class when pickled (worker processes)
        return (type(self), (self.path, self.row, self.column, self.message))


class BadRowError(DataError):
    """A DataError about one row that skip_bad_rows would have quarantined instead."""


class FieldError(Exception):
    """A bad value in one row; the reader turns it into a DataError with file and row."""

    def __init__(self, column: str | None, message: str):
        super().__init__(message)
        self.column, self.message = column, message


def short_path(path: str | Path) -> str:
    """The last two path parts (`fpb/labeled.csv`): enough to say which file, short for a CLI."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if parts else str(path)


def show(value: Any, limit: int = 60) -> str:
    """A value quoted for an error message: repr (so newlines stay escaped), truncated."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def letters_text(n: int) -> str:
    """'4 options: A-D' — the phrase used in answer errors."""
    span = LETTERS[0] if n == 1 else f"{LETTERS[0]}-{LETTERS[n - 1]}"
    return f"{n} option{'s' if n != 1 else ''}: {span}"


def content_id(question: str, options: list[str] | None) -> str:
    """Stable id from content: sha1(question + JSON of options), first 16 hex chars."""
    blob = question + json.dumps(options, ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def unify_newlines(text: str) -> str:
    """CRLF and lone CR -> LF: a CSV saved on Windows keeps "\r\n" inside quoted fields, and the
    same question must get the same content id whichever file it came from."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def is_missing(value: Any) -> bool:
    """None, NaN (pandas' empty cell) and pd.NA count as missing."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def jsonable(value: Any) -> Any:
    """A value from CSV/JSONL/Parquet/pandas made JSON-serializable (numpy scalars, arrays, NaN)."""
    if is_missing(value):
        return None
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # numpy scalar or array
        return jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def parse_options(value: Any, column: str = "options") -> list[str] | None:
    """Options from a JSON-string list or a real list; None/empty cell means free-form."""
    if is_missing(value) or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise FieldError(column, f"options are not a JSON list of strings: {show(value)}")
    elif hasattr(value, "tolist"):  # numpy array from a Parquet/pandas list column
        value = value.tolist()
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise FieldError(column, f"options are not a JSON list of strings: {show(value)}")
    for i, item in enumerate(value):
        if is_missing(item):
            # JSON has no NaN: a list written by pandas, which reads an option "None" or "NaN" as
            # missing. Which text it was is not ours to guess.
            what = "null" if item is None else "NaN"
            raise FieldError(column, f"option {i + 1} is {what}, not text (an option \"None\" or "
                                     "\"NaN\" read as missing? write it as a JSON string)")
        if not isinstance(item, str):
            raise FieldError(column, f"option {i + 1} is not a string: {show(item)}")
    if not value:
        raise FieldError(column, "options list is empty (use null for a free-form question)")
    if len(value) > MAX_OPTIONS:
        raise FieldError(column, f"{len(value)} options; at most {MAX_OPTIONS} "
                                 f"({LETTERS[0]}-{LETTERS[-1]})")
    return [unify_newlines(item) for item in value]


def check_answer(value: Any, options: list[str] | None, column: str = "answer",
                 numbered: bool = False) -> tuple[str, bool]:
    """(normalized answer, converted?) — a letter for multiple choice, any text if free-form.

    numbered=True also accepts a 1-based option number ("2" -> "B"), a quirk of the paper's
    arc files; off for users' files, where "2" could as well be 0-based.
    """
    if is_missing(value):
        raise FieldError(column, "answer is missing")
    text = value if isinstance(value, str) else str(jsonable(value))
    if not text.strip():
        raise FieldError(column, "answer is empty")
    if options is None:
        return text, False
    letter, valid = text.strip(), set(LETTERS[: len(options)])  # a set: "AB" is no letter
    if letter in valid:
        return letter, False
    if numbered and letter.isdigit() and 1 <= int(letter) <= len(options):
        return LETTERS[int(letter) - 1], True
    # not fixed up silently: "b" could as well be the text of another option
    if letter.upper() in valid:
        hint = "; option letters are upper case"
    elif letter in options:
        hint = f"; it is option {LETTERS[options.index(letter)]}'s text: give the letter"
    else:
        hint = ""
    raise FieldError(column, f"{show(text)} is not an option letter "
                             f"({letters_text(len(options))}){hint}")


def check_question(value: Any, column: str = "question") -> str:
    if is_missing(value):
        raise FieldError(column, "question is missing")
    if not isinstance(value, str):
        raise FieldError(column, f"question is not text: {show(value)}")
    if not value.strip():
        raise FieldError(column, "question is empty")
    return unify_newlines(value)  # otherwise verbatim: its exact text is part of the content id


def check_id(value: Any, column: str = "id") -> str:
    if is_missing(value):
        raise FieldError(column, "id is missing")
    text = value if isinstance(value, str) else str(jsonable(value))
    if not text.strip():
        raise FieldError(column, "id is empty")
    return text


def check_metadata(value: Any, column: str = "metadata") -> str:
    """Metadata as a JSON-object string; a dict is serialized, missing becomes '{}'."""
    if is_missing(value):
        return "{}"
    if isinstance(value, Mapping):
        return json.dumps(jsonable(value), ensure_ascii=False)
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise FieldError(column, f"metadata is not a JSON object: {show(value)}")
    return value


def is_multiple_choice(options: Iterable[list[str] | None]) -> bool | None:
    """A dataset's form from its labeled rows' options: True if every row has options (multiple
    choice), False if none has (free-form), None if mixed or empty (no rule to enforce)."""
    has = {cell is not None for cell in options}
    return has.pop() if len(has) == 1 else None


def check_form(options: list[str] | None, multiple_choice: bool | None,
               column: str = "options") -> None:
    """FieldError if a row's form differs from its dataset's (see is_multiple_choice): the run
    would otherwise fail on it only after warm training."""
    if multiple_choice and options is None:
        raise FieldError(column, "options are missing (the dataset is multiple choice)")
    if multiple_choice is False and options is not None:
        raise FieldError(column, "options given, but the dataset's questions are free-form")


def _is_answer_name(name: str) -> bool:
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(name))  # answerIndex -> answer_Index
    return re.sub(r"[^0-9a-z]+", "_", snake.lower()).strip("_") in ANSWER_REVEALING


def _is_option(value: Any, options: list[str]) -> bool:
    """Is `value` one of the options, by text or by letter (case and outer spaces ignored)?"""
    text = str(value).strip().casefold()
    return text in {o.strip().casefold() for o in options} or (
        text in {letter.casefold() for letter in LETTERS[: len(options)]})


def answer_columns(rows: Iterable[tuple[list[str] | None, Mapping[str, Any]]]) -> dict[str, str]:
    """Extra columns of unlabeled rows that give the answer away -> why. `rows` are (options,
    extra columns) pairs. A column is named like an answer (ANSWER_REVEALING), or equals an
    option's text or letter on ANSWER_MATCH_SHARE of at least ANSWER_MATCH_MIN_ROWS rows."""
    named: dict[str, bool] = {}
    both: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for options, extra in rows:
        for column, value in extra.items():
            if column not in named:
                named[column] = _is_answer_name(column)
            if named[column] or options is None or is_missing(value) or (
                    not isinstance(value, (str, int, float, bool))) or not str(value).strip():
                continue  # only scalar values next to options can be compared
            both[column] += 1
            hits[column] += _is_option(value, options)
    reasons = {c: "named like an answer" for c, is_named in named.items() if is_named}
    for column, n in both.items():
        if n >= ANSWER_MATCH_MIN_ROWS and hits[column] >= ANSWER_MATCH_SHARE * n:
            reasons[column] = f"equals an option's text or letter on {hits[column]} of {n} rows"
    return reasons


def answer_note(reasons: Mapping[str, str]) -> str:
    """The note saying which columns answer_columns() kept out, and why."""
    listed = ", ".join(f"{c} ({why})" for c, why in sorted(reasons.items()))
    return f"answer-revealing column(s) kept out of unlabeled metadata: {listed}"


def normalize_record(raw: Mapping[str, Any], columns: Mapping[str, str | None], *,
                     answer: str, numbered: bool = False, multiple_choice: bool | None = None,
                     withhold: frozenset[str] = frozenset()) -> tuple[dict[str, Any], bool]:
    """One source record -> (row dict for our tables, answer-was-converted flag).

    `columns` maps our fields (id, question, options, answer) to source column names; a field
    mapped to None is absent (no id column -> content hash; no options -> free-form).
    `answer` is "required", "optional" (blank -> None) or "none" (not read). `multiple_choice`
    is the dataset's form (check_form; None: either). Every other source column, except those in
    `withhold`, goes into the metadata JSON object.
    """
    question = check_question(raw.get(columns["question"]), columns["question"])
    ocol = columns.get("options")
    options = parse_options(raw.get(ocol), ocol) if ocol else None
    check_form(options, multiple_choice, ocol or "options")
    row: dict[str, Any] = {}
    icol = columns.get("id")
    row["id"] = check_id(raw.get(icol), icol) if icol else content_id(question, options)
    row["question"], row["options"] = question, options
    converted = False
    if answer != "none":
        acol = columns.get("answer")
        value = raw.get(acol) if acol else None
        blank = is_missing(value) or (isinstance(value, str) and not value.strip())
        if answer == "optional" and blank:
            row["answer"] = None
        else:
            row["answer"], converted = check_answer(value, options, acol or "answer", numbered)
    used = {c for c in columns.values() if c} | set(withhold)
    extra = {k: jsonable(v) for k, v in raw.items() if k not in used}
    row["metadata"] = json.dumps(extra, ensure_ascii=False)
    return row, converted


# A source record: (1-based row, raw dict, problem found while parsing it or None)
Record = tuple[int, dict[str, Any], FieldError | None]


class RowCollector:
    """Normalizes a file's records into `rows`. A duplicate (same question, options and answer as
    an earlier row, whatever its id and metadata) is dropped and counted, the first kept. The same
    id with other content, or the same question and options with another answer, is a bad row: on
    a bad row it raises BadRowError or, with skip_bad_rows, lists the row in `quarantine` (source,
    row, column, reason, raw)."""

    def __init__(self, path: Path, columns: Mapping[str, str | None], skip_bad_rows: bool):
        self.path, self.columns, self.skip = path, columns, skip_bad_rows
        self.rows: list[dict[str, Any]] = []
        # the first row kept per id and per content id: (row number, normalized row)
        self.by_id: dict[str, tuple[int, dict[str, Any]]] = {}
        self.by_content: dict[str, tuple[int, dict[str, Any]]] = {}
        self.quarantine: list[dict[str, Any]] = []
        self.duplicates = self.converted = 0
        self.variants = 0  # duplicates whose id or metadata differ from the row kept

    def add(self, rows: Iterable[Record], **normalize: Any) -> None:
        for rowno, raw, problem in rows:
            try:
                if problem is not None:
                    raise problem
                row, converted = normalize_record(raw, self.columns, **normalize)
                keep = self._keep(rowno, row)
            except FieldError as err:
                if not self.skip:
                    raise BadRowError(self.path, rowno, err.column, err.message) from None
                self.quarantine.append({
                    "source": str(self.path), "row": rowno, "column": err.column,
                    "reason": err.message, "raw": json.dumps(jsonable(raw), ensure_ascii=False),
                })
                continue
            if keep:
                self.rows.append(row)
                self.converted += converted

    def _keep(self, rowno: int, row: dict[str, Any]) -> bool:
        """False for a duplicate of an earlier row; FieldError if it clashes with one."""
        key = content_id(row["question"], row["options"])
        # without an id column the id is `key`: name the content, not a hash, in the messages
        prev = self.by_id.get(row["id"]) if self.columns.get("id") else None
        if prev is not None:
            same = f"same id {row['id']!r} as row {prev[0]}"
            differs = next((f for f in ("question", "options") if prev[1][f] != row[f]), None)
            if differs:
                raise FieldError(self.columns.get(differs), f"{same} but different {differs}")
        else:
            prev = self.by_content.get(key)
            same = f"same question and options as row {prev[0]}" if prev else ""
        if prev is None:
            self.by_id[row["id"]] = self.by_content[key] = (rowno, row)
            return True
        mine, theirs = row.get("answer"), prev[1].get("answer")
        if mine != theirs:  # one of the two answers is wrong: not ours to pick
            raise FieldError(self.columns.get("answer"), f"{same} but different answer "
                                                         f"({show(mine)}; row {prev[0]}: {show(theirs)})")
        self.duplicates += 1
        self.variants += int(prev[1] != row)
        return False
