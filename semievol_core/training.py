"""LoRA fine-tuning on `Answer: X` targets with transformers' Trainer (CPU or GPU).

    import pandas as pd
    from semievol_core.training import TrainConfig, train_lora

    df = pd.DataFrame({"question": [...], "options": [["negative", "neutral", "positive"], ...],
                       "answer": ["B", ...]})                    # letter, or option text, or free text
    res = train_lora("smollm2-135m-instruct", df, "runs/x/warm_adapter", TrainConfig())
    res.adapter_dir, res.best_val_loss, res.tokens_per_s
    # train on from an existing adapter (its LoRA shape is kept):
    res2 = train_lora("smollm2-135m-instruct", more_df, "runs/x/evol_adapter", TrainConfig(),
                      init_adapter=res.adapter_dir)

Each example is the model's own chat template: the prompt is `question_chat(...)` rendered with
`add_generation_prompt=True` (exactly what the backends send at inference), the target is what the
template writes for the assistant turn `Answer: X`, i.e. `Answer: X<|im_end|>` for SmolLM2 (derived by
rendering `training_chat` and taking the suffix after the prompt). Loss covers the target only.

The output directory holds a peft adapter (LoRA on every linear layer, no `modules_to_save`, so vLLM
can serve it) plus `loss_curve.json` (per-step train loss, per-epoch validation loss) and
`train_config.json`. It is written to a sibling temp dir and renamed into place; the Trainer's own
output dir is a temp dir that is deleted, so no checkpoints or optimizer states are left anywhere.

Gold and pseudo-labels: `train_lora(..., n_gold=64, pseudo_weight=0.5)` says the first 64 examples
are gold labels and the rest pseudo-labels. The validation slice (early stopping) is then drawn
from the gold ones only, since noisy labels make a noisy stopping signal (no gold: no validation,
all epochs run); a pseudo-label's target tokens count `pseudo_weight` times in the loss.

Task-adaptive pre-training (TAPT, Gururangan et al., ACL 2020): `train_lora(..., objective="text")`
trains the adapter to predict the examples' question text itself (next-token loss on every token of
the question, no chat template, no answer), e.g. on the unlabeled rows before the SFT; the SFT then
continues that adapter with `init_adapter`. Such examples need only a `question` column.

Defaults (lr 1e-3, at most 3 epochs, early stopping with patience 1 on a 10% validation slice):
see `bench/training_defaults.md` (SmolLM2-135M on FPB). The paper's 1e-4 x 2 epochs barely moves a
135M model; 5e-4 needed 3 epochs; 1e-3 beat 5e-4 x 2 epochs after one epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .atomic import atomic_dir
from .prompts import LETTERS, question_chat, training_chat, training_target

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the causal-LM loss skips (prompt and padding positions)
REQUIRED_COLUMNS = ("question", "options", "answer")
TEXT_COLUMNS = ("question",)  # objective "text" (TAPT): the question is the whole example


class TrainConfig(BaseModel):
    """Everything that determines the trained adapter (given model, data and seed).

    Execution-only knobs (threads, dataloader workers, progress bar) are arguments of `train_lora`,
    not fields here: they change speed, not the configuration (on CPU a different thread count can
    change float summation order, i.e. results in the last bits).
    """

    model_config = ConfigDict(extra="forbid")

    # LoRA shape. Ignored when continuing from `init_adapter` (the adapter's own shape is kept).
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    # Optimisation. lr 1e-3 with up to 3 epochs (early stopping picks fewer): bench/training_defaults.md.
    epochs: int = Field(3, ge=1)
    # Optimizer updates in all; when set it replaces `epochs` (how many epochs that is follows from
    # the number of examples). The same budget for the SFT baseline and the final fine-tune means a
    # difference between them comes from the data, not from extra optimizer steps.
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(1e-3, ge=0)
    batch_size: int = Field(8, ge=1)  # examples per device step
    grad_accum: int = Field(1, ge=1)  # steps per optimizer update (effective batch = product)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)  # fraction of all optimizer steps
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(512, ge=8)  # tokens; longer prompts lose their start (warned)
    seed: int = 0
    # Validation slice of the labeled examples (0 disables validation and early stopping).
    val_fraction: float = Field(0.1, ge=0, lt=1)
    # Stop after this many epochs without a lower validation loss and keep the best epoch's adapter;
    # None trains all `epochs` and keeps the last.
    early_stopping_patience: int | None = Field(1, ge=1)

    @model_validator(mode="after")
    def _early_stopping_needs_validation(self) -> "TrainConfig":
        if self.early_stopping_patience is not None and self.val_fraction == 0:
            raise ValueError("early_stopping_patience needs a validation slice (val_fraction > 0)")
        return self


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    train_loss: float  # mean per-step train loss over the last epoch run
    best_val_loss: float | None  # lowest per-epoch validation loss (None without validation)
    epochs_run: int
    train_tokens: int  # non-padding tokens fed forward+backward (examples x epochs run)
    tokens_per_s: float  # train_tokens / training seconds (validation passes excluded)
    wall_s: float  # whole call: loading, training, validation, saving


# ---- data ------------------------------------------------------------------------------------

def _options_of(value: Any) -> list[str] | None:
    """Options as a list of strings: accepts lists/tuples/arrays, JSON list strings, None/NaN."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not text.startswith("["):
            raise ValueError(f"options must be a list or a JSON list string, got {value!r}")
        value = json.loads(text)
    items = [str(v) for v in list(value)]
    return items or None


def _answer_text(options: list[str] | None, answer: Any) -> str:
    """The answer as written after `Answer: `: an option letter when there are options."""
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        raise ValueError("missing answer")
    text = str(answer).strip()
    if not text:
        raise ValueError("empty answer")
    if not options:
        return text
    if len(text) == 1 and text.upper() in LETTERS[: len(options)]:
        return text.upper()
    # The option's text instead of its letter.
    folded = [o.strip().casefold() for o in options]
    if text.casefold() in folded:
        return LETTERS[folded.index(text.casefold())]
    raise ValueError(f"answer {text!r} is neither a letter A-{LETTERS[len(options) - 1]} nor an option")


def assistant_target(tokenizer, question: str, options: Sequence[str] | None, answer: str) -> tuple[str, str]:
    """(prompt, target) text: the target is the template's rendering of the assistant turn.

    Trailing whitespace after the end-of-turn token is dropped: generation stops at that token, so
    the model never writes what follows. A template that writes no end-of-turn marker gets the
    tokenizer's EOS so the fine-tune learns to stop.
    """
    prompt = tokenizer.apply_chat_template(question_chat(question, options), add_generation_prompt=True,
                                           tokenize=False)
    full = tokenizer.apply_chat_template(training_chat(question, options, answer), tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the full chat; "
                         "cannot separate the target")
    target = full[len(prompt):].rstrip()
    body = training_target(answer)
    if not target.startswith(body):
        raise ValueError(f"the chat template rewrites the assistant turn: {target!r}")
    if target == body and tokenizer.eos_token:
        target += tokenizer.eos_token
    return prompt, target


def encode_example(tokenizer, question: str, options: Sequence[str] | None, answer: str,
                   max_length: int) -> dict[str, list[int]]:
    """input_ids and labels (IGNORE_INDEX on the prompt) for one example.

    Prompt and target are tokenized separately (the template already holds the special tokens), so
    the prompt's tokens are exactly those the model sees at inference.
    """
    prompt, target = assistant_target(tokenizer, question, options, answer)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if len(t_ids) >= max_length:
        raise ValueError(f"target of {len(t_ids)} tokens does not fit max_length={max_length}")
    overflow = len(p_ids) + len(t_ids) - max_length
    if overflow > 0:  # keep the end of the prompt: the question's options and the assistant header
        p_ids = p_ids[overflow:]
    return {"input_ids": p_ids + t_ids, "labels": [IGNORE_INDEX] * len(p_ids) + t_ids,
            "truncated": overflow > 0}


def encode_examples(tokenizer, examples, max_length: int) -> list[dict[str, list[int]]]:
    """Validate the DataFrame and encode every row (row order kept)."""
    check_examples(examples)
    out = []
    for i, row in enumerate(examples.itertuples(index=False)):
        try:
            options = _options_of(row.options)
            answer = _answer_text(options, row.answer)
        except (ValueError, TypeError) as e:
            raise ValueError(f"example {i}: {e}") from e
        out.append(encode_example(tokenizer, str(row.question), options, answer, max_length))
    truncated = sum(e.pop("truncated") for e in out)
    if truncated:
        log.warning("%d of %d examples exceed max_length=%d: their prompts lost their start",
                    truncated, len(out), max_length)
    return out


def encode_texts(tokenizer, examples, max_length: int) -> list[dict[str, list[int]]]:
    """input_ids and labels of each row's question text, followed by the tokenizer's EOS, for
    task-adaptive pre-training: every token is a target but the first, which nothing before it
    predicts (PadCollator left-pads, so its label would be read off a padding column). A text
    longer than max_length keeps its start (there is no answer at the end to keep)."""
    check_examples(examples, TEXT_COLUMNS)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for i, text in enumerate(examples["question"]):
        if text is None or not str(text).strip():
            raise ValueError(f"example {i}: empty question")
        ids = (tokenizer(str(text), add_special_tokens=False)["input_ids"] + eos)[:max_length]
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] + ids[1:]})
    return out


