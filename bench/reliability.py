"""Reliability benchmark (issue 12): the bad-input corpus through the `semievol` command line.

    .venv/bin/python bench/reliability.py            # ~1 min on 2 cores; no model is loaded
    .venv/bin/python bench/reliability.py --no-cli   # skip the cases run through Prefect's server

Runs every case of tests/reliability/corpus.py with tests/reliability/runner.py (the same runner
and checks as tests/reliability/test_bad_inputs.py), prints a table (one line per case, then the
totals) and writes bench/results/reliability.json:
  cases             cases tried
  clear_errors      refused as expected: exit 2 and one `semievol: error:` line matching the
                    case's regex, which names the file (and the row and column where they apply)
  accepted          accepted as expected (exit 0; for configs: passed, then no dataset)
  tracebacks        a traceback on stderr or an exception out of main()      must be 0
  silent_drops      rows of an accepted file neither imported, counted nor quarantined  must be 0
  changed_on_failure  a failed command changed the output / dataset directory  must be 0
  failed            cases with any problem (listed under "problems")
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "reliability")]
RESULTS = HERE / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-cli", action="store_true", help="skip the cases run through Prefect")
    args = parser.parse_args()

    from corpus import CASES
    from quality import machine
    from runner import run_case

    cases = [c for c in CASES if not (args.no_cli and c.cli)]
    outcomes, records = [], []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="semievol-reliability-") as tmp:
        for i, case in enumerate(cases):
            work = Path(tmp) / f"{i:03d}-{case.name}"
            work.mkdir()
            outcome = run_case(case, work)
            outcomes.append(outcome)
            status = "ok" if not outcome.problems else "FAIL"
            print(f"{case.kind:<10} {case.name:<34} exit {outcome.exit_code!s:<4} {status:<4} "
                  f"{outcome.seconds:6.2f}s  {case.expect}")
            for problem in outcome.problems:
                print(f"{'':16}! {problem}")
            # the temporary directory's name out of the committed results: it differs every run
            record = json.loads(json.dumps(asdict(outcome)).replace(str(work), "<work>"))
            records.append(dict(record, seconds=round(outcome.seconds, 3), expect=case.expect))

    totals = {
        "cases": len(outcomes),
        "clear_errors": sum(o.clear_error and not o.accepted and not o.problems for o in outcomes),
        "accepted": sum(o.accepted and not o.problems for o in outcomes),
        "tracebacks": sum(o.traceback for o in outcomes),
        "silent_drops": sum(o.silent_drop for o in outcomes),
        "changed_on_failure": sum(o.changed_on_failure for o in outcomes),
        "failed": sum(bool(o.problems) for o in outcomes),
    }
    by_kind = {kind: sum(o.kind == kind for o in outcomes) for kind in sorted({o.kind for o in outcomes})}
    print("\n" + "  ".join(f"{k} {v}" for k, v in totals.items()) + f"  ({time.perf_counter() - start:.0f} s)")

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "reliability.json"
    out.write_text(json.dumps({
        "machine": machine(), "settings": vars(args), "totals": totals, "cases_by_kind": by_kind,
        "problems": {o.name: o.problems for o in outcomes if o.problems},
        "records": records,
    }, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    must_be_zero = ("tracebacks", "silent_drops", "changed_on_failure", "failed")
    return 1 if any(totals[k] for k in must_be_zero) else 0


if __name__ == "__main__":
    sys.exit(main())
