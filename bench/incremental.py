"""Incremental-run benchmark: what a scheduled evolve costs when little or nothing changed.

    .venv/bin/python bench/incremental.py                    # ~10 min on 2 CPU cores
    .venv/bin/python bench/incremental.py --labeled 64 --unlabeled 256 --test 100

Four `semievol` CLI runs, one process each, exactly as a user or a scheduled deployment starts
them, on one FPB-derived dataset (bench/runs/incremental/data, built from ../shared, git-ignored)
with the `recommended` configuration:
  cold    first run into an empty run directory (nothing cached);
  rerun   the same command again;
  plus10  after `semievol ingest` appends 10% new unlabeled rows (a JSONL file in an inbox);
  theta   after that, the same command with --theta 0.3.
For each: wall time and its ratio to the cold run, the generation step's time (report.json's
per-step timings) and its ratio to the cold one, and how many questions were generated (rows of the
shard files that run wrote), and the peak RSS of the largest `semievol` process so far. The runs talk to the Prefect server in PREFECT_API_URL when set,
otherwise each starts Prefect's temporary local server (that start-up is in its wall time).
Writes bench/results/incremental.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "datasets" / "semievol"
SEMIEVOL = Path(sys.executable).parent / "semievol"


def build_dataset(work: Path, n_lab: int, n_unl: int, n_test: int, seed: int = 0) -> tuple[Path, Path]:
    """A dataset dir with n_lab/n_unl/n_test FPB rows, and an inbox file with 10% more unlabeled rows."""
    from semievol_core.data import append_part, load_dataset, write_table
    from semievol_core.paper_csv import import_csv_dir

    full = HERE / "runs" / "data" / "fpb"
    if not (full / "labeled.parquet").exists():
        import_csv_dir(SHARED / "fpb", full, overwrite=True)
    ds = load_dataset(full)
    data = work / "data"
    shutil.rmtree(work, ignore_errors=True)
    write_table(ds.labeled.sample(n=n_lab, random_state=seed).reset_index(drop=True), data / "labeled.parquet", "labeled")
    write_table(ds.test.sample(n=n_test, random_state=seed).reset_index(drop=True), data / "test.parquet", "test")
    unl = ds.unlabeled.sample(n=n_unl + max(1, n_unl // 10), random_state=seed).reset_index(drop=True)
    append_part(unl.iloc[:n_unl], data / "unlabeled", "unlabeled")
    if ds.oracle is not None:
        write_table(ds.oracle, data / "oracle.parquet", "oracle")
    inbox = work / "inbox"
    inbox.mkdir(parents=True)
    new = unl.iloc[n_unl:]
    with open(inbox / "new-logs.jsonl", "w", encoding="utf-8") as f:
        for q, o in zip(new["question"], new["options"]):
            f.write(json.dumps({"question": q, "options": list(o) if o is not None else None}) + "\n")
    return data, inbox


def shard_rows(run_dir: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    out = {}
    for f in sorted((run_dir / "responses").glob("shard-*.parquet")):
        out[f.name] = len(set(pq.read_table(f, columns=["unlabeled_id"]).column(0).to_pylist()))
    return out


def run_case(args: list[str], run_dir: Path) -> dict:
    before = shard_rows(run_dir) if (run_dir / "responses").exists() else {}
    t0 = time.perf_counter()
    proc = subprocess.run([str(SEMIEVOL), *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"semievol {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    # Peak RSS of the largest child so far (Linux ru_maxrss: KiB); the cold run sets it.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    after = shard_rows(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    timings = report["timings"]
    return {"wall_s": round(wall, 1), "generation_s": round(timings.get("generate", 0.0), 2),
            "rows_generated": sum(n for name, n in after.items() if name not in before),
            "timings": timings, "n_unlabeled": report["selection"]["n_unlabeled"],
            "children_peak_rss_mb": round(peak)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labeled", type=int, default=32)
    ap.add_argument("--unlabeled", type=int, default=128)
    ap.add_argument("--test", type=int, default=50)
    args = ap.parse_args()
    from quality import machine

    work = HERE / "runs" / "incremental"
    data, inbox = build_dataset(work, args.labeled, args.unlabeled, args.test)
    run_dir = work / "run"
    evolve = ["evolve", "--data", str(data), "--out", str(run_dir), "--config",
              str(ROOT / "deployments" / "configs" / "recommended.yaml")]
    records = []
    for case, extra in (("cold", []), ("rerun", []), ("plus10", None), ("theta", ["--theta", "0.3"])):
        if case == "plus10":
            t0 = time.perf_counter()
            proc = subprocess.run([str(SEMIEVOL), "ingest", str(inbox), "--into", str(data)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"ingest failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
            ingest_s = time.perf_counter() - t0
            extra = []
        rec = {"case": case, **run_case(evolve + extra, run_dir)}
        if case == "plus10":
            rec["ingest_s"] = round(ingest_s, 1)
        records.append(rec)
        print(f"{case}: wall {rec['wall_s']} s, generation {rec['generation_s']} s, "
              f"{rec['rows_generated']} question(s) generated, {rec['n_unlabeled']} unlabeled", flush=True)
    cold = records[0]
    for r in records:
        r["ratio_to_cold"] = round(r["wall_s"] / cold["wall_s"], 4)
        r["generation_ratio_to_cold"] = round(r["generation_s"] / cold["generation_s"], 4) if cold["generation_s"] else None
    print("| case | wall s | × cold | generation s | × cold gen | questions generated |\n|---|---:|---:|---:|---:|---:|")
    for r in records:
        print(f"| {r['case']} | {r['wall_s']} | {r['ratio_to_cold']:.3f} | {r['generation_s']} | "
              f"{r['generation_ratio_to_cold']} | {r['rows_generated']} |")
    out = HERE / "results" / "incremental.json"
    out.write_text(json.dumps({"machine": machine(), "settings": {**vars(args), "config": "deployments/configs/recommended.yaml",
                                                                   "prefect_api_url": os.environ.get("PREFECT_API_URL")},
                               "records": records}, indent=2))


if __name__ == "__main__":
    main()
