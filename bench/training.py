"""Training benchmark: the project's LoRA trainer vs TRL's SFTTrainer, same data, same run.

    .venv/bin/python bench/training.py                 # 256 FPB labeled rows, 1 epoch each (~15 min)
    .venv/bin/python bench/training.py --rows 0        # all 452 rows

Both train the same LoRA (r 16, alpha 32, dropout 0.05, all linear layers) of SmolLM2-135M-Instruct
in float32 on the CPU, on the same FPB labeled rows, with the same optimisation (lr 1e-3, cosine,
10% warm-up, batch 8, 1 epoch, seed 0), loss on the answer only:
- `project`: semievol_core.training.train_lora (left padding, logits for the target columns only);
- `project_ckpt`: the same with `gradient_checkpointing=True` (the memory knob: same adapter);
- `trl`: trl.SFTTrainer with its defaults otherwise (conversational prompt-completion rows, its
  collator, completion-only loss, gradient checkpointing on as TRL ships it; bf16 off: CPU).
Each runs in its own subprocess, so its peak RSS is its own. tokens/s counts every non-padding
token fed forward and backward (prompt + answer) per second of `train()`; the final loss is the mean
train loss of the last 10 optimizer steps (both trainers log every step). Compare losses per
answer, not per token: TRL's completion is `Answer: X<|im_end|>\n` (5 tokens, the template's
newline included, predicted at ~0 loss), the project's target `Answer: X<|im_end|>` (4), so TRL's
token mean is ~4/5 of the same fit (training.json's `loss_note`). Writes bench/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "datasets" / "semievol"
MODEL = "smollm2-135m-instruct"
LR, EPOCHS, BATCH, WARMUP, SEED = 1e-3, 1, 8, 0.1, 0
LAST_STEPS = 10  # final loss = mean train loss over this many last steps
TRAINERS = ("project", "project_ckpt", "trl")


def load_rows(n: int | None):
    from semievol_core.data import read_table
    from semievol_core.paper_csv import import_csv_dir

    data_dir = HERE / "runs" / "data" / "fpb"
    if not (data_dir / "labeled.parquet").exists():
        import_csv_dir(SHARED / "fpb", data_dir, overwrite=True)
    df = read_table(data_dir / "labeled.parquet", "labeled")[["question", "options", "answer"]]
    return df if n is None else df.sample(n=n, random_state=SEED).reset_index(drop=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_project(df, gradient_checkpointing: bool = False) -> dict:
    from semievol_core.training import TrainConfig, train_lora

    cfg = TrainConfig(epochs=EPOCHS, learning_rate=LR, batch_size=BATCH, warmup_ratio=WARMUP, seed=SEED,
                      val_fraction=0.0, early_stopping_patience=None, lr_scheduler="cosine")
    with tempfile.TemporaryDirectory() as tmp:
        res = train_lora(MODEL, df, Path(tmp) / "adapter", cfg, progress=False,
                         gradient_checkpointing=gradient_checkpointing)
        curve = json.loads((Path(tmp) / "adapter" / "loss_curve.json").read_text())
    losses = [s["loss"] for s in curve["train"]]
    return {"tok_s": res.tokens_per_s, "final_loss": sum(losses[-LAST_STEPS:]) / len(losses[-LAST_STEPS:]),
            "train_tokens": res.train_tokens, "steps": len(losses)}


def run_trl(df) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from semievol_core.models import resolve_model
    from semievol_core.prompts import question_chat, training_target
    from semievol_core.training import _answer_text, _options_of

    path = resolve_model(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    rows = []
    for r in df.itertuples(index=False):
        options = _options_of(r.options)
        rows.append({"prompt": question_chat(str(r.question), options),
                     "completion": [{"role": "assistant", "content": training_target(_answer_text(options, r.answer))}]})
    data = Dataset.from_list(rows)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, num_train_epochs=EPOCHS, learning_rate=LR, per_device_train_batch_size=BATCH,
                         lr_scheduler_type="cosine", warmup_steps=WARMUP, seed=SEED, data_seed=SEED,
                         bf16=False, use_cpu=True, save_strategy="no", report_to="none", logging_steps=1,
                         disable_tqdm=True)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", bias="none",
                          task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
        tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) * EPOCHS
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tok_s": tokens / train_s, "final_loss": sum(losses[-LAST_STEPS:]) / len(losses[-LAST_STEPS:]),
            "train_tokens": tokens, "steps": len(losses),
            "gradient_checkpointing": bool(args.gradient_checkpointing)}


def worker(trainer: str, rows: int | None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.manual_seed(SEED)
    df = load_rows(rows)
    t0 = time.perf_counter()
    out = run_trl(df) if trainer == "trl" else run_project(df, gradient_checkpointing=trainer == "project_ckpt")
    out.update(trainer=trainer, wall_s=round(time.perf_counter() - t0, 1), peak_rss_mb=round(peak_rss_mb()),
               rows=len(df))
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=256, help="sample this many labeled rows (0: all 452)")
    ap.add_argument("--trainers", default=",".join(TRAINERS))
    ap.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    rows = args.rows or None
    if args.worker:
        return worker(args.worker, rows)
    from quality import machine

    records = []
    for trainer in args.trainers.split(","):
        cmd = [sys.executable, __file__, "--worker", trainer, "--rows", str(args.rows)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{trainer} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        records.append(json.loads(line[len("RESULT "):]))
        print(f"{trainer}: {records[-1]}", flush=True)
    by = {r["trainer"]: r for r in records}
    summary = {}
    for name in ("project", "project_ckpt"):
        if name in by and "trl" in by:
            p, t = by[name], by["trl"]
            summary[name] = {"tok_s_ratio_over_trl": p["tok_s"] / t["tok_s"],
                             "final_loss_rel_diff_vs_trl": (p["final_loss"] - t["final_loss"]) / t["final_loss"],
                             "rss_ratio_over_trl": p["peak_rss_mb"] / t["peak_rss_mb"]}
    print("| trainer | tok/s | final loss | peak RSS MB | steps | wall s |\n|---|---:|---:|---:|---:|---:|")
    for r in records:
        print(f"| {r['trainer']} | {r['tok_s']:.0f} | {r['final_loss']:.4f} | {r['peak_rss_mb']} | {r['steps']} | {r['wall_s']} |")
    print(json.dumps(summary, indent=2))
    out = HERE / "results" / "training.json"
    out.write_text(json.dumps({"machine": machine(), "settings": {"model": MODEL, "lr": LR, "epochs": EPOCHS,
                                                                   "batch": BATCH, "warmup": WARMUP, "rows": records[0]["rows"]},
                               "records": records, **summary}, indent=2))


if __name__ == "__main__":
    main()
