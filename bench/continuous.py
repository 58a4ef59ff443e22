"""Continuous evolution on FPB: nightly rounds on accumulating logs, through the CLI, as a user runs it.

    .venv/bin/python bench/continuous.py --nights 5          # ~15 min a night on 2 CPU cores
    .venv/bin/python bench/continuous.py --report            # rewrite the .md from the JSON

Night 0: a dataset with 64 labeled rows (class-stratified, seed 0), the first 200 of FPB's 1,357
unlabeled rows and all 453 test rows. Each later night, 230 more unlabeled rows arrive as a CSV in
an inbox (question and options only) and go in through `semievol ingest`; then
`semievol evolve` runs the recommended recipe as rounds (`rounds.warm_from: champion`,
`rounds.reuse_pseudo_labels: true`, the SemiEvol adapter continued from the warm model on labeled +
pseudo-labels) into one run directory, with the registry in the dataset. Per night:
the champion's accuracy with its 95% CI, the gate's decision and p, new rows, generation and
justification seconds, and generation seconds per new row. Results: bench/results/continuous.json
and .md, and the registry's history plot as bench/results/continuous.png; runs under
bench/runs/continuous/ (git-ignored; removed when a run starts).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

from label_efficiency import full_dataset, stratified
from quality import machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "runs" / "continuous"
OUT_JSON = HERE / "results" / "continuous.json"
FIRST, PER_NIGHT, LABELED = 200, 230, 64
ROUNDS = ["--set", "rounds.warm_from=champion", "--set", "rounds.reuse_pseudo_labels=true",
          "--set", "final.training=continue_union"]


def night0() -> tuple[Path, list]:
    """The dataset of night 0 and the unlabeled rows still to arrive, in FPB's order."""
    from semievol_core.data import read_table, write_table

    src, data = full_dataset(), WORK / "data"
    data.mkdir(parents=True)
    write_table(stratified(read_table(src / "labeled.parquet", "labeled"), LABELED, 0), data / "labeled.parquet",
                "labeled")
    for name in ("test.parquet", "oracle.parquet"):
        shutil.copy(src / name, data / name)
    unlabeled = read_table(src / "unlabeled", "unlabeled")
    write_table(unlabeled.iloc[:FIRST].reset_index(drop=True), data / "unlabeled" / "part-00000.parquet",
                "unlabeled")
    rest = unlabeled.iloc[FIRST:].reset_index(drop=True)
    return data, [rest.iloc[i:i + PER_NIGHT] for i in range(0, len(rest), PER_NIGHT)]


def semievol(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(ROOT / ".venv" / "bin" / "semievol"), *args], check=True, cwd=ROOT)
    return round(time.perf_counter() - t0, 1)


def arrive(rows, night: int) -> Path:
    """The night's new logs as an inbox CSV: id, question, options (JSON) and no answer."""
    import pandas as pd

    inbox = WORK / "inbox"
    inbox.mkdir(exist_ok=True)
    path = inbox / f"logs-night{night}.csv"
    pd.DataFrame({"id": rows["id"], "question": rows["question"],
                  "options": [json.dumps(list(o)) for o in rows["options"]]}).to_csv(path, index=False)
    return inbox


def shard_files(run: Path) -> dict[str, int]:
    """Every response and justification shard file of the run, with its mtime (ns)."""
    return {str(f.relative_to(run)): f.stat().st_mtime_ns
            for d in ("responses", "justified") if (run / d).is_dir() for f in sorted((run / d).iterdir())}


def champion_predictions(run: Path, promoted: bool) -> Path | None:
    """The predictions of the champion after the night: this night's SemiEvol adapter if it was
    promoted, else the champion that was evaluated before the gate (None: no champion yet)."""
    preds = run / "predictions" / ("semievol.parquet" if promoted else "champion.parquet")
    return preds if preds.exists() else None


def run_night(data: Path, night: int, new_rows: int) -> dict:
    from semievol_core.steps import compare

    run = WORK / "nightly"
    before = shard_files(run)
    wall = semievol("evolve", "--data", str(data), "--out", str(run), "--config",
                    str(ROOT / "deployments" / "configs" / "recommended.yaml"), *ROUNDS,
                    "--systems", "sft,semievol", "--no-progress")
    report = json.loads((run / "report.json").read_text())
    gate, reg, t = report["gate"], report["registry"], report["timings"]
    champion = report["systems"]["semievol"] if reg["promoted"] else (
        json.loads((data / "registry" / "adapters" / reg["champion"] / "record.json").read_text())["metrics"]
        if reg["champion"] else report["systems"]["sft"])
    gen = round(t.get("generate", 0.0), 1)
    after = shard_files(run)
    if night == 0:  # the baseline of the bar "after night 4 the champion beats night 0's SFT"
        shutil.copy(run / "predictions" / "sft.parquet", WORK / "night0_sft.parquet")
    preds = champion_predictions(run, reg["promoted"])
    vs_sft0 = compare(preds, WORK / "night0_sft.parquet") if preds else None
    return {"night": night, "new_rows": new_rows, "unlabeled": report["selection"]["n_unlabeled"],
            "wall_s": wall, "generate_s": gen, "justify_s": round(t.get("justify", 0.0), 1),
            "generate_s_per_new_row": round(gen / new_rows, 3) if new_rows else None,
            "champion": reg["champion"], "promoted": reg["promoted"], "champion_accuracy": champion["accuracy"],
            "champion_ci": [champion["ci_low"], champion["ci_high"]], "sft_accuracy": report["systems"]["sft"]["accuracy"],
            "semievol_accuracy": report["systems"]["semievol"]["accuracy"], "gate_against": gate["against"],
            "gate_difference": gate["difference"], "gate_p": gate["mcnemar_p"],
            "champion_vs_night0_sft": vs_sft0,
            "new_shard_files": len(set(after) - set(before)),
            "old_shard_files_rewritten": sum(after.get(f) != m for f, m in before.items()),
            "selected": report["selection"]["n_selected"],
            "selected_accuracy": report["selection"].get("pseudo_label_accuracy")}


