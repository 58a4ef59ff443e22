"""Label efficiency on FPB: test accuracy against the number of labels, with ALL unlabeled rows.

    .venv/bin/python bench/label_efficiency.py --labeled 64 --seed 0 --sft-epochs 3,6,12  # SFT sweep
    .venv/bin/python bench/label_efficiency.py --labeled 64 --seed 0 --recipe recommended  # ~35 min
    .venv/bin/python bench/label_efficiency.py --labeled 64 --seed 0 --recipe paper
    .venv/bin/python bench/label_efficiency.py --labeled 64 --seed 0 --tapt-steps 340 --sft-steps 288
    .venv/bin/python bench/label_efficiency.py --labeled 64 --seed 0 --recipe recommended --tag w192 \
        --continue-steps 96 --warm-from bench/runs/le/b64-s0-recommended/sft_plus96_adapter --teacher 0.9
    .venv/bin/python bench/label_efficiency.py --labeled 64 --seed 0 --recipe teacher --tag t452 --no-final \
        --teacher-model bench/runs/le/b452-s0-recommended/sft_plus96_adapter \
        --warm-from bench/runs/le/b64-s0-recommended/sft_plus96_adapter   # then the same with --continue-steps 96
    .venv/bin/python bench/label_efficiency.py --vanilla      # the base model, once (no labels used)
    .venv/bin/python bench/label_efficiency.py --report       # rewrite the .md and .png from the JSON

One call is one cell: a labeled budget (a seeded, class-stratified subset of FPB's labeled.csv),
one seed, one thing to measure. Every cell uses all 1,357 unlabeled rows and all 453 test rows
(SmolLM2-135M-Instruct on CPU, letter-scored evaluation for every system). Each call merges its
records into bench/results/label_efficiency.json (keyed by budget, seed, system) and rewrites
label_efficiency.md and label_efficiency.png, so results land one cell at a time.

Systems: `knn_vote` (the labeled neighbours' majority label, no LLM), `sft` (LoRA on the budget,
the policy of `train` in the recipe's config: `recommended` trains 96 optimizer updates),
`sft_e<E>` (the convergence sweep: E epochs, the recipe's update budget lifted),
`sft_plus<N>` / `semievol_<recipe>_continue<N>` (N more updates from the recipe's SFT, on the gold
rows alone / on gold + the selected pseudo-labels), `sft_s<M>` / `tapt<N>_sft_s<M>` (M updates of SFT
from the base model / from an adapter first trained N updates on the unlabeled rows' question text,
task-adaptive pre-training), `teacher_<A>_<tag>_continue<N>` (N more updates on gold + every
unlabeled row labelled by a simulated teacher right on A% of them: the warm model's own labels with
a seeded share of its wrong ones corrected; `own`: none corrected), `semievol_<recipe>` (the
recipe's config from deployments/configs/<recipe>.yaml), `vanilla` (no labels at all). A recipe
run's SFT is the warm adapter it starts from; the paired SemiEvol-vs-SFT difference (95% CI,
McNemar p) is taken on the same test questions. Run directories live under bench/runs/le/
(git-ignored); the warm adapter is copied between recipes when their training keys match.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from quality import SHARED, machine, seed_run_dir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
OUT_JSON = RESULTS / "label_efficiency.json"
RUNS = HERE / "runs" / "le"
CONFIGS = ROOT / "deployments" / "configs"
# The paper's recipe as published, scored by option letters on CPU: free-text collaborators at T=1
# over 1,357 rows x 4 would take hours here; selection, training and everything else as published.
RECIPE_OVERRIDES = {"paper": ["collaboration.mode=choice_logprobs", "evaluation.mode=choice_logprobs",
                              "execution.progress=false"]}


# ------------------------------------------------------------------------------ data
def full_dataset() -> Path:
    from semievol_core.paper_csv import import_csv_dir

    d = HERE / "runs" / "data" / "fpb"
    if not (d / "labeled.parquet").exists():
        import_csv_dir(SHARED / "fpb", d, overwrite=True)
    return d


def stratified(df, n: int, seed: int):
    """n rows keeping the class mix (largest-remainder rounding), sampled with `seed`."""
    import pandas as pd

    if n >= len(df):
        return df.reset_index(drop=True)
    share = df["answer"].value_counts(normalize=True).sort_index() * n
    take = share.astype(int)
    for cls in (share - take).sort_values(ascending=False).index[: n - int(take.sum())]:
        take[cls] += 1
    parts = [df[df["answer"] == cls].sample(n=int(k), random_state=seed) for cls, k in take.items() if k]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def budget_dataset(n: int, seed: int) -> Path:
    """A dataset directory: `n` labeled rows, every unlabeled and test row, the oracle."""
    from semievol_core.data import read_table, write_table

    src, d = full_dataset(), RUNS / "data" / f"b{n}-s{seed}"
    if not (d / "labeled.parquet").exists():
        labeled = stratified(read_table(src / "labeled.parquet", "labeled"), n, seed)
        d.mkdir(parents=True, exist_ok=True)
        for name in ("unlabeled", "test.parquet", "oracle.parquet"):
            if not (d / name).exists():
                (shutil.copytree if (src / name).is_dir() else shutil.copy)(src / name, d / name)
        write_table(labeled, d / "labeled.parquet", "labeled")
    return d


# ------------------------------------------------------------------------------ running
def recipe_config(recipe: str, extra: list[str]):
    from semievol_core.config import SemiEvolConfig, apply_overrides, load_yaml_mapping

    data = load_yaml_mapping(CONFIGS / f"{recipe}.yaml")
    return SemiEvolConfig.model_validate(apply_overrides(data, RECIPE_OVERRIDES.get(recipe, []) + extra))


def adapter_facts(adapter: Path) -> dict:
    """Best epoch (loss_curve.json) and epochs run (train_config.json) of a trained adapter."""
    if not (adapter / "loss_curve.json").exists():
        return {}
    curve = json.loads((adapter / "loss_curve.json").read_text())
    run = json.loads((adapter / "train_config.json").read_text())
    return {"best_epoch": curve.get("best_epoch"), "epochs_run": run.get("epochs_run"),
            "n_train": run.get("n_train"), "n_val": run.get("n_val")}


def record(n: int, seed: int, system: str, m: dict, **extra) -> dict:
    return {"n_labeled": n, "seed": seed, "system": system, "accuracy": m["accuracy"],
            "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n_test": m["n"], **extra}


def run_cell(data: Path, run: Path, cfg, systems: list[str]) -> tuple[dict, float]:
    from semievol_core.pipeline import run_semievol

    t0 = time.perf_counter()
    report = run_semievol(data, run, cfg, systems=systems)
    return report, round(time.perf_counter() - t0, 1)


def sft_sweep(n: int, seed: int, epochs: list[int], extra: list[str]) -> list[dict]:
    data, out = budget_dataset(n, seed), []
    for e in epochs:
        # epochs decide here, not the recipe's update budget (max_steps would override them)
        cfg = recipe_config("recommended", extra + [f"train.epochs={e}", "train.max_steps=null"])
        run = RUNS / f"b{n}-s{seed}-sft-e{e}"
        report, wall = run_cell(data, run, cfg, ["sft"])
        out.append(record(n, seed, f"sft_e{e}", report["systems"]["sft"], wall_s=wall,
                          epoch_cap=e, **adapter_facts(run / "warm_adapter"),
                          timings=report["timings"]))
    return out


def run_dir(n: int, seed: int, recipe: str, tag: str | None) -> Path:
    return RUNS / f"b{n}-s{seed}-{recipe}" if not tag else RUNS / f"b{n}-s{seed}-{recipe}-{tag}"


def recipe_cell(n: int, seed: int, recipe: str, extra: list[str], tag: str | None = None,
                warm_from: Path | None = None, final: bool = True) -> list[dict]:
    """The recipe's run: kNN vote, SFT, pseudo-labels and (`final`) SemiEvol. `warm_from`: an
    adapter that labels the pool instead of the run's SFT (made the champion of a registry in the
    run directory, with rounds.warm_from: champion: the product's rounds path). `tag` names the variant
    (run directory `<...>-<tag>`, systems `<system>_<tag>`)."""
    from semievol_core.pipeline import run_semievol
    from semievol_core.registry import Registry

    data = budget_dataset(n, seed)
    run = run_dir(n, seed, recipe, tag)
    sfx = f"_{tag}" if tag else ""
    registry = None
    if warm_from is not None:
        extra = extra + ["rounds.warm_from=champion"]
        registry = Registry(run / "registry")
        registry.promote(registry.register(warm_from, source_note="bench --warm-from")["id"])
    cfg = recipe_config(recipe, extra)
    # The same recipe's run first: its warm adapter has the same training key and is re-used.
    others = [run_dir(n, seed, recipe, None)] + sorted(RUNS.glob(f"b{n}-s{seed}-*"))
    for other in others:
        if other != run and (other / "warm_adapter").exists():
            seed_run_dir(other, run)
            break
    systems = ["knn_vote", "sft"] + (["semievol"] if final else [])
    t0 = time.perf_counter()
    report = run_semievol(data, run, cfg, systems=systems, pseudo_labels=True,
                          registry=registry.root if registry else None)
    wall = round(time.perf_counter() - t0, 1)
    sel, t = report["selection"], report["timings"]
    n_unl = sel.get("n_unlabeled", 0)
    warm = adapter_facts(run / "warm_adapter")
    pseudo = dict(n_unlabeled_used=n_unl, selected=sel.get("n_selected"),
                  selected_accuracy=sel.get("pseudo_label_accuracy"),
                  all_pseudo_label_accuracy=sel.get("pseudo_label_accuracy_all"),
                  selected_class_counts=sel.get("selected_class_counts"), selection=sel,
                  warm_from=str(warm_from) if warm_from else "sft")
    records = [
        record(n, seed, f"knn_vote{sfx}", report["systems"]["knn_vote"],
               timings={k: v for k, v in t.items() if k.startswith(("embed", "retrieve"))}),
        record(n, seed, f"sft{sfx}", report["systems"]["sft"], **warm, timings={"train-warm": t.get("train-warm")},
               **({} if final else pseudo)),
    ]
    if not final:
        return records
    cmp = report["semievol_vs_sft"]
    records += [
        record(n, seed, f"semievol_{recipe}{sfx}", report["systems"]["semievol"], wall_s=wall,
               **pseudo, vs_sft=cmp, **{f"final_{k}": v for k, v in
                                            adapter_facts(run / "semievol_adapter").items()},
               warm=warm, timings=t, config=cfg.result_fields()),
    ]
    return records


def merged_teacher(adapter: Path) -> Path:
    """The base model with `adapter` merged in, as a model directory collaboration.teacher can name
    (peft's merge_and_unload), made once under bench/runs/le/teachers/. A fine-tuned model with
    more labels stands in for a stronger teacher: a real model's errors, not simulated ones."""
    out = RUNS / "teachers" / f"{adapter.parent.name}-{adapter.name}"
    if (out / "config.json").exists():
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semievol_core.models import resolve_model

    base = resolve_model("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def oracle_pseudo_labels(run: Path, which: str) -> Path:
    """A pseudo-label table with the TRUE answers (the oracle): `selected` keeps the rows selection
    kept (label noise removed, everything else equal); `all` marks every unlabeled row selected (the
    ceiling of any pseudo-labelling on this pool under the same update budget)."""
    import pandas as pd

    from semievol_core.steps import save_frame

    pl = pd.read_parquet(run / "pseudo_labels.parquet")
    truth = pd.read_parquet(run / "data" / "oracle.parquet").set_index("id")["answer"]
    if which == "all":
        pl = pd.DataFrame({"unlabeled_id": truth.index, "answer": truth.values, "source": "oracle",
                           "H": 0.0, "threshold": float("nan"), "selected": True})
    else:
        pl = pl.assign(answer=truth.loc[pl["unlabeled_id"]].to_numpy(), source="oracle")
    out = run / f"oracle_{which}_pseudo_labels.parquet"
    save_frame(pl, out)
    return out


def teacher_pseudo_labels(run: Path, accuracy: float | None, seed: int) -> tuple[Path, float]:
    """Every unlabeled row labelled by a simulated teacher that is right on `accuracy` of them:
    the warm model's top letter (from the letter log-probs each response keeps), with a seeded
    random share of its wrong rows replaced by the true answer. `None`: the model's own labels
    (plain self-training). The teacher is never wrong where the model is right, so this is the most
    useful teacher of that accuracy. Returns the table and the teacher's accuracy on the pool."""
    import numpy as np
    import pandas as pd

    from semievol_core.letter_scores import read_letter_reply
    from semievol_core.steps import save_frame

    resp = pd.read_parquet(run / "responses.parquet", columns=["unlabeled_id", "model", "text"])
    resp = resp[resp["model"] == "warm"].drop_duplicates("unlabeled_id")
    scores = {uid: read_letter_reply(t) for uid, t in zip(resp["unlabeled_id"], resp["text"])}
    labels = pd.Series({uid: max(lp, key=lp.get) for uid, lp in scores.items() if lp}, dtype=object)
    truth = pd.read_parquet(run / "data" / "oracle.parquet").set_index("id")["answer"]
    if len(labels) != len(truth):  # e.g. free-text replies keep no letter scores
        raise ValueError(f"{run}: the warm model's letter scores label {len(labels)} of {len(truth)} unlabeled rows")
    truth = truth.loc[labels.index]
    wrong = np.flatnonzero(labels.to_numpy() != truth.to_numpy())
    if accuracy is not None:
        n_fix = round(accuracy * len(labels)) - (len(labels) - len(wrong))
        if n_fix < 0:
            raise ValueError(f"a teacher right on {accuracy:.0%} is below the warm model's own labels "
                             f"({1 - len(wrong) / len(labels):.1%}): use 'own'")
        fix = np.random.default_rng(seed).choice(wrong, size=min(n_fix, len(wrong)), replace=False)
        labels.iloc[fix] = truth.iloc[fix].to_numpy()
    acc = float((labels.to_numpy() == truth.to_numpy()).mean())
    pl = pd.DataFrame({"unlabeled_id": labels.index, "answer": labels.to_numpy(), "source": "teacher",
                       "H": 0.0, "threshold": float("nan"), "selected": True})
    name = "own" if accuracy is None else f"{round(100 * accuracy)}"
    out = run / f"teacher_{name}_pseudo_labels.parquet"
    save_frame(pl, out)
    return out, acc


def recorded_gold_arm(n: int, seed: int, start: str, steps: int) -> tuple[str, Path] | None:
    """A gold-only arm already in the JSON from the same start and update count, and its
    predictions: the same training, so a new arm is paired with it instead of training it again."""
    import re

    prev = json.loads(OUT_JSON.read_text())["records"] if OUT_JSON.exists() else []
    for r in prev:
        if ((r["n_labeled"], r["seed"], r.get("start"), r.get("extra_steps")) == (n, seed, start, steps)
                and re.fullmatch(rf"sft(_\w+)?_plus{steps}", r["system"])):
            for preds in sorted(RUNS.glob(f"b{n}-s{seed}-*/predictions/{r['system']}.parquet")):
                return r["system"], preds
    return None


def continue_cell(n: int, seed: int, recipe: str, steps: int, extra: list[str],
                  oracle: bool = False, gold_only: bool = False, tag: str | None = None,
                  warm_from: Path | None = None, teachers: list[float | None] = (),
                  reuse_gold: bool = False) -> list[dict]:
    """Both from the recipe run's warm adapter, `steps` more updates each: on the gold labels only
    (`sft_plus<steps>`) and on gold + the selected pseudo-labels (`semievol_<recipe>_continue<steps>`,
    the released code's "continue" with the labeled rows kept in). Same start, same updates: the
    difference is the pseudo-labels alone. `oracle` adds two arms with true answers in place of the
    pseudo-labels: on the selected rows (`oracle_selected_continue<steps>`) and on every unlabeled
    row (`oracle_all_continue<steps>`). `teachers` (accuracies, None for the model's own labels)
    replace the pseudo-labelled arm with arms on every unlabeled row labelled by a simulated teacher
    (`teacher<A>_continue<steps>`, `teacher_own_...`). With `teachers` or `reuse_gold`, a gold-only
    arm recorded from the same start is the baseline instead of a new one (recorded_gold_arm)."""
    from semievol_core import steps as core

    run, sfx = run_dir(n, seed, recipe, tag), f"_{tag}" if tag else ""
    cfg = recipe_config(recipe, extra + [f"train.max_steps={steps}"])
    d, warm = run / "data", warm_from or run / "warm_adapter"
    test, answer_type = d / "test.parquet", "choice"
    arms = {f"sft{sfx}_plus{steps}": None, f"semievol_{recipe}{sfx}_continue{steps}": run / "pseudo_labels.parquet"}
    if gold_only:  # the converged-SFT baseline alone (the recipe run's SFT + `steps` updates)
        arms = {f"sft{sfx}_plus{steps}": None}
    elif oracle:
        arms.update({f"oracle_{w}{sfx}_continue{steps}": oracle_pseudo_labels(run, w) for w in ("selected", "all")})
    teacher_acc: dict[str, float] = {}
    if teachers:
        arms = {f"sft{sfx}_plus{steps}": None}
        for a in teachers:
            system = f"teacher_{'own' if a is None else round(100 * a)}{sfx}_continue{steps}"
            arms[system], teacher_acc[system] = teacher_pseudo_labels(run, a, seed)
    gold = f"sft{sfx}_plus{steps}"
    out, preds = [], {}
    known = recorded_gold_arm(n, seed, str(warm), steps) if teachers or reuse_gold else None
    if known:  # trained before from the same start: paired with, not trained again
        del arms[gold]
        gold, preds[gold] = known
        print(f"gold-only arm: {gold} ({preds[gold]}), trained before from {warm}")
    for system, pseudo in arms.items():
        t0 = time.perf_counter()
        preds[system] = run / "predictions" / f"{system}.parquet"
        adapter = core.train_adapter(cfg, [(d / "labeled.parquet", "labeled")], run / f"{system}_adapter",
                                     init_adapter=warm, pseudo_labels=pseudo,
                                     unlabeled=d / "unlabeled.parquet" if pseudo else None)
        m = core.evaluate_system(cfg, "sft", test, answer_type, preds[system], adapter=adapter)
        out.append(record(n, seed, system, m, wall_s=round(time.perf_counter() - t0, 1),
                          start=str(warm), extra_steps=steps, **adapter_facts(adapter),
                          **({"teacher_accuracy": teacher_acc[system]}
                             if system in teacher_acc else {})))
    sft_arm = preds[gold]
    for r in out:  # each pseudo-labelled arm against gold only, paired
        if r["system"] == gold:
            continue
        r["baseline"] = gold
        r["vs_sft"] = core.compare(preds[r["system"]], sft_arm, cfg.evaluation.bootstrap_samples, cfg.seed)
    return out


def tapt_cell(n: int, seed: int, tapt_steps: int, sft_steps: int, extra: list[str]) -> list[dict]:
    """Task-adaptive pre-training as the use of the unlabeled rows: SFT for `sft_steps` updates
    from the base model (`sft_s<M>`, the baseline) and from an adapter first trained `tapt_steps`
    updates on the 1,357 unlabeled questions' text (`tapt<N>_sft_s<M>`). The same SFT data, updates
    and schedule: the difference is the pre-training alone."""
    import pandas as pd

    from semievol_core import steps as core
    from semievol_core.data import read_table
    from semievol_core.training import train_lora

    data, run = budget_dataset(n, seed), RUNS / f"b{n}-s{seed}-tapt"
    cfg = recipe_config("recommended", extra + [f"train.max_steps={sft_steps}"])
    test, preds, out = data / "test.parquet", {}, []
    questions = pd.DataFrame({"question": read_table(data / "unlabeled", "unlabeled")["question"]})
    t0 = time.perf_counter()
    tapt_dir = run / f"tapt{tapt_steps}_adapter"
    if not (tapt_dir / "adapter_model.safetensors").exists():
        tapt_cfg = cfg.train.model_copy(update={"max_steps": tapt_steps, "val_fraction": 0.0,
                                                "early_stopping_patience": None})
        train_lora(cfg.model, questions, tapt_dir, tapt_cfg, progress=False, threads=cfg.execution.threads,
                   objective="text")
    tapt_s = round(time.perf_counter() - t0, 1)
    for system, start in ((f"sft_s{sft_steps}", None), (f"tapt{tapt_steps}_sft_s{sft_steps}", tapt_dir)):
        t0 = time.perf_counter()
        adapter = run / f"{system}_adapter"
        if not (adapter / "adapter_model.safetensors").exists():
            core.train_adapter(cfg, [(data / "labeled.parquet", "labeled")], adapter, init_adapter=start)
        preds[system] = run / "predictions" / f"{system}.parquet"
        m = core.evaluate_system(cfg, "sft", test, "choice", preds[system], adapter=adapter)
        out.append(record(n, seed, system, m, wall_s=round(time.perf_counter() - t0, 1),
                          sft_steps=sft_steps, **adapter_facts(adapter),
                          **({"tapt_steps": tapt_steps, "tapt_rows": len(questions), "tapt_s": tapt_s}
                             if start else {})))
    out[1]["vs_sft"] = core.compare(preds[out[1]["system"]], preds[out[0]["system"]],
                                    cfg.evaluation.bootstrap_samples, cfg.seed)
    return out


def vanilla() -> list[dict]:
    cfg = recipe_config("recommended", [])
    report, wall = run_cell(budget_dataset(64, 0), RUNS / "vanilla", cfg, ["vanilla"])
    return [record(0, 0, "vanilla", report["systems"]["vanilla"], wall_s=wall)]


# ------------------------------------------------------------------------------ results
def merge(new: list[dict]) -> dict:
    prev = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {}
    key = lambda r: (r["n_labeled"], r["seed"], r["system"])  # noqa: E731
    replaced = {key(r) for r in new}
    records = sorted([r for r in prev.get("records", []) if key(r) not in replaced] + new,
                     key=lambda r: (r["n_labeled"], r["system"], r["seed"]))
    return {**prev, "machine": machine(), "model": "smollm2-135m-instruct", "dataset": "fpb",
            "records": records}


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def markdown(data: dict) -> str:
    import numpy as np

    recs = data["records"]
    lines = ["# Label efficiency on FPB (SmolLM2-135M-Instruct, CPU, all unlabeled rows, 453 test)", "",
             "Accuracy % per labeled budget: mean over seeds (per seed in brackets).", "",
             "| labels | system | mean accuracy % | per seed | 95% CI (seed 0) | best / run epochs |",
             "|---:|---|---:|---|---|---|"]
    groups: dict = {}
    for r in recs:
        groups.setdefault((r["n_labeled"], r["system"]), []).append(r)
    for (n, system), rs in sorted(groups.items()):
        accs = [r["accuracy"] for r in rs]
        first = rs[0]
        ep = " ".join(f"{r.get('best_epoch') or r.get('final_best_epoch')}/"
                      f"{r.get('epochs_run') or r.get('final_epochs_run')}" for r in rs
                      if r.get("epochs_run") or r.get("final_epochs_run"))
        lines.append(f"| {n} | {system} | {pct(float(np.mean(accs)))} | "
                     f"{' '.join(pct(a) for a in accs)} | {pct(first['ci_low'])}–{pct(first['ci_high'])} | {ep} |")
    lines += ["", "## SemiEvol vs SFT, paired on the same test questions", "",
              "| labels | seed | recipe | difference (points) | 95% CI | McNemar p | verdict |",
              "|---:|---:|---|---:|---|---:|---|"]
    for r in recs:
        if "vs_sft" in r:
            c = r["vs_sft"]
            lines.append(f"| {r['n_labeled']} | {r['seed']} | {r['system']} | {100 * c['difference']:+.1f} | "
                         f"{100 * c['ci_low']:+.1f} to {100 * c['ci_high']:+.1f} | {c['mcnemar_p']:.3g} | "
                         f"{'better' if c['better'] else 'not better'} |")
    lines += ["", "## Pseudo-labels", "",
              "| labels | seed | recipe | selected / unlabeled | selected accuracy % | all accuracy % | class counts |",
              "|---:|---:|---|---:|---:|---:|---|"]
    for r in recs:
        if "selected" in r:
            lines.append(f"| {r['n_labeled']} | {r['seed']} | {r['system']} | {r['selected']} / "
                         f"{r['n_unlabeled_used']} | {pct(r['selected_accuracy'])} | "
                         f"{pct(r['all_pseudo_label_accuracy'])} | {r['selected_class_counts']} |")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_system: dict = {}
    for r in data["records"]:
        if r["system"].startswith("sft_e"):
            continue  # the sweep is in the table; the plot shows the systems
        by_system.setdefault(r["system"], {}).setdefault(r["n_labeled"], []).append(r)
    budgets = sorted({n for s in by_system.values() for n in s if n})
    for system, cells in sorted(by_system.items()):
        if system == "vanilla":
            acc = cells[0][0]["accuracy"] * 100
            ax.axhline(acc, color="grey", ls=":", label=f"vanilla ({acc:.1f})")
            continue
        xs = sorted(cells)
        mean = [100 * np.mean([r["accuracy"] for r in cells[x]]) for x in xs]
        lo = [100 * np.mean([r["ci_low"] for r in cells[x]]) for x in xs]
        hi = [100 * np.mean([r["ci_high"] for r in cells[x]]) for x in xs]
        bars = ax.errorbar(xs, mean, yerr=[np.subtract(mean, lo), np.subtract(hi, mean)], marker="o",
                           capsize=3, label=system)
        ax.fill_between(xs, lo, hi, color=bars.lines[0].get_color(), alpha=0.12)  # the band, 2+ budgets
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets or [64])
    ax.set_xticklabels([str(b) for b in budgets or [64]])
    ax.set_xlabel("labeled examples (all 1,357 unlabeled rows used)")
    ax.set_ylabel("test accuracy % (453 questions; band: mean 95% CI)")
    ax.set_title("FPB, SmolLM2-135M-Instruct: accuracy vs labels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write(data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "label_efficiency.md").write_text(markdown(data))
    try:
        plot(data, RESULTS / "label_efficiency.png")
    except ImportError:  # the results above are kept; only the picture needs matplotlib
        print("no plot: matplotlib is missing (pip install -e .); rerun with --report")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labeled", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe", help="deployments/configs/<recipe>.yaml: paper, recommended")
    ap.add_argument("--sft-epochs", help="comma-separated epoch caps for the SFT convergence sweep")
    ap.add_argument("--vanilla", action="store_true", help="evaluate the base model (once)")
    ap.add_argument("--continue-steps", type=int, metavar="N",
                    help="with --recipe: N more updates from its warm adapter, gold only vs gold + pseudo")
    ap.add_argument("--oracle", action="store_true",
                    help="with --continue-steps: add arms trained on the true answers (oracle)")
    ap.add_argument("--gold-only", action="store_true",
                    help="with --continue-steps: only the gold-only arm (the converged SFT)")
    ap.add_argument("--teacher", metavar="A[,A]",
                    help="with --continue-steps: arms on every unlabeled row labelled by a simulated teacher "
                         "right on A of them (0.9, 1.0; 'own': the warm model's labels)")
    ap.add_argument("--teacher-model", type=Path, metavar="ADAPTER",
                    help="with --recipe teacher: the base model with this adapter merged is collaboration.teacher")
    ap.add_argument("--tag", help="name of a recipe variant: run dir <...>-TAG, systems <system>_TAG")
    ap.add_argument("--warm-from", type=Path, metavar="ADAPTER",
                    help="with --recipe: this adapter labels the pool (the registry-champion path)")
    ap.add_argument("--no-final", action="store_true",
                    help="with --recipe: pseudo-labels only, no final fine-tune (use --continue-steps)")
    ap.add_argument("--tapt-steps", type=int, metavar="N",
                    help="with --sft-steps: SFT from the base vs from N updates of pre-training on the unlabeled text")
    ap.add_argument("--sft-steps", type=int, metavar="M", help="the SFT updates of the --tapt-steps arms")
    ap.add_argument("--report", action="store_true", help="only rewrite the .md and .png")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (dotted for nested: train.epochs=6); repeatable")
    args = ap.parse_args()
    if args.teacher and not (args.recipe and args.continue_steps):
        ap.error("--teacher needs --recipe and --continue-steps (its arms continue the recipe run's warm adapter)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    new: list[dict] = []
    if args.vanilla:
        new += vanilla()
    if args.sft_epochs:
        new += sft_sweep(args.labeled, args.seed, [int(e) for e in args.sft_epochs.split(",")], args.set)
    if args.tapt_steps:
        new += tapt_cell(args.labeled, args.seed, args.tapt_steps, args.sft_steps or 288, args.set)
    if args.teacher_model:
        args.set = args.set + [f"collaboration.teacher={merged_teacher(args.teacher_model)}"]
    if args.recipe and args.continue_steps:
        new += continue_cell(args.labeled, args.seed, args.recipe, args.continue_steps, args.set,
                             oracle=args.oracle, gold_only=args.gold_only,
                             tag=args.tag, warm_from=args.warm_from,
                             teachers=[None if a == "own" else float(a)
                                       for a in (args.teacher.split(",") if args.teacher else [])],
                             reuse_gold=bool(args.teacher_model))
    elif args.recipe:
        new += recipe_cell(args.labeled, args.seed, args.recipe, args.set, tag=args.tag,
                           warm_from=args.warm_from, final=not args.no_final)
    data = merge(new) if new else json.loads(OUT_JSON.read_text())
    write(data)
    print(markdown(data))


if __name__ == "__main__":
    main()
