"""LoRA training mechanics on the tiny Llama: loss mask, loss, saving, continuing, early stopping, seeds.

The conftest tiny model has std-0.02 embeddings, so its logits can barely move (its loss floor is
~10 nats); `sharp_model_dir` scales its (tied) embeddings by 10 so that a LoRA can actually fit and
overfit a few examples within a few epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from semievol_core.training import (
    IGNORE_INDEX,
    PadCollator,
    TrainConfig,
    encode_example,
    encode_examples,
    encode_texts,
    split_indices,
    target_loss,
    train_lora,
)

SENTIMENT = ["negative", "neutral", "positive"]
WORDS = ["rose", "fell", "flat", "beat", "missed", "steady", "cut", "raised"]


def make_examples(n: int, answers: str | list[str] = "ABC") -> pd.DataFrame:
    rows = []
    for i in range(n):
        words = " ".join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 5))
        answer = answers[i % len(answers)] if isinstance(answers, str) else answers[i]
        rows.append({"question": f"Headline {i}: profits {words}.", "options": SENTIMENT, "answer": answer})
    return pd.DataFrame(rows)


def fast_config(**kw) -> TrainConfig:
    base = dict(epochs=3, learning_rate=1e-2, batch_size=4, val_fraction=0.2, max_length=256, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def lora_tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("sharp_tiny")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10.0)  # tied: the LM head scales too
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trained(sharp_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    cfg = fast_config(early_stopping_patience=None)
    res = train_lora(str(sharp_model_dir), make_examples(20), root / "adapter", cfg, progress=False)
    return root, cfg, res


# ---- examples and loss --------------------------------------------------------------------------

def test_loss_mask_covers_exactly_the_assistant_target(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ex = encode_example(tok, "Shares rose.", SENTIMENT, "C", max_length=512)
    ids, labels = ex["input_ids"], ex["labels"]
    n_prompt = sum(1 for x in labels if x == IGNORE_INDEX)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt and IGNORE_INDEX not in labels[n_prompt:]
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:]) == "Answer: C<|im_end|>"
    # The prompt is tokenized exactly as the backends tokenize it at inference.
    from semievol_core.prompts import question_chat

    prompt = tok.apply_chat_template(question_chat("Shares rose.", SENTIMENT), add_generation_prompt=True,
                                     tokenize=False)
    assert ids[:n_prompt] == tok(prompt, add_special_tokens=False)["input_ids"]


def test_answers_as_option_text_and_json_options(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    df = pd.DataFrame({"question": ["q1", "q2", "What is 2+2?"],
                       "options": [json.dumps(SENTIMENT), SENTIMENT, None],
                       "answer": ["positive", "b", "4"]})
    targets = []
    for ex in encode_examples(tok, df, max_length=512):
        start = next(i for i, x in enumerate(ex["labels"]) if x != IGNORE_INDEX)
        targets.append(tok.decode(ex["input_ids"][start:]))
    assert targets == ["Answer: C<|im_end|>", "Answer: B<|im_end|>", "Answer: 4<|im_end|>"]


def test_kept_column_loss_equals_full_model_loss(tiny_model_dir):
    """The left-padded, last-columns-only loss is the ordinary causal-LM loss on the target."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    encoded = encode_examples(tok, make_examples(3), max_length=512)
    encoded[1]["input_ids"] = encoded[1]["input_ids"][5:]  # unequal lengths: real padding
    encoded[1]["labels"] = encoded[1]["labels"][5:]
    batch = PadCollator(tok.pad_token_id)(encoded)
    with torch.no_grad():
        labels = batch.pop("labels")
        ours = target_loss(model(**batch), labels)
        per_row = [model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]))
                   for e in encoded]
    n_tok = [sum(x != IGNORE_INDEX for x in e["labels"]) for e in encoded]
    full = sum(o.loss * n for o, n in zip(per_row, n_tok)) / sum(n_tok)
    assert batch["logits_to_keep"] < batch["input_ids"].shape[1]
    assert ours.item() == pytest.approx(full.item(), rel=1e-4)


def test_bad_inputs_are_rejected(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no training examples"):
        train_lora(str(tiny_model_dir), make_examples(4).iloc[:0], tmp_path / "a", fast_config(), progress=False)
    with pytest.raises(ValueError, match="answer"):
        train_lora(str(tiny_model_dir), make_examples(4).drop(columns="answer"), tmp_path / "a",
                   fast_config(), progress=False)
    with pytest.raises(ValueError, match="example 1"):
        train_lora(str(tiny_model_dir), make_examples(4, ["A", "Z", "B", "C"]), tmp_path / "a",
                   fast_config(), progress=False)
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=0.0, early_stopping_patience=2)
    assert not (tmp_path / "a").exists()


