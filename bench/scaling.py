"""Scaling benchmark: collaborative-generation time and peak RSS at 1x, 2x, 4x unlabeled rows.

    .venv/bin/python bench/scaling.py [--base 32]       # 32, 64, 128 FPB questions, k=3, n=4

Same work as bench/generation.py (project transformers backend), one subprocess per scale so each
peak RSS is its own. Linear cost means generation_s / n_unlabeled stays flat across scales; the
table prints that per-question time and its ratio to the 1x scale. Writes bench/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os

from generation import HERE, build_work, run_worker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    from quality import machine

    records = []
    for scale in (1, 2, 4):
        n = args.base * scale
        work_file = HERE / "runs" / f"scaling_work_{n}.json"
        work_file.parent.mkdir(parents=True, exist_ok=True)
        work_file.write_text(json.dumps(build_work(n)))
        r = run_worker("transformers", work_file, 0, args.threads)
        records.append({"scale": scale, "n_unlabeled": n, "generation_s": round(r["wall_s"], 1),
                        "s_per_question": round(r["wall_s"] / n, 3), "peak_rss_mb": round(r["peak_rss_mb"])})
    for r in records:
        r["per_question_ratio_to_1x"] = round(r["s_per_question"] / records[0]["s_per_question"], 2)
    (HERE / "results" / "scaling.json").write_text(json.dumps({"machine": machine(), "records": records}, indent=2))
    cols = list(records[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in records:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
