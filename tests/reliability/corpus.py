"""The bad-input corpus (issue 12): inputs `semievol import-csv`, `semievol ingest` and evolve's config
loading must either accept, or refuse with one line naming the file (and the row and column).

    from corpus import CASES
    case = CASES[0]
    args = case.build(work)         # writes the case's files under the empty dir `work`; extra CLI args
    case.exit_code, case.stderr     # what the CLI must do: its exit code, a regex of its error line

No input file is stored in the repository: each case's builder writes it when the case runs.
Where the builders write, and the command tests/reliability/runner.py runs on it:
  import-csv  work/src/{labeled,unlabeled,test}.csv    semievol import-csv work/src --out work/out
  ingest      work/inbox/<one file>                    semievol ingest work/inbox --into work/data
              (work/data: the dataset GOOD_* imported, made by the runner)
  config      work/run.yaml (when the case has one)    semievol evolve --data work/no-data --out work/run
              (work/no-data does not exist: an accepted config ends in "dataset directory not
              found", before any flow starts)
Some "bad" inputs must be accepted (a BOM, CRLF line ends, a 1-based answer number, a 200,000
character question): those cases expect exit code 0, or for configs the missing dataset.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

KINDS = ("import-csv", "ingest", "config")
SKIP_HINT = "--skip-bad-rows"  # every import-csv error about a row must name this option


@dataclass(frozen=True)
class Case:
    name: str
    kind: str                              # one of KINDS
    build: Callable[[Path], list[str]]     # writes the input under work/, returns extra CLI args
    exit_code: int                         # 0 accepted, 2 a user error
    stderr: str | None                     # regex the one `semievol: error:` line must match
    expect: str                            # the expectation in words (the report's table)
    stdout: str | None = None              # regex stdout must contain (accepted cases)
    cli: bool = False                      # ingest: through the real Prefect flow, in a subprocess


# ------------------------------------------------------------------ the good files

HEADER = ("question", "options", "answer")
GOOD_LABELED = [
    ("Which one is a fruit?", ["apple", "stone", "iron", "glass"], "A"),
    ("Which one is a colour?", ["table", "blue", "chair", "door"], "B"),
    ("Which one is an animal?", ["rock", "sand", "cat", "dust"], "C"),
]
GOOD_TEST = [
    ("Which one is a planet?", ["Mars", "bread", "shoe", "pen"], "A"),
    ("Which one is a metal?", ["wool", "copper", "paper", "wood"], "B"),
]
GOOD_UNLABELED = [
    ("Which one is a tree?", ["oak", "salt", "milk", "coin"], "A"),
    ("Which one is a drink?", ["nail", "tea", "brick", "rope"], "B"),
    ("Which one is a tool?", ["cloud", "song", "hammer", "idea"], "C"),
]
NEW_QUESTIONS = [  # unlabeled rows for the ingest cases: in none of the tables above
    {"question": f"Which one is number {i}?", "options": [str(i), "x", "y"], "src": "app"}
    for i in range(1, 4)
]
ANSWER_KEYS = ("answer", "label", "gt")  # the corpus' answer columns: never in unlabeled metadata


def table(rows, header=HEADER, end: str = "\n") -> str:
    """CSV text as the paper's files have it: a list is written as JSON (the options column)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=end)
    writer.writerow(header)
    writer.writerows([json.dumps(v) if isinstance(v, list) else v for v in row] for row in rows)
    return buf.getvalue()


def labeled_with(row, at: int = 2) -> str:
    """labeled.csv with data row `at` (1-based) replaced by `row`."""
    rows = list(GOOD_LABELED)
    rows[at - 1] = row
    return table(rows)


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")  # bytes as written: "\r\n" stays "\r\n"
    path.write_bytes(content)


# ------------------------------------------------------------------ builders

_GOOD = object()  # a split left as GOOD_*


