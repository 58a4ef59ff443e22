"""Reliability benchmark (issue 12): the bad-input corpus through the `semievol` command line, and
on request kill -9 trials and the fault-injecting proxy.

    .venv/bin/python bench/reliability.py                    # the corpus: ~1 min on 2 cores, no model
    .venv/bin/python bench/reliability.py --no-cli           # skip the cases run through Prefect's server
    .venv/bin/python bench/reliability.py --no-corpus --kill-trials 10   # ~20 min: 10 killed runs, re-run
    .venv/bin/python bench/reliability.py --no-corpus --fault-proxy      # starts a vLLM server (.venv-vllm)
    .venv/bin/python bench/reliability.py --no-corpus --fault-proxy --vllm-url http://127.0.0.1:8000/v1

Writes bench/results/reliability.json, keeping what the parts not run this time wrote before.

The corpus: every case of tests/reliability/corpus.py with tests/reliability/runner.py (the same
runner and checks as tests/reliability/test_bad_inputs.py); a table (one line per case, then the
totals) and:
  cases             cases tried
  clear_errors      refused as expected: exit 2 and one `semievol: error:` line matching the
                    case's regex, which names the file (and the row and column where they apply)
  accepted          accepted as expected (exit 0; for configs: passed, then no dataset)
  tracebacks        a traceback on stderr or an exception out of main()      must be 0
  silent_drops      rows of an accepted file neither imported, counted nor quarantined  must be 0
  changed_on_failure  a failed command changed the output / dataset directory  must be 0
  failed            cases with any problem (listed under "problems")

--kill-trials N (tests/reliability/kill.py): `semievol evolve` on a tiny random Llama killed with
SIGKILL at N seeded points spread over the phases of a run, each then run again and checked
against one clean run; `kill_trials: {tried, survived, per_trial: [{phase, observed, ...}]}`.

--fault-proxy (tests/reliability/proxy_run.py): the server-facing steps against a real vLLM
server, twice straight and once through tests/reliability/fault_proxy.py; `fault_proxy:
{identical, deterministic, injected: {kind: n}, requests, forwarded, ...}`.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "reliability")]
RESULTS = HERE / "results"


def corpus(no_cli: bool) -> tuple[dict, bool]:
    """The corpus part: its JSON entries, and whether every must-be-zero total is 0."""
    from corpus import CASES
    from runner import run_case

    cases = [c for c in CASES if not (no_cli and c.cli)]
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
    must_be_zero = ("tracebacks", "silent_drops", "changed_on_failure", "failed")
    entries = {"settings": {"no_cli": no_cli}, "totals": totals, "cases_by_kind": by_kind,
               "problems": {o.name: o.problems for o in outcomes if o.problems}, "records": records}
    return entries, not any(totals[k] for k in must_be_zero)


def kill_trials(n: int, seed: int) -> dict:
    """The kill -9 part (kill.py): one clean run, then n trials over the phases."""
    from conftest import build_tiny_llama
    from kill import Setup, clean_run, kill_trial, trial_plan

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="semievol-kill-") as tmp:
        work = Path(tmp)
        setup = Setup.make(work, build_tiny_llama(work / "tiny-llama"))
        clean = clean_run(setup)
        trials = []
        for i, (phase, trial_seed) in enumerate(trial_plan(n, seed)):
            res = kill_trial(setup, clean, work / f"trial-{i:02d}", phase, trial_seed)
            print(f"kill {i:2d} {phase:<15} killed in {res.observed or '-':<22} after {res.killed_after:6.1f} s  "
                  f"{res.completed_at_kill:2d} done, {res.executed_on_rerun:2d} re-run  "
                  f"{'survived' if res.survived else 'FAILED'}")
            for problem in res.problems:
                print(f"{'':8}! {problem}")
            trials.append(json.loads(json.dumps(res.record()).replace(str(work), "<work>")))
    survived = sum(t["survived"] for t in trials)
    print(f"\nkill -9 trials: {survived} of {len(trials)} survived ({time.perf_counter() - start:.0f} s)")
    return {"tried": len(trials), "survived": survived, "seed": seed, "per_trial": trials}


def fault_proxy(seed: int, url: str | None) -> dict:
    """The fault-proxy part (proxy_run.py) against the vLLM server at `url`, or one started here."""
    from proxy_run import proxy_trial
    from semievol_core.models import resolve_model
    from vllm_server import smollm2_with_lora, vllm_available

    model = resolve_model("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory(prefix="semievol-proxy-") as tmp:
        if url:
            res = proxy_trial(url, model, Path(tmp), seed=seed)
        else:
            ok, why = vllm_available()
            if not ok:
                raise SystemExit(f"--fault-proxy: {why}")
            (Path(tmp) / "server").mkdir()
            with smollm2_with_lora(model, Path(tmp) / "server") as server:
                res = proxy_trial(server.base_url, model, Path(tmp), seed=seed)
    print(f"fault proxy: identical {res.identical} (deterministic {res.deterministic}), injected "
          f"{res.injected} in {res.requests} requests ({res.seconds:.0f} s)")
    return {**res.record(), "seed": seed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-cli", action="store_true", help="skip the corpus cases run through Prefect")
    parser.add_argument("--no-corpus", action="store_true", help="skip the corpus (its last results are kept)")
    parser.add_argument("--kill-trials", type=int, default=0, metavar="N", help="N kill -9 trials (default 0)")
    parser.add_argument("--fault-proxy", action="store_true", help="the fault-proxy run (needs .venv-vllm)")
    parser.add_argument("--vllm-url", metavar="URL", help="--fault-proxy against this running server (SmolLM2 "
                        "served as smollm2, a LoRA as rand: tests/vllm_server.py) instead of starting one")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points and of the proxy's faults")
    args = parser.parse_args()

    from quality import machine

    out = RESULTS / "reliability.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    ok = True
    if not args.no_corpus:
        entries, ok = corpus(args.no_cli)
        results.update(entries)
    if args.kill_trials:
        results["kill_trials"] = kill_trials(args.kill_trials, args.seed)
        ok = ok and results["kill_trials"]["survived"] == results["kill_trials"]["tried"]
    if args.fault_proxy:
        results["fault_proxy"] = fault_proxy(args.seed, args.vllm_url)
        ok = ok and results["fault_proxy"]["identical"]
    results["machine"] = machine()

    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