def check_examples(examples, required: Sequence[str] = REQUIRED_COLUMNS) -> None:
    missing = [c for c in required if c not in getattr(examples, "columns", ())]
    if missing:
        raise ValueError(f"examples lack column(s) {missing}; need {list(required)}")
    if len(examples) == 0:
        raise ValueError("no training examples")


@contextlib.contextmanager
def peft_without_deprecation_warning():
    """peft (peft_model.py) reads transformers' deprecated `is_gradient_checkpointing` when it wraps
    a model, and transformers warns each time: a FutureWarning users cannot act on. Only that one
    warning, only around the wrap; our code uses `is_activation_checkpointing`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def split_indices(n: int, val_fraction: float, seed: int, n_gold: int | None = None) -> tuple[list[int], list[int]]:
    """(train, validation) row indices: a seeded shuffle, validation = round(n * fraction) rows,
    at least 1 when the fraction is positive and at least 1 row is left to train on.

    n_gold: only rows 0..n_gold-1 (the gold labels; pseudo-labels follow) can be validation rows,
    round(n_gold * fraction) of them; 0 gives no validation. None, or n_gold = n, is the plain split."""
    pool = n if n_gold is None else min(n_gold, n)
    if val_fraction <= 0 or (n_gold is not None and pool == 0):
        return list(range(n)), []
    n_val = min(max(1, round(pool * val_fraction)), n - 1, pool)
    if n_val <= 0:
        raise ValueError(f"{n} example(s) cannot be split into training and validation")
    val = np.random.default_rng(seed).permutation(pool).tolist()[:n_val]
    return sorted(set(range(n)) - set(val)), sorted(val)


class PadCollator:
    """Left-pads a batch so every row's target sits in the last columns.

    That lets the model compute logits for those columns only (`logits_to_keep`): the target is
    ~5 of ~80 tokens, and the vocabulary projection plus its softmax (49k entries for SmolLM2) is a
    fifth of a small model's FLOPs per position. Padding is masked out of attention and loss;
    position ids count real tokens only, as at inference.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, list[int]]]):
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, width - n:] = torch.tensor(b["input_ids"])
            labels[i, width - n:] = torch.tensor(b["labels"])
            mask[i, width - n:] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        # Columns from the first labeled one on, plus the one before it (it predicts the first).
        labeled = (labels != IGNORE_INDEX).any(0).nonzero()
        keep = width - int(labeled[0]) + 1 if len(labeled) else 1
        out = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids,
               "labels": labels, "logits_to_keep": min(keep, width)}
        if any("weight" in b for b in batch):  # per-row loss weights (pseudo_weight); popped before the model
            out["loss_weights"] = torch.tensor([float(b.get("weight", 1.0)) for b in batch])
        return out