def paper(labeled=_GOOD, test=_GOOD, unlabeled=_GOOD, args: tuple[str, ...] = (),
          old_out: bool = False) -> Callable[[Path], list[str]]:
    """work/src with the paper's three CSVs, each GOOD_* unless given (text, bytes, or None for no
    file); old_out: work/out already holds a dataset (from the good files)."""
    def build(work: Path) -> list[str]:
        goods = {"labeled": table(GOOD_LABELED), "test": table(GOOD_TEST),
                 "unlabeled": table(GOOD_UNLABELED)}
        for split, content in (("labeled", labeled), ("test", test), ("unlabeled", unlabeled)):
            content = goods[split] if content is _GOOD else content
            if content is not None:
                write(work / "src" / f"{split}.csv", content)
        if old_out:
            from semievol_core.paper_csv import import_csv_dir

            old = work / "old-src"
            for split, content in goods.items():
                write(old / f"{split}.csv", content)
            import_csv_dir(old, work / "out")
        return list(args)
    return build


def inbox(name: str, content: str | bytes | pd.DataFrame) -> Callable[[Path], list[str]]:
    """work/inbox/<name>; a DataFrame is written as Parquet (its column types as they are)."""
    def build(work: Path) -> list[str]:
        path = work / "inbox" / name
        if isinstance(content, pd.DataFrame):
            path.parent.mkdir(parents=True, exist_ok=True)
            content.to_parquet(path)
        else:
            write(path, content)
        return []
    return build


def jsonl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def config(text: str | bytes | None = None, *args: str) -> Callable[[Path], list[str]]:
    """work/run.yaml with `text` passed as --config (none when text is None), then `args`."""
    def build(work: Path) -> list[str]:
        if text is None:
            return list(args)
        write(work / "run.yaml", text)
        return ["--config", str(work / "run.yaml"), *args]
    return build


# ------------------------------------------------------------------ expected error lines

def at(file: str, row: int | None = None, column: str | None = None) -> str:
    """Regex of the place an error names: `src/labeled.csv row 2, column 'answer': `."""
    where = file + (f" row {row}" if row is not None else "")
    where += f", column {column!r}" if column is not None else ""
    return re.escape(where + ": ")


def import_error(file: str, row: int | None, column: str | None, message: str) -> str:
    return "^semievol: error: " + at(f"src/{file}", row, column) + message


def rejected(file: str, row: int | None, column: str | None, message: str) -> str:
    """The line `semievol ingest` prints for a file it rejected."""
    return (f"^semievol: error: {re.escape(file)} rejected \\(moved to \\S+/rejected/{re.escape(file)}\\): "
            + at(f"inbox/{file}", row, column) + message)


def config_error(message: str) -> str:
    return r"^semievol: error: \S*run\.yaml(?: \+ --set)?: " + message


NOT_LETTER = r"{0} is not an option letter \(4 options: A-D\)"
ACCEPTED_CONFIG = r"^semievol: error: \S*no-data: dataset directory not found$"
NAN_OPTIONS = '[NaN, "One", "Two", "Three"]'
ELEVEN = [f"option {i}" for i in range(1, 12)]
TWENTY_SEVEN = [f"option {i}" for i in range(1, 28)]
LONG_QUESTION = "Which word ends this long text? " + "lorem ipsum " * 16_666 + "end"  # 200,000+ chars
UTF16 = table(GOOD_LABELED).encode("utf-16")  # with its BOM, as "Unicode text" exports have it
JUNK = bytes(range(256)) * 4  # every byte value: not UTF-8 from byte 0x80 on


# ------------------------------------------------------------------ the cases

