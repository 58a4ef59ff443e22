"""Pick TrainConfig's default learning rate and epochs: SmolLM2-135M on the FPB labeled split.

    nice -n 10 .venv/bin/python bench/training_defaults.py            # all runs, then the table
    .venv/bin/python bench/training_defaults.py --table-only           # re-render from the JSON

For each (lr, max epochs) it trains with `train_lora` (10% validation slice, early stopping with
patience 1, so the kept adapter is the best epoch by validation loss), then scores the FPB test split
cheaply: argmax over the next-token log-probs of " A", " B", " C" after the rendered prompt +
"Answer:" (one forward pass per question, no generation). Raw results are appended to
$TRAINING_DEFAULTS_JSON (default /tmp/semievol_training_defaults.json) as each run finishes, so a
crash or a re-run keeps finished runs; the printed table is what bench/training_defaults.md records.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semievol_core.backends.base import ANSWER_PREFIX, letter_token_ids  # noqa: E402
from semievol_core.models import resolve_model  # noqa: E402
from semievol_core.prompts import LETTERS, question_chat  # noqa: E402
from semievol_core.training import TrainConfig, train_lora  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "semievol" / "fpb"
# Raw results live outside the tree (the table in bench/training_defaults.md is the record).
RESULTS = Path(os.environ.get("TRAINING_DEFAULTS_JSON", "/tmp/semievol_training_defaults.json"))
MODEL = "smollm2-135m-instruct"
# (learning rate, max epochs), most informative first so a time-boxed run still answers the question.
GRID = [(1e-3, 1)]  # the budget allowed one run on this machine; see bench/training_defaults.md


def load_split(name: str) -> pd.DataFrame:
    df = pd.read_csv(DATA / f"{name}.csv")
    df["options"] = [json.loads(o) for o in df["options"]]
    return df


def score_test(adapter: str | None, test: pd.DataFrame, batch_size: int = 16) -> tuple[float, dict]:
    """Accuracy of argmax over the option letters' next-token log-probs, and the predicted-letter counts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    n_opt = len(test["options"].iloc[0])
    letter_ids = torch.tensor(letter_token_ids(tok, LETTERS[:n_opt]))
    texts = [tok.apply_chat_template(question_chat(q, o), add_generation_prompt=True, tokenize=False)
             + ANSWER_PREFIX for q, o in zip(test["question"], test["options"])]
    seqs = tok(texts, add_special_tokens=False)["input_ids"]
    preds = np.zeros(len(seqs), dtype=int)
    with torch.inference_mode():
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start:start + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(chunk):  # left padding: the next token is predicted at column -1
                ids[i, width - len(s):] = torch.tensor(s)
                mask[i, width - len(s):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
            preds[start:start + len(chunk)] = logits[:, letter_ids].argmax(-1).numpy()
    gold = np.array([LETTERS.index(a.strip().upper()) for a in test["answer"]])
    counts = {LETTERS[k]: int((preds == k).sum()) for k in range(n_opt)}
    return float((preds == gold).mean()), counts


def run_all(grid) -> list[dict]:
    labeled, test = load_split("labeled"), load_split("test")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    done = {(r["lr"], r["max_epochs"]) for r in results}
    if ("base", 0) not in done:
        t = time.perf_counter()
        acc, counts = score_test(None, test)
        results.append({"lr": "base", "max_epochs": 0, "test_acc": acc, "pred_counts": counts,
                        "score_s": time.perf_counter() - t})
        RESULTS.write_text(json.dumps(results, indent=2))
    for lr, epochs in grid:
        if (lr, epochs) in done:
            continue
        cfg = TrainConfig(learning_rate=lr, epochs=epochs, val_fraction=0.1, early_stopping_patience=1)
        with tempfile.TemporaryDirectory(prefix="semievol-bench-") as tmp:
            res = train_lora(MODEL, labeled, Path(tmp) / "adapter", cfg, progress=False)
            curve = json.loads((Path(tmp) / "adapter" / "loss_curve.json").read_text())
            t = time.perf_counter()
            acc, counts = score_test(str(res.adapter_dir), test)
            score_s = time.perf_counter() - t
        results.append({
            "lr": lr, "max_epochs": epochs, "epochs_run": res.epochs_run, "kept_epoch": curve["best_epoch"],
            "val_losses": [round(v["val_loss"], 4) for v in curve["val"]],
            "best_val_loss": res.best_val_loss, "train_loss": res.train_loss, "test_acc": acc,
            "pred_counts": counts, "train_tokens": res.train_tokens, "tokens_per_s": res.tokens_per_s,
            "wall_s": res.wall_s, "score_s": score_s,
        })
        RESULTS.write_text(json.dumps(results, indent=2))
        print(json.dumps(results[-1]), flush=True)
    return results


def render(results: list[dict]) -> str:
    test = load_split("test")
    majority = test["answer"].value_counts(normalize=True).max()
    lines = [
        "| lr | max epochs | epochs run (kept) | val loss per epoch | test acc | predicted A/B/C | train tok/s | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        counts = "/".join(str(v) for v in r["pred_counts"].values())
        if r["lr"] == "base":
            lines.append(f"| base model | 0 | - | - | {r['test_acc']:.1%} | {counts} | - | - |")
            continue
        val = ", ".join(f"{v:.3f}" for v in r["val_losses"])
        lines.append(
            f"| {r['lr']:g} | {r['max_epochs']} | {r['epochs_run']} ({r['kept_epoch']:g}) | {val} | "
            f"{r['test_acc']:.1%} | {counts} | {r['tokens_per_s']:.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + f"\n\nMajority class share of the test split: {majority:.1%} (n={len(test)}).\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table-only", action="store_true", help="re-render the table from the JSON")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = json.loads(RESULTS.read_text()) if args.table_only else run_all(GRID)
    print(render(results))


if __name__ == "__main__":
    main()