def bars(nights: list[dict]) -> list[str]:
    """The issue's four bars, each with the number reached."""
    if not nights:
        return []
    last, n0 = nights[-1], nights[0]
    vs = last["champion_vs_night0_sft"]
    accs = [r["champion_accuracy"] for r in nights]
    drops = [f"night {i}" for i in range(1, len(accs)) if accs[i] < accs[i - 1]]
    # night k's generation time against (new rows / night-0 rows) x night-0's time
    ratios = [r["generate_s"] / (r["new_rows"] / n0["new_rows"] * n0["generate_s"])
              for r in nights[1:] if r["new_rows"] and n0["generate_s"]]
    rewritten = sum(r["old_shard_files_rewritten"] for r in nights)
    yes = {True: "met", False: "**not met**"}
    return [f"- after night {last['night']}, the champion beats night 0's SFT with p < 0.05: "
            + (f"{yes[vs['better']]} ({100 * vs['difference']:+.1f} points, p = {vs['mcnemar_p']:.3g})" if vs
               else "**not met** (no champion)"),
            f"- the champion's accuracy never drops: {yes[not drops]}" + (f" (drops at {', '.join(drops)})" if drops else ""),
            f"- generation time ≤ 1.5 × (new rows / night-0 rows) × night-0 time: "
            + (f"{yes[max(ratios) <= 1.5]} (worst night {max(ratios):.2f}×)" if ratios else "—"),
            f"- no old row generated or justified again: {yes[rewritten == 0]} ({rewritten} old shard files rewritten)"]


def markdown(data: dict) -> str:
    lines = ["# Continuous evolution on FPB (64 labels, +230 unlabeled rows a night, 453 test)", "",
             "| night | new rows | unlabeled | champion acc % (95% CI) | promoted | gate vs | diff | p | "
             "champion vs night-0 SFT (p) | selected (acc %) | generate s | s / new row | new / rewritten shards |",
             "|---:|---:|---:|---|---|---|---:|---:|---|---|---:|---:|---|"]
    for r in data["nights"]:
        lo, hi = r["champion_ci"]
        acc = "—" if r["selected_accuracy"] is None else f"{100 * r['selected_accuracy']:.1f}"
        vs = r["champion_vs_night0_sft"]
        vs = "—" if vs is None else f"{100 * vs['difference']:+.1f} ({vs['mcnemar_p']:.3g})"
        lines.append(f"| {r['night']} | {r['new_rows']} | {r['unlabeled']} | {100 * r['champion_accuracy']:.1f} "
                     f"({100 * lo:.1f}–{100 * hi:.1f}) | {'yes' if r['promoted'] else 'no'} | {r['gate_against']} | "
                     f"{100 * r['gate_difference']:+.1f} | {r['gate_p']:.3g} | {vs} | {r['selected']} ({acc}) | "
                     f"{r['generate_s']} | {r['generate_s_per_new_row']} | "
                     f"{r['new_shard_files']} / {r['old_shard_files_rewritten']} |")
    return "\n".join(lines + ["", "Bars (issue 11):", *bars(data["nights"])]) + "\n"


def write(data: dict) -> None:
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(data, indent=2) + "\n")
    OUT_JSON.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nights", type=int, default=5, help="nights to run, night 0 included")
    ap.add_argument("--report", action="store_true", help="only rewrite the .md")
    args = ap.parse_args()
    if args.report:
        write(json.loads(OUT_JSON.read_text()))
        return
    shutil.rmtree(WORK, ignore_errors=True)
    data, batches = night0()
    result = {"machine": machine(), "model": "smollm2-135m-instruct", "nights": []}
    for night in range(args.nights):
        new = FIRST if night == 0 else len(batches[night - 1])
        if night > 0:
            semievol("ingest", str(arrive(batches[night - 1], night)), "--into", str(data))
        result["nights"].append(run_night(data, night, new))
        write(result)  # a result lands after every night
        if (WORK / "nightly" / "history.png").exists():  # drawn by the run (semievol_core/plots.py)
            shutil.copy(WORK / "nightly" / "history.png", OUT_JSON.with_suffix(".png"))


if __name__ == "__main__":
    main()