def _import_cases() -> list[Case]:
    c, L = "import-csv", GOOD_LABELED
    good_out = r"labeled\s+3 rows"
    bad_row = f"{SKIP_HINT} quarantines such rows"
    return [
        Case("good_files", c, paper(), 0, None, "accepted: 3 labeled, 3 unlabeled, 2 test", good_out),
        Case("empty_file", c, paper(labeled=""), 2, import_error("labeled.csv", None, None,
             r"file is empty \(no header\)$"), "error: the file is empty"),
        Case("blank_lines_only", c, paper(labeled="\n \n\n"), 2, import_error(
             "labeled.csv", None, None, "file is empty"), "error: the file is empty"),
        Case("header_only", c, paper(labeled=table([])), 2, import_error(
             "labeled.csv", None, None, "no data rows$"), "error: no data rows"),
        Case("bom", c, paper(labeled="\ufeff" + table(L)), 0, None,
             "accepted: the BOM spreadsheets add is not part of the first column's name", good_out),
        Case("crlf", c, paper(labeled=table(L + [("Two\r\nlines?", ["a", "b"], "B")], end="\r\n")),
             0, None, "accepted: CRLF line ends, also inside a quoted question", r"labeled\s+4 rows"),
        Case("bom_and_crlf_everywhere", c, paper(*("\ufeff" + table(rows, end="\r\n") for rows in (
             L, GOOD_TEST, GOOD_UNLABELED))), 0, None, "accepted: BOM + CRLF in every split", good_out),
        Case("latin1_bytes", c, paper(labeled=table(L).encode() + "Café?,\"[\"\"a\"\", \"\"b\"\"]\",A\n"
             .encode("latin-1")), 2, import_error("labeled.csv", None, None,
             r"not UTF-8 text \(byte 0xe9 on line 5\); re-save as UTF-8$"), "error: not UTF-8, the line named"),
        Case("utf16_export", c, paper(labeled=UTF16), 2, import_error(
             "labeled.csv", None, None, r"not UTF-8 text \(byte 0xff on line 1\)"), "error: not UTF-8"),
        Case("utf16_without_bom", c, paper(labeled=table(L).encode("utf-16-le")), 2, import_error(
             "labeled.csv", None, None, r"not a text file \(a NUL byte on line 1"),
             "error: NUL bytes (binary or UTF-16), the line named"),
        Case("binary_junk", c, paper(test=JUNK), 2, import_error(
             "test.csv", None, None, r"not UTF-8 text \(byte 0x80 on line 2\)"), "error: not UTF-8"),
        Case("ragged_row_long", c, paper(labeled=table(L) + 'Q?,"[""a"", ""b""]",A,extra\n'), 2,
             import_error("labeled.csv", 4, None, "has 4 fields, the header has 3 .*" + bad_row),
             "error: row 4 has a field too many"),
        Case("ragged_row_short", c, paper(labeled=table(L[:1]) + "Lonely question?\n" + table(L[1:])
             .split("\n", 1)[1]), 2, import_error("labeled.csv", 2, None, "has 1 fields, the header has 3"),
             "error: row 2 has too few fields"),
        Case("ragged_row_skipped", c, paper(labeled=table(L) + "Q?,x\n", args=("--skip-bad-rows",)), 0,
             None, "accepted with --skip-bad-rows: the row quarantined with its reason", r"quarantined: 1"),
        Case("unterminated_quote", c, paper(labeled=table(L[:1]) + '"Never closed?,[],A\n' + table(L[1:])
             .split("\n", 1)[1]), 2, import_error("labeled.csv", 2, None, "malformed CSV: .*a quote left "
             f"open.*{SKIP_HINT} cannot skip it"), "error: row 2's quote is left open (it would eat rows)"),
        Case("missing_options_column", c, paper(labeled=table([(q, a) for q, _, a in L], ("question", "answer"))),
             2, import_error("labeled.csv", None, "options", "missing required column$"),
             "error: the column named"),
        Case("duplicate_column_names", c, paper(labeled=table([r + ("x",) for r in L], HEADER + ("answer",))),
             2, import_error("labeled.csv", None, None, "duplicate column names in header"),
             "error: a column name twice"),
        Case("options_not_json", c, paper(labeled=labeled_with(("Q?", "[apple, pear]", "A"))), 2,
             import_error("labeled.csv", 2, "options", "options are not a JSON list of strings"),
             "error: options not JSON"),
        Case("options_a_dict", c, paper(labeled=labeled_with(("Q?", '{"A": "apple", "B": "pear"}', "A"))),
             2, import_error("labeled.csv", 2, "options", "options are not a JSON list of strings"),
             "error: options a JSON object"),
        Case("options_a_string", c, paper(labeled=labeled_with(("Q?", '"apple"', "A"))), 2,
             import_error("labeled.csv", 2, "options", "options are not a JSON list"), "error"),
        Case("options_empty_list", c, paper(labeled=labeled_with(("Q?", "[]", "A"))), 2,
             import_error("labeled.csv", 2, "options", "options list is empty"), "error: no options"),
        Case("options_empty_cell", c, paper(labeled=labeled_with(("Q?", "", "A"))), 2,
             import_error("labeled.csv", 2, "options", r"options are missing \(the dataset is multiple choice\)"),
             "error: a free-form row in a multiple-choice dataset"),
        Case("options_hold_null", c, paper(labeled=labeled_with(("Q?", '["apple", null]', "A"))), 2,
             import_error("labeled.csv", 2, "options", "option 2 is null, not text"), "error: option 2 null"),
        Case("options_hold_nan", c, paper(labeled=labeled_with(("Q?", NAN_OPTIONS, "B"))), 2,
             import_error("labeled.csv", 2, "options", r'option 1 is NaN, not text \(an option "None"'),
             "error: a bare NaN option (the text None read as missing?), not guessed"),
        Case("options_hold_nan_skipped", c, paper(labeled=labeled_with(("Q?", NAN_OPTIONS, "B")),
             args=("--skip-bad-rows",)), 0, None, "accepted with --skip-bad-rows: the NaN row quarantined",
             r"labeled\s+2 rows \(of 3 read\)(.|\n)*quarantined: 1"),
        Case("options_hold_numbers", c, paper(labeled=labeled_with(("Q?", "[1, 2, 3]", "A"))), 2,
             import_error("labeled.csv", 2, "options", "option 1 is not a string: 1 "), "error: not text"),
        Case("ten_options", c, paper(labeled=labeled_with(("Q?", ELEVEN[:10], "J"))), 0, None,
             "accepted: 10 options, answer J (the maximum)", good_out),
        Case("eleven_options", c, paper(labeled=labeled_with(("Q?", ELEVEN, "K"))), 2,
             import_error("labeled.csv", 2, "options", r"11 options; at most 10 \(A-J\)"),
             "error: more options than letters A-J"),
        Case("twenty_seven_options", c, paper(labeled=labeled_with(("Q?", TWENTY_SEVEN, "A"))), 2,
             import_error("labeled.csv", 2, "options", r"27 options; at most 10 \(A-J\)"), "error"),
        Case("answer_out_of_range", c, paper(labeled=labeled_with(("Q?", ["a", "b", "c", "d"], "E"))), 2,
             import_error("labeled.csv", 2, "answer", NOT_LETTER.format("'E'") + f" .*{SKIP_HINT}"),
             "error: E with 4 options"),
        Case("answer_lowercase", c, paper(labeled=labeled_with(("Q?", ["b", "a", "c", "d"], "b"))), 2,
             import_error("labeled.csv", 2, "answer", NOT_LETTER.format("'b'") + "; option letters are upper"),
             "error, not fixed up: 'b' could be option B or the option text b"),
        Case("answer_two_letters", c, paper(labeled=labeled_with(("Q?", ["a", "b", "c", "d"], "AB"))), 2,
             import_error("labeled.csv", 2, "answer", NOT_LETTER.format("'AB'")), "error: one letter only"),
        Case("answer_one_based_digit", c, paper(labeled=labeled_with(("Q?", ["w", "x", "y", "z"], "2"))), 0,
             None, "accepted: 2 is B (the paper's arc quirk), said in a note", r"1 answer\(s\) given as 1-based"),
        Case("answer_digit_out_of_range", c, paper(labeled=labeled_with(("Q?", ["a", "b", "c", "d"], "5"))),
             2, import_error("labeled.csv", 2, "answer", NOT_LETTER.format("'5'")), "error: 5 of 4"),
        Case("answer_zero", c, paper(labeled=labeled_with(("Q?", ["a", "b", "c", "d"], "0"))), 2,
             import_error("labeled.csv", 2, "answer", NOT_LETTER.format("'0'")), "error: 0 is not 1-based"),
        Case("answer_empty", c, paper(labeled=labeled_with(("Q?", ["a", "b", "c", "d"], ""))), 2,
             import_error("labeled.csv", 2, "answer", "answer is empty"), "error: labeled rows need answers"),
        Case("unlabeled_answer_empty", c, paper(unlabeled=table(GOOD_UNLABELED[:2] + [
             ("Q?", ["a", "b"], "")])), 0, None, "accepted: an unlabeled row needs no answer (no oracle row)",
             r"oracle\s+2 rows"),
        Case("answer_is_option_text", c, paper(labeled=labeled_with(("Q?", ["cat", "dog", "cow", "ant"],
             "dog"))), 2, import_error("labeled.csv", 2, "answer", NOT_LETTER.format("'dog'")
             + "; it is option B's text"), "error naming the letter it could be"),
        Case("answer_padded", c, paper(labeled=labeled_with(("Q?", ["a", "b", "c", "d"], " B "))), 0, None,
             "accepted: spaces around a letter", good_out),
        Case("question_empty", c, paper(labeled=labeled_with(("", ["a", "b"], "A"))), 2,
             import_error("labeled.csv", 2, "question", "question is empty"), "error"),
        Case("question_blank", c, paper(test=table(GOOD_TEST + [("  \t ", ["a", "b"], "A")])), 2,
             import_error("test.csv", 3, "question", "question is empty"), "error"),
        Case("question_200k_chars", c, paper(labeled=labeled_with((LONG_QUESTION, ["end", "lorem"], "A"))),
             0, None, "accepted: a 200,000-character question (a pasted document) imports whole", good_out),
        Case("conflicting_duplicates", c, paper(labeled=table(L + [(L[0][0], L[0][1], "D")])), 2,
             import_error("labeled.csv", 4, "answer", r"same question and options as row 1 but different "
                          r"answer \('D'; row 1: 'A'\)"), "error: which answer is right is not ours to pick"),
        Case("conflicting_duplicates_skipped", c, paper(labeled=table(L + [(L[0][0], L[0][1], "D")]),
             args=("--skip-bad-rows",)), 0, None, "accepted with --skip-bad-rows: the later row quarantined",
             r"quarantined: 1"),
        Case("repeat_with_other_metadata", c, paper(labeled=table(
             [(f"q{i}", *r, f"cat{i}") for i, r in enumerate(L)] + [("q9", *L[1], "other")],
             ("question_id", *HEADER, "category"))), 0, None,
             "accepted: a repeat (same question, options, answer) under another id dropped, counted",
             r"1 duplicate row\(s\) .*1 with another id or metadata\) dropped"),
        Case("same_id_other_question", c, paper(labeled=table(
             [(f"q{i}", *r) for i, r in enumerate(L)] + [("q1", "Other?", ["a", "b"], "A")], ("id", *HEADER))),
             2, import_error("labeled.csv", 4, "question", "same id 'q1' as row 2 but different question"),
             "error: one id, two questions"),
        Case("no_test_csv", c, paper(test=None), 2, import_error("test.csv", None, None, "file not found$"),
             "error: test.csv required"),
        Case("no_unlabeled_csv", c, paper(unlabeled=None), 0, None,
             "accepted: the unlabeled table is empty, said in a note", r"no unlabeled\.csv"),
        Case("out_not_empty", c, paper(old_out=True), 2,
             r"^semievol: error: \S*out is not empty; replace it with --overwrite", "error: nothing replaced"),
        Case("overwrite_with_bad_files", c, paper(labeled=labeled_with(("Q?", "[", "A")), old_out=True,
             args=("--overwrite",)), 2, import_error("labeled.csv", 2, "options", "options are not a JSON"),
             "error: the old dataset stays as it was"),
    ]