def target_loss(outputs, labels, num_items_in_batch=None, row_weights=None):
    """Token-mean cross-entropy of the target tokens from the kept (last) logits columns.

    `num_items_in_batch` (the Trainer's count of labeled tokens over all gradient-accumulation
    micro-batches) makes the mean run over the whole accumulated batch, as the built-in loss does.
    `row_weights` (one per row) scales each row's token losses; the divisor stays the token count.
    """
    import torch

    logits = outputs.logits.float()
    keep = logits.shape[1]
    # logits[:, j] predicts the token after it: pair columns -keep..-2 with labels -keep+1..-1.
    pred = logits[:, :-1].reshape(-1, logits.shape[-1])
    gold = labels[:, labels.shape[1] - keep + 1:].reshape(-1).to(pred.device)
    if row_weights is None:
        total = torch.nn.functional.cross_entropy(pred, gold, ignore_index=IGNORE_INDEX, reduction="sum")
    else:
        per_token = torch.nn.functional.cross_entropy(pred, gold, ignore_index=IGNORE_INDEX, reduction="none")
        total = (per_token.view(labels.shape[0], -1) * row_weights.to(per_token)[:, None]).sum()
    if num_items_in_batch is None:
        return total / (gold != IGNORE_INDEX).sum().clamp(min=1)
    return total / num_items_in_batch


