"""Quality benchmark: vanilla / RAG-kNN / kNN vote / SFT / SemiEvol test accuracy on the paper's splits.

    .venv/bin/python bench/quality.py --dataset fpb --unlabeled 600          # ~1 h on 2 CPU cores
    .venv/bin/python bench/quality.py --dataset arc --unlabeled 600
    .venv/bin/python bench/quality.py --dataset fpb --config bench/configs/quality.yaml --tag variant
    # ablation: same warm adapter and shards (re-used when their keys match), θ = 100%
    .venv/bin/python bench/quality.py --dataset fpb --unlabeled 300 --tag theta100 --set selection.theta=1.0 \
        --seed-from bench/runs/fpb --systems semievol
    # control: the SFT baseline with one more epoch (nothing else runs)
    .venv/bin/python bench/quality.py --dataset fpb --tag 3ep --set train.epochs=3 --systems sft
    # pseudo-label statistics only (no final training): recorded under "pseudo_labels" in quality.json
    .venv/bin/python bench/quality.py --dataset fpb --unlabeled 300 --tag n1 --set collaboration.n_collaborators=1 \
        --seed-from bench/runs/fpb --pseudo-only

Runs the plain pipeline (semievol_core.pipeline) with SmolLM2-135M-Instruct on CPU, then merges
its systems into bench/results/quality.json (records keyed by dataset + system) and rewrites
bench/results/quality.md. Data comes from ../shared/datasets/semievol (never copied into the repo);
the unlabeled split is subsampled with a fixed seed when --unlabeled is given, and the record says
how many rows were used. Run directories go under bench/runs/ (git-ignored), so an interrupted
run resumes from its generation shards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "datasets" / "semievol"
RESULTS = HERE / "results"


def machine() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def merge_records(path: Path, new: list[dict], keys=("dataset", "system")) -> list[dict]:
    old = json.loads(path.read_text())["records"] if path.exists() else []
    replaced = {tuple(r[k] for k in keys) for r in new}
    records = [r for r in old if tuple(r[k] for k in keys) not in replaced] + new
    return sorted(records, key=lambda r: tuple(str(r[k]) for k in keys))


def pseudo_table(pseudo: dict) -> list[str]:
    """Pseudo-label statistics per run (full runs and --pseudo-only ablations)."""
    if not pseudo:
        return []
    lines = ["## Pseudo-labels per run (selected = kept by adaptive selection)", "",
             "| run | overrides | selected / all | selected accuracy % | all accuracy % | consensus | classes kept |",
             "|---|---|---:|---:|---:|---:|---|"]
    pct = lambda x: "—" if x is None else f"{100 * x:.1f}"  # noqa: E731
    for name, st in sorted(pseudo.items()):
        lines.append(f"| {name} | {' '.join(st.get('overrides', []))} | {st['n_selected']} / {st['n_unlabeled']} | "
                     f"{pct(st.get('pseudo_label_accuracy'))} | {pct(st.get('pseudo_label_accuracy_all'))} | "
                     f"{st['n_consensus']} | {st.get('selected_class_counts')} |")
    return lines + [""]


def markdown(records: list[dict], notes: dict, pseudo: dict | None = None) -> str:
    lines = ["# Quality: test accuracy (SmolLM2-135M-Instruct, CPU)", "",
             "| dataset | system | accuracy % | 95% CI | n_test | n_labeled | n_unlabeled_used | wall s |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['dataset']} | {r['system']} | {100 * r['accuracy']:.1f} | "
                     f"{100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f} | {r['n_test']} | {r['n_labeled']} | "
                     f"{r['n_unlabeled_used']} | {r['wall_s']:.0f} |")
    lines.append("")
    for ds, note in sorted(notes.items()):
        lines.append(f"**{ds}**: {note}")
        lines.append("")
    return "\n".join(lines + pseudo_table(pseudo or {}))


def seed_run_dir(src: Path, dst: Path) -> None:
    """Copy another run's warm-training and generation step directories (semievol_core/store.py):
    a step finds its key directory complete only when its key (code, config, inputs' content)
    matches, and re-computes otherwise. values.json holds paths relative to the run, so a copied
    key directory is valid in `dst`."""
    import shutil

    for step in ("train-warm", "generate"):
        if (src / step).is_dir() and not (dst / step).exists():
            shutil.copytree(src / step, dst / step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=["fpb", "arc", "usmle", "mmlu_pro"])
    ap.add_argument("--config", default=str(HERE / "configs" / "quality.yaml"))
    ap.add_argument("--labeled", type=int, default=None)
    ap.add_argument("--unlabeled", type=int, default=None)
    ap.add_argument("--test", type=int, default=None)
    ap.add_argument("--tag", default="", help="suffix for system names (ablations, variants)")
    ap.add_argument("--systems", default="vanilla,rag_knn,knn_vote,sft,semievol")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (dotted for nested: train.epochs=3); repeatable")
    ap.add_argument("--seed-from", default=None, help="run dir whose warm adapter and shards to re-use")
    ap.add_argument("--pseudo-only", action="store_true",
                    help="stop after selection; record the pseudo-label statistics only")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from semievol_core.config import SemiEvolConfig
    from semievol_core.paper_csv import import_csv_dir
    from semievol_core.pipeline import run_semievol
    from semievol_core.steps import Limits

    from semievol_core.config import apply_overrides, load_yaml_mapping

    cfg = SemiEvolConfig.model_validate(apply_overrides(load_yaml_mapping(args.config), args.set))
    data_dir = HERE / "runs" / "data" / args.dataset
    if not (data_dir / "labeled.parquet").exists():
        import_csv_dir(SHARED / args.dataset, data_dir, overwrite=True)
    name = f"{args.dataset}{'-' + args.tag if args.tag else ''}"
    run_dir = HERE / "runs" / name
    if args.seed_from:
        seed_run_dir(Path(args.seed_from), run_dir)
    t0 = time.perf_counter()
    systems = [] if args.pseudo_only else args.systems.split(",")
    report = run_semievol(data_dir, run_dir, cfg, Limits(labeled=args.labeled, unlabeled=args.unlabeled, test=args.test),
                          systems=systems, pseudo_labels=args.pseudo_only)
    total = time.perf_counter() - t0
    out = RESULTS / "quality.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.pseudo_only:
        prev = json.loads(out.read_text()) if out.exists() else {}
        sel = report["selection"]
        pseudo = {**prev.get("pseudo_labels", {}),
                  name: {**sel, "overrides": args.set, "wall_s": round(total, 1)}}
        out.write_text(json.dumps({**prev, "pseudo_labels": pseudo}, indent=2))
        (RESULTS / "quality.md").write_text(markdown(prev.get("records", []), prev.get("notes", {}), pseudo))
        print(json.dumps(pseudo[name], indent=2))
        return
    t = report["timings"]
    n_lab = len(__import__("pandas").read_parquet(run_dir / "data" / "labeled.parquet"))
    n_unl = report["selection"].get("n_unlabeled", 0)
    shared_cost = {"vanilla": 0.0, "rag_knn": t.get("embed", 0) + t.get("retrieve", 0),
                   "knn_vote": t.get("embed", 0) + t.get("retrieve", 0), "sft": t.get("train-warm", 0)}
    records = []
    for system, m in report["systems"].items():
        own = (f"evaluate-{system}", f"score-{system}")  # its evaluation shards and their score
        wall = sum(t.get(k, 0) for k in own) + shared_cost.get(system, 0)
        if system == "semievol":
            wall = total - sum(v for k, v in t.items() if k.startswith(("evaluate-", "score-"))
                               and k not in ("evaluate-semievol", "score-semievol"))
        records.append({"dataset": args.dataset, "system": system + (f"_{args.tag}" if args.tag else ""),
                        "accuracy": m["accuracy"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                        "n_test": m["n"], "n_labeled": n_lab,
                        "n_unlabeled_used": n_unl if system == "semievol" else 0,
                        "model": cfg.model, "wall_s": round(wall, 1),
                        # An adapter re-used from disk (its key directory was complete) cost nothing.
                        "adapter_reused": {"sft": t.get("train-warm", 1) < 1,
                                           "semievol": t.get("train-final", 1) < 1}.get(system, False)})
    prev = json.loads(out.read_text()) if out.exists() else {}
    notes = prev.get("notes", {})
    sel = report["selection"]
    notes[name] = (f"overrides {args.set}; timings {t}" if not sel else
        f"overrides {args.set}; selection: {sel['n_selected']}/{sel['n_unlabeled']} pseudo-labels kept "
        f"(consensus {sel['n_consensus']}, justified {sel['n_justified']}), selected accuracy "
        f"{sel.get('pseudo_label_accuracy')}, all pseudo-labels {sel.get('pseudo_label_accuracy_all')}; "
        f"McNemar p (semievol vs sft) = {report.get('mcnemar_p_semievol_vs_sft')}; timings {t}")
    records = merge_records(out, records)
    pseudo = prev.get("pseudo_labels", {})
    if sel:
        pseudo[name] = {**sel, "overrides": args.set, "wall_s": round(total, 1)}
    out.write_text(json.dumps({**prev, "machine": machine(), "records": records, "notes": notes,
                               "pseudo_labels": pseudo,
                               "configs": {**prev.get("configs", {}), name: cfg.result_fields()}},
                              indent=2))
    (RESULTS / "quality.md").write_text(markdown(records, notes, pseudo))
    print(markdown([r for r in records if r["dataset"] == args.dataset], {}))
    print(notes[name])


if __name__ == "__main__":
    main()