def _ingest_cases() -> list[Case]:
    c, new = "ingest", NEW_QUESTIONS
    unlabeled_csv = table([(r["question"], r["options"]) for r in new], ("question", "options"))
    return [
        Case("ingest_good_jsonl", c, inbox("logs.jsonl", jsonl(new)), 0, None, "accepted: 3 rows added",
             r"logs\.jsonl: ingested, 3 added"),
        Case("ingest_jsonl_one_broken_line", c, inbox("logs.jsonl", jsonl(
             [new[0], '{"question": "Half a line?", "opt', *new[1:]])), 0, None,
             "accepted: 3 rows added, line 2 quarantined (through Prefect)",
             r"3 added, .* 1 quarantined", cli=True),
        Case("ingest_jsonl_not_an_object", c, inbox("logs.jsonl", jsonl([*new, "[1, 2]"])), 0, None,
             "accepted: line 4 (a JSON list) quarantined", r"3 added, .* 1 quarantined"),
        Case("ingest_jsonl_every_line_broken", c, inbox("logs.jsonl", "{\n{\n"), 2, rejected(
             "logs.jsonl", 1, None, r"not valid JSON: .*\(no line is a JSON object\)$"),
             "error: rejected, line 1 named; the dataset untouched"),
        Case("ingest_every_row_bad", c, inbox("logs.jsonl", jsonl([{"question": "", "options": ["a"]},
             {"question": "Q?", "options": []}])), 2, rejected("logs.jsonl", 1, "question",
             r"question is empty \(every row is bad: 2 row\(s\), each one's reason in the rejected file's"),
             "error: rejected with every row's reason; the dataset untouched"),
        Case("ingest_empty_csv", c, inbox("logs.csv", ""), 2, rejected(
             "logs.csv", None, None, "file is empty"), "error: rejected"),
        Case("ingest_empty_jsonl", c, inbox("logs.jsonl", ""), 2, rejected(
             "logs.jsonl", None, None, r"file is empty \(no records\)"), "error: rejected"),
        Case("ingest_header_only_csv", c, inbox("logs.csv", "question,options\n"), 2, rejected(
             "logs.csv", None, None, "no data rows"), "error: rejected"),
        Case("ingest_csv_with_answer_column", c, inbox("logs.csv", table(
             [(r["question"], r["options"], "A") for r in new])), 2, rejected(
             "logs.csv", None, "answer", "unlabeled records must not carry answers"),
             "error: rejected whole; no answer reaches the unlabeled table (through Prefect)", cli=True),
        Case("ingest_label_and_gt_columns", c, inbox("logs.jsonl", jsonl(
             [dict(r, label="A", gt=r["options"][0]) for r in new])), 0, None,
             "accepted: label and gt kept out of the rows' metadata, a note says so",
             r"note: answer-revealing column\(s\) kept out of unlabeled metadata: gt .*label"),
        Case("ingest_bom_crlf_csv", c, inbox("logs.csv", "\ufeff" + unlabeled_csv.replace("\n", "\r\n")), 0,
             None, "accepted: BOM and CRLF", r"logs\.csv: ingested, 3 added"),
        Case("ingest_latin1_csv", c, inbox("logs.csv", unlabeled_csv.encode() + b'Caf\xe9?,"[""a""]"\n'), 2,
             rejected("logs.csv", None, None, r"not UTF-8 text \(byte 0xe9 on line 5\)"), "error: rejected"),
        Case("ingest_csv_ragged_row", c, inbox("logs.csv", unlabeled_csv + "Q?,[],extra\n"), 0, None,
             "accepted: the ragged row 4 quarantined", r"3 added, .* 1 quarantined"),
        Case("ingest_unterminated_quote", c, inbox("logs.csv", unlabeled_csv + '"Never closed?,[]\n'), 2,
             rejected("logs.csv", 4, None, "malformed CSV: .*never closed"), "error: rejected, row 4 named"),
        Case("ingest_options_hold_nan", c, inbox("logs.jsonl", jsonl(
             [*new, '{"question": "Q?", "options": [NaN, "One", "Two"]}'])), 0, None,
             "accepted: the NaN row 4 quarantined with its reason", r"3 added, .* 1 quarantined"),
        Case("ingest_free_form_row", c, inbox("logs.jsonl", jsonl([*new, {"question": "Why?", "options": None}])),
             0, None, "accepted: the row without options quarantined (the dataset is multiple choice)",
             r"3 added, .* 1 quarantined"),
        Case("ingest_duplicates_in_file", c, inbox("logs.jsonl", jsonl([*new, dict(new[0], src="web")])), 0,
             None, "accepted: the repeat (other metadata) dropped, counted", r"3 added, .* 1 duplicate\(s\)"),
        Case("ingest_test_question", c, inbox("logs.jsonl", jsonl([*new, {"question": GOOD_TEST[0][0],
             "options": GOOD_TEST[0][1]}])), 0, None, "accepted: the test question kept out, counted",
             r"3 added, 0 already present, 1 in the test set"),
        Case("ingest_parquet_question_ints", c, inbox("logs.parquet", pd.DataFrame(
             {"question": [1, 2], "options": [["a", "b"]] * 2})), 2, rejected(
             "logs.parquet", 1, "question", "question is not text: 1"), "error: rejected (wrong column type)"),
        Case("ingest_parquet_options_ints", c, inbox("logs.parquet", pd.DataFrame(
             {"question": ["Q1?", "Q2?"], "options": [[1, 2], [3, 4]]})), 2, rejected(
             "logs.parquet", 1, "options", "option 1 is not a string: 1"), "error: rejected (list<int64>)"),
        Case("ingest_parquet_junk", c, inbox("logs.parquet", JUNK), 2, rejected(
             "logs.parquet", None, None, "not a readable Parquet file"), "error: rejected"),
        Case("ingest_unsupported_type", c, inbox("logs.txt", "Which one is red?\n"), 2, rejected(
             "logs.txt", None, None, "unsupported file type '.txt'"), "error: rejected"),
    ]