# ---- memory ----------------------------------------------------------------------------------

def activation_bytes(config, tokens: int) -> int:
    """What autograd keeps for one training step of `tokens` tokens (batch x padded length)
    without activation checkpointing, for a decoder with LoRA on every linear layer: per layer
    and token about 28 x hidden + 6 x intermediate float32 values. Measured: SmolLM2-135M, batch 8
    of FPB rows up to 162 tokens, peak RSS 5.1 GB of which ~1.2 GB before training; the formula
    gives 3.9 GB for those 1,296 tokens."""
    per_token = config.num_hidden_layers * (28 * config.hidden_size + 6 * config.intermediate_size)
    return int(tokens * per_token * 4)


# A container's memory limit and usage, per cgroup version: the controller's directory under the
# cgroup mount, and its limit, usage and stat files. v1's memory controller is still the default on
# many Kubernetes nodes.
CGROUP_FILES = {"v2": ("", "memory.max", "memory.current", "memory.stat", "inactive_file"),
                "v1": ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat",
                       "total_inactive_file")}
NO_LIMIT = 2**60  # v1 writes "no limit" as a page-rounded 2^63; anything this large is no limit


def _own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """This process's cgroup path per version, from /proc/self/cgroup ("0::/a/b" is v2, "4:memory:/a/b"
    v1); "/" when unreadable, or inside a cgroup namespace, where the mount root is the container."""
    own = {"v2": "/", "v1": "/"}
    try:
        for line in proc_cgroup.read_text().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            if hierarchy == "0" and not controllers:
                own["v2"] = path
            elif "memory" in controllers.split(","):
                own["v1"] = path
    except (OSError, ValueError):
        pass
    return own


