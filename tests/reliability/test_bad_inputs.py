"""Every case of the bad-input corpus (corpus.py) through the real `semievol` command line, checked
by runner.py: the exit code, one clear error line naming the file (row, column), no traceback,
nothing changed by a failed command, nothing silently dropped. Plus the rules behind some cases.

    .venv/bin/pytest -q tests/reliability     # ~40 s, most of it the two cases run through Prefect

No model is loaded; two ingest cases start Prefect's temporary server (cli=True), the rest run in
process. The other files here: test_kill.py (kill -9 during evolve, kill.py), test_fault_proxy.py
(faults between the backend and vLLM, fault_proxy.py and proxy_run.py), test_ingest_during_evolve.py
(ingest appending while a run reads the dataset).
"""

from __future__ import annotations

import pytest

from corpus import CASES, GOOD_LABELED, KINDS, NAN_OPTIONS, labeled_with, paper, table
from runner import run_case
from semievol_core import answers, letter_scores, prompts, schema
from semievol_core.paper_csv import import_csv_dir
from semievol_core.schema import BadRowError, DataError


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_case(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert not outcome.problems, "\n".join(outcome.problems)


def test_the_corpus_covers_every_command_with_bad_and_acceptable_inputs():
    assert len(CASES) >= 40
    for kind in KINDS:
        cases = [c for c in CASES if c.kind == kind]
        assert any(c.exit_code == 2 for c in cases) and len(cases) >= 10, kind
    assert sum(c.cli for c in CASES) <= 3  # the Prefect server start is the slow part


def test_option_letters_are_defined_once():
    assert answers.LETTERS is schema.LETTERS is prompts.LETTERS is letter_scores.LETTERS
    assert schema.MAX_OPTIONS == len(schema.LETTERS) == 10
    ten = [f"option {i}" for i in range(10)]
    # what import accepts, a prompt can show and an answer can name
    assert "J. option 9" in prompts.format_question("Q?", ten)
    assert answers.parse_choice("Answer: J", ten).value == "J"
    with pytest.raises(ValueError, match="at most 10"):
        prompts.format_question("Q?", ten + ["one more"])


def test_a_nan_option_is_quarantined_with_its_reason(tmp_path):
    paper(labeled=labeled_with(("Q?", NAN_OPTIONS, "B")))(tmp_path)
    with pytest.raises(BadRowError) as info:
        import_csv_dir(tmp_path / "src", tmp_path / "out")
    assert (info.value.row, info.value.column) == (2, "options")
    summary = import_csv_dir(tmp_path / "src", tmp_path / "out", skip_bad_rows=True)
    assert summary.counts["labeled"] == 2 and summary.quarantined == 1
    (bad,) = [r for r in _quarantine(tmp_path / "out")]
    assert bad["row"] == 2 and bad["reason"].startswith("option 1 is NaN")


def test_conflicting_duplicates_name_both_rows_and_keep_the_first(tmp_path):
    first = ("Q?", ["a", "b"], "A")
    paper(labeled=table([first, *GOOD_LABELED[1:], first[:2] + ("B",)]))(tmp_path)
    with pytest.raises(BadRowError, match=r"row 4, column 'answer': same question and options as row 1"):
        import_csv_dir(tmp_path / "src", tmp_path / "out")
    import_csv_dir(tmp_path / "src", tmp_path / "out", skip_bad_rows=True)
    (bad,) = _quarantine(tmp_path / "out")
    assert bad["row"] == 4 and "row 1: 'A'" in bad["reason"]


def test_bad_row_errors_keep_their_class_when_pickled():
    import pickle

    err = pickle.loads(pickle.dumps(BadRowError("a/b.csv", 3, "answer", "bad")))
    assert type(err) is BadRowError and isinstance(err, DataError)
    assert str(err) == "a/b.csv row 3, column 'answer': bad"


def _quarantine(out):
    from semievol_core.data import read_table

    return read_table(out / "quarantine.parquet", "quarantine").to_dict("records")