def _config_cases() -> list[Case]:
    c = "config"
    return [
        Case("config_good", c, config("selection:\n  theta: 0.3\n"), 2, ACCEPTED_CONFIG,
             "accepted (then: no dataset)"),
        Case("config_empty_file", c, config(""), 2, ACCEPTED_CONFIG, "accepted: all defaults"),
        Case("config_theta_one", c, config("selection: {theta: 1}\n"), 2, ACCEPTED_CONFIG,
             "accepted: θ = 1 keeps all"),
        Case("config_unknown_key", c, config("selection: {theta: 0.3, thetta: 0.4}\n"), 2,
             config_error(r"selection\.thetta: Extra inputs are not permitted"), "error naming the key"),
        Case("config_unknown_nested_key", c, config("train:\n  epochz: 3\n"), 2,
             config_error(r"train\.epochz: Extra inputs are not permitted"), "error naming the key"),
        Case("config_unknown_top_key", c, config("thetta: 0.3\n"), 2,
             config_error("thetta: Extra inputs are not permitted"), "error naming the key"),
        Case("config_theta_zero", c, config("selection: {theta: 0}\n"), 2,
             config_error(r"selection\.theta: Input should be greater than 0 \(got 0\)"),
             "error: θ must be in (0, 1]"),
        Case("config_theta_negative", c, config("selection: {theta: -0.2}\n"), 2,
             config_error(r"selection\.theta: Input should be greater than 0"), "error"),
        Case("config_theta_above_one", c, config("selection: {theta: 1.5}\n"), 2,
             config_error(r"selection\.theta: Input should be less than or equal to 1"), "error"),
        Case("config_theta_text", c, config("selection: {theta: half}\n"), 2,
             config_error(r"selection\.theta: Input should be a valid number"), "error"),
        Case("config_flat_and_nested", c, config("theta: 0.3\nselection: {theta: 0.4}\n"), 2,
             config_error(r"theta and selection\.theta both given"), "error naming both"),
        Case("config_section_not_a_mapping", c, config("selection: 0.3\n"), 2,
             config_error("selection: Input should be a valid dictionary"), "error naming the section"),
        Case("config_openai_without_url", c, config("execution: {backend: {name: openai}}\n"), 2,
             config_error(r"execution\.backend\.openai\.base_url: Field required"), "error naming the field"),
        Case("config_vllm_rank_below_lora", c, config("execution: {backend: {name: vllm, max_lora_rank: 8}}\n"), 2,
             config_error(r"config: Value error, execution\.backend\.max_lora_rank 8 is below train\.lora_r 16"),
             "error with both numbers"),
        Case("config_yaml_syntax", c, config("selection: [0.3\n"), 2,
             config_error("cannot read config: "), "error naming the file"),
        Case("config_not_a_mapping", c, config("- theta\n- 0.3\n"), 2,
             config_error("a config must be a mapping"), "error"),
        Case("config_binary_junk", c, config(JUNK), 2, config_error("cannot read config: "), "error"),
        Case("config_missing_file", c, lambda work: ["--config", str(work / "missing.yaml")], 2,
             r"^semievol: error: \S*missing\.yaml: config file not found$", "error naming the file"),
        Case("unknown_preset", c, config(None, "--preset", "fpb-huge"), 2,
             r"^semievol: error: Invalid value for '--preset': .*'fpb-huge' is not one of", "usage error, one line"),
        Case("set_theta_zero", c, config(None, "--set", "selection.theta=0"), 2,
             r"^semievol: error: --set: selection\.theta: Input should be greater than 0", "error naming --set"),
        Case("set_unknown_key", c, config(None, "--set", "train.epochz=3"), 2,
             r"^semievol: error: --set: train\.epochz: Extra inputs are not permitted", "error"),
        Case("set_without_value", c, config(None, "--set", "selection.theta"), 2,
             r"^semievol: error: --set 'selection\.theta': expected KEY=VALUE", "error"),
        Case("theta_option_above_one", c, config(None, "--theta", "2"), 2,
             r"^semievol: error: --theta: selection\.theta: Input should be less than or equal to 1",
             "error naming --theta"),
    ]


CASES: list[Case] = _import_cases() + _ingest_cases() + _config_cases()
assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"