# ---- training -----------------------------------------------------------------------------------

def test_training_lowers_loss_and_saves_a_servable_adapter(trained, sharp_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, cfg, res = trained
    out = Path(res.adapter_dir)
    # Only the adapter directory, with only the adapter and our two JSON files (+ peft's card).
    assert [p.name for p in root.iterdir()] == ["adapter"]
    assert {p.name for p in out.iterdir()} <= {"adapter_config.json", "adapter_model.safetensors",
                                               "loss_curve.json", "train_config.json", "README.md"}
    curve = json.loads((out / "loss_curve.json").read_text())
    steps = [s["loss"] for s in curve["train"]]
    assert len(steps) == 3 * 4  # 16 training rows / batch 4 x 3 epochs
    assert res.train_loss < steps[0] - 1.0
    assert [v["epoch"] for v in curve["val"]] == [1.0, 2.0, 3.0]
    assert res.best_val_loss == min(v["val_loss"] for v in curve["val"])
    assert res.epochs_run == 3 and res.train_tokens > 0 and res.tokens_per_s > 0
    assert json.loads((out / "train_config.json").read_text())["train_config"] == cfg.model_dump()

    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["modules_to_save"] is None and adapter_cfg["task_type"] == "CAUSAL_LM"
    targets = {name.rsplit(".", 1)[-1] for name in adapter_cfg["target_modules"]}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    ids = torch.tensor([[1, 4093, 198, 4182, 357, 47, 198]])
    base = AutoModelForCausalLM.from_pretrained(sharp_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, str(out)).eval()
        after = tuned(input_ids=ids).logits
    assert (after - before).abs().max().item() > 1e-3


def test_text_examples_make_every_question_token_a_target(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = pd.DataFrame({"question": ["Shares rose.", "Profit fell sharply in the third quarter."]})
    for (text,), ex in zip(texts.itertuples(index=False), encode_texts(tok, texts, max_length=512)):
        # the question's own tokens then EOS, all of them targets but the first: no template, no answer
        assert ex["input_ids"] == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ex["labels"] == [IGNORE_INDEX] + ex["input_ids"][1:]
    assert len(encode_texts(tok, texts.iloc[1:], max_length=3)[0]["input_ids"]) == 3  # the start is kept
    with pytest.raises(ValueError, match="example 1: empty question"):
        encode_texts(tok, pd.DataFrame({"question": ["fine", " "]}), max_length=512)
    with pytest.raises(ValueError, match=r"lack column\(s\) \['question'\]"):
        encode_texts(tok, pd.DataFrame({"text": ["x"]}), max_length=512)


def test_tapt_learns_the_unlabeled_text_and_the_sft_continues_it(sharp_model_dir, tmp_path):
    """objective="text" fits the questions alone (no options, no answers needed), and its adapter
    is one the answer-objective SFT continues from."""
    cfg = fast_config(early_stopping_patience=None, val_fraction=0.0, epochs=4)
    texts = make_examples(16)[["question"]]
    tapt = train_lora(str(sharp_model_dir), texts, tmp_path / "tapt", cfg, progress=False, objective="text")
    curve = json.loads((tmp_path / "tapt" / "loss_curve.json").read_text())["train"]
    assert tapt.train_loss < curve[0]["loss"] - 1.0  # the text's next-token loss falls
    assert json.loads((tmp_path / "tapt" / "train_config.json").read_text())["objective"] == "text"
    sft = train_lora(str(sharp_model_dir), make_examples(8), tmp_path / "sft", cfg.model_copy(update={"epochs": 1}),
                     init_adapter=str(tapt.adapter_dir), progress=False)
    run = json.loads((tmp_path / "sft" / "train_config.json").read_text())
    assert run["objective"] == "answer" and run["init_adapter"] == str(tapt.adapter_dir)
    assert lora_tensors(sft.adapter_dir).keys() == lora_tensors(tapt.adapter_dir).keys()


def test_same_seed_same_adapter(trained, sharp_model_dir, tmp_path):
    import torch

    _, cfg, res = trained
    again = train_lora(str(sharp_model_dir), make_examples(20), tmp_path / "again", cfg, progress=False)
    a, b = lora_tensors(res.adapter_dir), lora_tensors(again.adapter_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_trains_the_same_adapter(trained, sharp_model_dir, tmp_path):
    import torch

    _, cfg, res = trained
    ckpt = train_lora(str(sharp_model_dir), make_examples(20), tmp_path / "ckpt", cfg, progress=False,
                      gradient_checkpointing=True)
    a, b = lora_tensors(res.adapter_dir), lora_tensors(ckpt.adapter_dir)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4  # same math, same dropout masks
    assert ckpt.best_val_loss == pytest.approx(res.best_val_loss, rel=1e-4)
    said = json.loads((Path(ckpt.adapter_dir) / "train_config.json").read_text())["activation_checkpointing"]
    assert said == {"on": True, "why": "activation checkpointing on: set in the config"}  # how it was trained


def test_continue_from_adapter_starts_from_its_weights(trained, sharp_model_dir, tmp_path):
    import torch

    _, cfg, res = trained
    first_run_start = json.loads((Path(res.adapter_dir) / "loss_curve.json").read_text())["train"][0]["loss"]
    # lr 0: the optimizer never moves the weights, so the output is exactly what was loaded...
    frozen = train_lora(str(sharp_model_dir), make_examples(20), tmp_path / "cont",
                        cfg.model_copy(update={"learning_rate": 0.0, "epochs": 1}),
                        init_adapter=str(res.adapter_dir), progress=False)
    a, b = lora_tensors(res.adapter_dir), lora_tensors(frozen.adapter_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ...and those weights are the trained ones: the loss starts where the first run ended.
    start = json.loads((tmp_path / "cont" / "loss_curve.json").read_text())["train"][0]["loss"]
    assert start < first_run_start - 1.0
    assert start == pytest.approx(res.train_loss, abs=1.0)


def test_early_stopping_stops_on_overfitting_and_keeps_the_best_epoch(sharp_model_dir, tmp_path):
    """Training rows all answer A, validation rows all answer B: once the format is learned, every
    further step toward A raises the validation loss."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    n, cfg = 20, fast_config(epochs=10, val_fraction=0.2, early_stopping_patience=1)
    _, val_idx = split_indices(n, cfg.val_fraction, cfg.seed)
    df = make_examples(n, ["B" if i in val_idx else "A" for i in range(n)])
    res = train_lora(str(sharp_model_dir), df, tmp_path / "es", cfg, progress=False)

    curve = json.loads((tmp_path / "es" / "loss_curve.json").read_text())
    val = [v["val_loss"] for v in curve["val"]]
    assert res.epochs_run < cfg.epochs and len(val) == res.epochs_run
    assert val[-1] > res.best_val_loss == min(val) and curve["kept"] == "best"
    assert len(curve["train"]) == res.epochs_run * 4

    # The saved adapter is the best epoch's: its validation loss is best_val_loss.
    tok = AutoTokenizer.from_pretrained(sharp_model_dir)
    batch = PadCollator(tok.pad_token_id)(encode_examples(tok, df.iloc[val_idx], cfg.max_length))
    base = AutoModelForCausalLM.from_pretrained(sharp_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(res.adapter_dir)).eval()
    with torch.no_grad():
        labels = batch.pop("labels")
        loss = target_loss(model(**batch), labels).item()
    assert loss == pytest.approx(res.best_val_loss, rel=1e-4)


def test_max_steps_sets_the_number_of_optimizer_updates_whatever_the_data_size(sharp_model_dir, tmp_path):
    """SFT and the final fine-tune get the same update budget: 6 updates of 4 rows are 3 epochs of
    8 rows or 1.5 epochs of 16, and `epochs` no longer counts."""
    for n in (8, 16):
        cfg = fast_config(epochs=1, val_fraction=0, early_stopping_patience=None, max_steps=6)
        moved: list[float] = []
        train_lora(str(sharp_model_dir), make_examples(n, ["A"] * n), tmp_path / f"n{n}", cfg, progress=False,
                   on_progress=moved.append)
        curve = json.loads((tmp_path / f"n{n}" / "loss_curve.json").read_text())
        assert [s["step"] for s in curve["train"]] == [1, 2, 3, 4, 5, 6]
        assert curve["train"][-1]["epoch"] == pytest.approx(6 * 4 / n)
        assert moved == pytest.approx([k / 6 for k in range(1, 7)])  # after each update


@pytest.mark.slow
def test_semievol_train_runs_data_parallel_under_torchrun_on_gloo(tiny_model_dir, tmp_path):
    """`torchrun --nproc_per_node 2 -m flows.cli train` on CPU: two processes train one replica
    (DDP over gloo), so an epoch of 36 rows at batch 8 is ceil(36 / 16) = 3 updates, not 5, and
    the first process alone writes the adapter."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    import pandas as pd

    from conftest import sentiment_rows
    from semievol_core.data import write_table

    labeled = write_table(pd.DataFrame(sentiment_rows(40)), tmp_path / "labeled.parquet", "labeled")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun comes with torch"
    out = tmp_path / "adapter"
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "flows.cli", "train", "--labeled", str(labeled),
                           "--out", str(out), "--model", str(tiny_model_dir), "--set", "train.epochs=1",
                           "--set", "execution.threads=1", "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("adapter: ") == 1  # one line, from rank 0
    run = json.loads((out / "train_config.json").read_text())
    curve = json.loads((out / "loss_curve.json").read_text())
    assert run["world_size"] == 2 and run["n_train"] == 36
    assert [s["step"] for s in curve["train"]] == [1, 2, 3]
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    assert not list(tmp_path.glob(".*adapter*"))  # no temp directory of a second writer left behind


def test_auto_checkpointing_turns_on_only_when_the_activations_would_not_fit():
    """SmolLM2-135M's shape, a batch of 8 rows of 162 tokens (the FPB batch measured at 5.1 GB
    peak): ~3.7 GiB of activations, so on under 2 GiB of headroom and off under 8."""
    import resource
    from types import SimpleNamespace

    from semievol_core.training import activation_bytes, needs_checkpointing

    smollm2 = SimpleNamespace(num_hidden_layers=30, hidden_size=576, intermediate_size=1536)
    assert activation_bytes(smollm2, 8 * 162) == 8 * 162 * 30 * (28 * 576 + 6 * 1536) * 4
    held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    on, why = needs_checkpointing(smollm2, 8, 162, budget_bytes=held + 8 * 2**30)
    assert not on and why.startswith("activation checkpointing off: a step of 8 x 162 tokens keeps ~3.7 GiB")
    on, why = needs_checkpointing(smollm2, 8, 162, budget_bytes=held + 2 * 2**30)
    assert on and "2.0 GiB left" in why
    assert needs_checkpointing(smollm2, 1, 40, budget_bytes=held + 2 * 2**30)[0] is False  # a small batch fits


def test_the_memory_left_in_a_container_is_read_from_cgroup_v2_or_v1_as_the_working_set(tmp_path):
    """A pod's limit, not the host's free memory, bounds training: v2 (memory.max) and v1
    (memory/memory.limit_in_bytes) alike, in this process's own cgroup (/proc/self/cgroup) or an
    ancestor's, whichever is tighter, with the reclaimable inactive page cache not counted as used;
    no limit ("max", or v1's page-rounded 2^63) reads as None."""
    from semievol_core.training import cgroup_left_bytes

    gib = 2**30
    v2 = tmp_path / "v2"
    (v2 / "pod" / "app").mkdir(parents=True)
    own = tmp_path / "cgroup-v2"
    own.write_text("0::/pod/app\n")
    (v2 / "memory.max").write_text("max\n")  # the mount root: no limit
    (v2 / "memory.current").write_text(f"{9 * gib}\n")
    (v2 / "pod" / "app" / "memory.max").write_text(f"{4 * gib}\n")
    (v2 / "pod" / "app" / "memory.current").write_text(f"{3 * gib}\n")
    (v2 / "pod" / "app" / "memory.stat").write_text(f"anon 1000\ninactive_file {gib}\nactive_file 5\n")
    assert cgroup_left_bytes(v2, own) == 2 * gib
    (v2 / "pod" / "memory.max").write_text(f"{3 * gib}\n")  # a tighter parent wins
    (v2 / "pod" / "memory.current").write_text(f"{2 * gib}\n")
    assert cgroup_left_bytes(v2, own) == gib
    (v2 / "pod" / "memory.max").write_text("max\n")
    (v2 / "pod" / "app" / "memory.max").write_text("max\n")
    assert cgroup_left_bytes(v2, own) is None

    v1 = tmp_path / "v1"
    (v1 / "memory" / "job").mkdir(parents=True)
    own = tmp_path / "cgroup-v1"
    own.write_text("5:cpu,cpuacct:/elsewhere\n4:memory:/job\n0::/\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{9 * gib}\n")
    (v1 / "memory" / "job" / "memory.limit_in_bytes").write_text(f"{4 * gib}\n")
    (v1 / "memory" / "job" / "memory.usage_in_bytes").write_text(f"{gib}\n")
    (v1 / "memory" / "job" / "memory.stat").write_text(f"cache 7\ninactive_file 3\ntotal_inactive_file {gib // 2}\n")
    assert cgroup_left_bytes(v1, own) == 4 * gib - gib // 2
    (v1 / "memory" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_left_bytes(v1, own) is None
    assert cgroup_left_bytes(tmp_path / "none", tmp_path / "no-proc-file") is None