def cgroup_left_bytes(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes left under the tightest cgroup memory limit over this process's cgroup and its
    ancestors (v2 or v1), or None without one. Usage is the working set, as the kubelet and the OOM
    killer see it: the usage minus the inactive page cache, which the kernel reclaims before it
    kills (Parquet reads fill that cache)."""
    lefts = []
    for version, path in _own_cgroups(proc_cgroup).items():
        controller, limit_file, usage_file, stat_file, inactive_key = CGROUP_FILES[version]
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):  # own cgroup first, then each ancestor up to the mount
            directory = root.joinpath(controller, *parts[:depth])
            try:
                limit = (directory / limit_file).read_text().strip()
                usage = int((directory / usage_file).read_text())
            except (OSError, ValueError):
                continue
            if limit == "max" or int(limit) >= NO_LIMIT:
                continue
            inactive = 0
            try:
                stat = dict(line.split() for line in (directory / stat_file).read_text().splitlines() if line.strip())
                inactive = int(stat.get(inactive_key, 0))
            except (OSError, ValueError):
                pass
            lefts.append(int(limit) - max(usage - inactive, 0))
    return min(lefts) if lefts else None


def available_bytes() -> int:
    """Memory this process may still take: the machine's MemAvailable, or less under a cgroup
    (container) limit."""
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")
        avail = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    left = cgroup_left_bytes()
    return avail if left is None else min(avail, left)


def needs_checkpointing(config, batch_size: int, max_tokens: int, budget_bytes: int | None = None) -> tuple[bool, str]:
    """(whether to checkpoint activations, the reason in one line): on when a step of the longest
    examples at `batch_size` would keep more activations than the memory left: `budget_bytes`
    minus this process's peak RSS so far (conservative: the peak, not the current size), or
    available_bytes() without a budget."""
    need = activation_bytes(config, batch_size * max_tokens)
    if budget_bytes is None:
        left = available_bytes()
    else:
        import resource

        left = budget_bytes - resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    on = need > 0.9 * left  # a tenth kept back for the optimizer, the tokenizer, fragmentation
    return on, (f"activation checkpointing {'on' if on else 'off'}: a step of {batch_size} x {max_tokens} tokens "
                f"keeps ~{need / 2**30:.1f} GiB of activations, {max(left, 0) / 2**30:.1f} GiB left")


# ---- Trainer callbacks -----------------------------------------------------------------------

def _make_callbacks(progress: bool):
    """Callback classes, built lazily so importing this module does not import transformers."""
    from transformers.trainer_callback import ProgressCallback, TrainerCallback

    class BestAndEarlyStop(TrainerCallback):
        """Per-epoch validation loss, an in-memory copy of the best LoRA weights, early stopping,
        and the time spent validating (subtracted from the throughput)."""

        def __init__(self, model, patience: int | None) -> None:
            self.model = model
            self.patience = patience
            self.val_curve: list[dict[str, float]] = []
            self.best_loss: float | None = None
            self.best_state: dict | None = None
            self.bad_epochs = 0
            self.eval_s = 0.0
            self._epoch_end = None

        def on_epoch_end(self, args, state, control, **kwargs):
            self._epoch_end = time.perf_counter()  # validation runs right after this

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if self._epoch_end is not None:
                self.eval_s += time.perf_counter() - self._epoch_end
                self._epoch_end = None
            loss = float(metrics["eval_loss"])
            self.val_curve.append({"epoch": round(state.epoch or 0.0, 4), "val_loss": loss})
            if self.best_loss is None or loss < self.best_loss:
                self.best_loss = loss
                self.bad_epochs = 0
                if self.patience is not None:
                    from peft import get_peft_model_state_dict

                    self.best_state = {k: v.detach().clone()
                                       for k, v in get_peft_model_state_dict(self.model).items()}
            else:
                self.bad_epochs += 1
                if self.patience is not None and self.bad_epochs >= self.patience:
                    control.should_training_stop = True

    class QuietProgress(ProgressCallback):
        """The Trainer's progress bar, with the loss in the bar instead of a printed line per step."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)

    class ReportProgress(TrainerCallback):
        """on_progress(fraction of the optimizer updates done) after each update."""

        def __init__(self, on_progress: Callable[[float], None]) -> None:
            self.on_progress = on_progress

        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps:
                self.on_progress(state.global_step / state.max_steps)

    return BestAndEarlyStop, (QuietProgress if progress else None), ReportProgress


# ---- training --------------------------------------------------------------------------------

def train_lora(
    model: str,
    examples,
    out_dir: str | os.PathLike,
    cfg: TrainConfig | None = None,
    init_adapter: str | os.PathLike | None = None,
    progress: bool = True,
    threads: int | None = None,
    dataloader_workers: int = 0,
    gradient_checkpointing: bool | str = False,
    n_gold: int | None = None,
    pseudo_weight: float = 1.0,
    memory_budget_bytes: int | None = None,
    objective: Literal["answer", "text"] = "answer",
    on_progress: Callable[[float], None] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter of `model` on `examples` and save it to `out_dir` (replaced if present).

    `model`: a name or directory for `resolve_model`. `examples`: DataFrame with question, options
    (list, JSON list string or None) and answer (letter, option text, or free text without options).
    `init_adapter`: an adapter directory loaded as trainable and trained on (its LoRA shape wins over
    cfg's). `progress`, `threads` (torch CPU threads; None leaves the setting alone),
    `dataloader_workers` and `gradient_checkpointing` only affect speed, memory and display. The
    latter keeps one tensor per layer and recomputes the rest in the backward pass (non-reentrant
    checkpointing replays the dropout RNG, so the adapter is the same): on 256 FPB rows, batch 8,
    SmolLM2-135M on 2 CPU cores, peak RSS 5.2 -> 2.9 GB at 1.6x the training time
    (bench/results/training.json).
    `gradient_checkpointing="auto"` turns it on when the longest batch's activations would not
    fit in the memory left (needs_checkpointing; `memory_budget_bytes`: the whole process's budget,
    default what the machine has available), and logs the decision.
    `n_gold`: the first n_gold examples are gold labels, the rest pseudo-labels: validation rows
    come from the gold ones only, and a pseudo-label's loss counts `pseudo_weight` times (None:
    every example is gold, as for the warm adapter).
    `objective`: "answer" learns the `Answer: X` targets; "text" learns the question text itself
    (task-adaptive pre-training, see the module docstring).
    `on_progress(fraction)` is called after each optimizer update (the fraction of all updates).
    """
    cfg = cfg or TrainConfig()
    if objective not in ("answer", "text"):
        raise ValueError(f"objective must be 'answer' or 'text', got {objective!r}")
    check_examples(examples, REQUIRED_COLUMNS if objective == "answer" else TEXT_COLUMNS)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)

    import torch
    import transformers
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .models import quiet_loading, resolve_model

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        path = resolve_model(model)
        tok = AutoTokenizer.from_pretrained(path)
        encoded = (encode_examples if objective == "answer" else encode_texts)(tok, examples, cfg.max_length)
        train_idx, val_idx = split_indices(len(encoded), cfg.val_fraction, cfg.seed, n_gold)
        if n_gold == 0 and cfg.val_fraction > 0:
            log.warning("no gold examples to validate on (pseudo-labels only): no early stopping, "
                        "the whole budget runs (%s)", f"{cfg.max_steps} updates" if cfg.max_steps
                        else f"{cfg.epochs} epochs")
        if n_gold is not None and pseudo_weight != 1.0:
            for e in encoded[n_gold:]:
                e["weight"] = pseudo_weight
        train_set = [encoded[i] for i in train_idx]
        val_set = [encoded[i] for i in val_idx]
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

        use_cuda = torch.cuda.is_available()
        # float32 weights; on GPU bf16 autocast (fast there), on CPU plain float32 (bf16 is emulated).
        bf16 = use_cuda and torch.cuda.is_bf16_supported()
        # Seed before the LoRA A matrices are initialised (B starts at zero).
        transformers.set_seed(cfg.seed)
        quiet_loading()
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        base.config.use_cache = False  # no KV cache while training
        why = f"activation checkpointing {'on' if gradient_checkpointing else 'off'}: set in the config"
        if gradient_checkpointing == "auto":
            gradient_checkpointing, why = needs_checkpointing(
                base.config, min(cfg.batch_size, len(train_set)), max(len(e["input_ids"]) for e in train_set),
                memory_budget_bytes)
            log.info(why)
        with peft_without_deprecation_warning():
            if init_adapter is not None:
                peft_model = PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
            else:
                lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                  target_modules=cfg.target_modules, bias="none", task_type="CAUSAL_LM")
                peft_model = get_peft_model(base, lora)
        if peft_model.peft_config["default"].modules_to_save:
            raise ValueError("adapter has modules_to_save (full copies of layers): vLLM cannot serve it")

        class WeightedTrainer(Trainer):
            """Takes the rows' loss weights (PadCollator's `loss_weights`) out before the model sees
            the batch; target_loss applies them."""

            row_weights = None

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                self.row_weights = inputs.pop("loss_weights", None)
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        BestAndEarlyStop, progress_cls, ReportProgress = _make_callbacks(progress)
        tracker = BestAndEarlyStop(peft_model, cfg.early_stopping_patience)
        with tempfile.TemporaryDirectory(prefix="semievol-trainer-") as scratch:
            args = TrainingArguments(
                output_dir=scratch,  # nothing is saved there (save_strategy "no"); deleted after
                num_train_epochs=cfg.epochs,
                max_steps=cfg.max_steps or -1,  # -1: the epochs decide
                per_device_train_batch_size=cfg.batch_size,
                per_device_eval_batch_size=cfg.batch_size,
                gradient_accumulation_steps=cfg.grad_accum,
                learning_rate=cfg.learning_rate,
                lr_scheduler_type=cfg.lr_scheduler,
                # transformers 5: a float in [0, 1) is a ratio of all optimizer steps.
                warmup_steps=cfg.warmup_ratio if cfg.warmup_ratio > 0 else 0,
                weight_decay=cfg.weight_decay,
                optim="adamw_torch",
                logging_strategy="steps",
                logging_steps=1,  # per-step loss for loss_curve.json
                eval_strategy="epoch" if val_set else "no",
                save_strategy="no",
                report_to="none",
                disable_tqdm=not progress,
                seed=cfg.seed,
                data_seed=cfg.seed,
                dataloader_num_workers=dataloader_workers,
                remove_unused_columns=False,  # our collator builds exactly the model's inputs
                label_names=["labels"],
                prediction_loss_only=True,
                bf16=bf16,
                use_cpu=not use_cuda,
                ddp_find_unused_parameters=False,  # under torchrun: every LoRA weight gets a gradient
                activation_checkpointing=gradient_checkpointing,
                activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
            )
            trainer = WeightedTrainer(
                model=peft_model, args=args, data_collator=PadCollator(pad_id),
                compute_loss_func=lambda out, labels, num_items_in_batch=None: target_loss(
                    out, labels, num_items_in_batch, trainer.row_weights),
                train_dataset=train_set, eval_dataset=val_set or None, callbacks=[tracker],
            )
            # Replace the per-step printing the Trainer adds with a quiet bar (or nothing).
            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
            if progress_cls is not None:
                trainer.add_callback(progress_cls())
            if on_progress is not None:
                trainer.add_callback(ReportProgress(on_progress))
            t_train = time.perf_counter()
            trainer.train()
            train_s = time.perf_counter() - t_train - tracker.eval_s
            history = list(trainer.state.log_history)
            epochs_run = int(round(trainer.state.epoch or 0.0))

        if tracker.best_state is not None:
            set_peft_model_state_dict(peft_model, tracker.best_state)

        steps = [{"step": h["step"], "epoch": round(h["epoch"], 4), "loss": float(h["loss"])}
                 for h in history if "loss" in h and "step" in h]
        last_epoch = [s["loss"] for s in steps if s["epoch"] > epochs_run - 1]
        train_loss = float(np.mean(last_epoch)) if last_epoch else float("nan")
        train_tokens = sum(len(e["input_ids"]) for e in train_set) * epochs_run
        curve = {"train": steps, "val": tracker.val_curve,
                 "best_epoch": (None if tracker.best_loss is None else
                                next(v["epoch"] for v in tracker.val_curve
                                     if v["val_loss"] == tracker.best_loss)),
                 "kept": "best" if tracker.best_state is not None else "last"}
        run = {
            "train_config": cfg.model_dump(),
            "model": str(model),
            "objective": objective,
            "init_adapter": None if init_adapter is None else str(init_adapter),
            "n_train": len(train_set),
            "n_val": len(val_set),
            "epochs_run": epochs_run,
            "world_size": args.world_size,  # processes that trained data-parallel (torchrun)
            # on or off, and why (execution.gradient_checkpointing: the config, or the memory estimate)
            "activation_checkpointing": {"on": bool(gradient_checkpointing), "why": why},
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        }
        # Under torchrun / accelerate launch every process trained the same replica (DDP keeps
        # them equal); the first one writes it.
        if trainer.is_world_process_zero():
            _save_atomically(peft_model, out_dir, {"loss_curve.json": curve, "train_config.json": run})
        if args.world_size > 1:
            trainer.accelerator.wait_for_everyone()  # no process returns before the adapter is there
    finally:
        torch.set_num_threads(old_threads)

    return TrainResult(
        adapter_dir=out_dir,
        train_loss=train_loss,
        best_val_loss=tracker.best_loss,
        epochs_run=epochs_run,
        train_tokens=train_tokens,
        tokens_per_s=train_tokens / train_s if train_s > 0 else float("nan"),
        wall_s=time.perf_counter() - t0,
    )


def _save_atomically(peft_model, out_dir: Path, json_files: dict[str, Any]) -> None:
    """Write the adapter and JSON files to a sibling temp dir, then swap it in for `out_dir`
    (atomic.atomic_dir): a reader never sees a half-written adapter."""
    with atomic_dir(out_dir) as tmp:
        peft_model.save_pretrained(tmp)
        for name, payload in json_files.items():
            (tmp / name).write_text(json.dumps(payload, indent=2) + "\n")
