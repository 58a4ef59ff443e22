"""SemiEvolConfig: every knob of the method, with the paper's defaults, loadable from YAML.

    cfg = SemiEvolConfig.from_yaml("run.yaml")       # or SemiEvolConfig(theta=0.3)
    cfg.result_key("selection")                       # the fields that change selection's output

Fields are split in two: those that change results (they go into cache keys) and execution-only
settings (`ExecutionConfig`: batch sizes, threads, progress bars, server URLs) that never do, so a
re-run with a bigger batch re-uses every cached step.

A config holds no secret: it is written to config.yaml, report.json, report.md and Prefect's
flow-run parameters. `execution.api_key` names where the OpenAI-compatible server's key is, and
`resolve_api_key` reads it only where the backend is built:

    execution: {backend: openai, base_url: "http://gpu:8000/v1", api_key: "env:OPENAI_API_KEY"}
    execution: {..., api_key: "secret:openai-key"}       # a Prefect Secret block (flows only)
    resolve_api_key("env:OPENAI_API_KEY")                 # SecretStr('**********')
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .training import TrainConfig


class Collaborator(BaseModel):
    """One collaborator: which model answers, with how many retrieved demonstrations."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: Literal["base", "warm"]
    n_demos: int = Field(ge=0, le=16)

    @property
    def name(self) -> str:
        return f"{self.model}-{self.n_demos}shot"


class ExecutionConfig(BaseModel):
    """How to run, not what to compute: never part of a cache key."""

    # hide_input_in_errors: a validation error's text never repeats an input, which might be a key
    # pasted into api_key (the CLI still shows other fields' inputs, from errors()).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    backend: Literal["transformers", "openai", "vllm"] = "transformers"
    base_url: str | None = None  # OpenAI-compatible server (backend="openai")
    # Where the server's API key is, never the key itself: "env:NAME" (an environment variable)
    # or "secret:NAME" (a Prefect Secret block, read by the flows' tasks). None: no key sent.
    api_key: str | None = None
    served_model: str | None = None  # the server's name for the base model
    # Wall-clock budget of one request to the server, in seconds, its retries and their backoff
    # included; past it the request fails with TransientBackendError (backends/openai_http.py).
    request_deadline_seconds: float = Field(default=300.0, gt=0)
    # Seconds one attempt may wait for the server's next bytes; a stalled attempt is dropped and
    # retried, within request_deadline_seconds. Above the slowest reply the server can give.
    request_timeout_seconds: float = Field(default=120.0, gt=0)
    # All at least 1: a 0 or negative value would only fail deep inside a run (shard_size 0 at
    # generation, after warm training), so the config refuses it up front.
    batch_size: int = Field(default=16, ge=1)
    token_budget: int = Field(default=16384, ge=1)
    concurrency: int = Field(default=8, ge=1)
    threads: int | None = Field(default=None, ge=1)  # None: the library's default
    shard_size: int = Field(default=128, ge=1)  # unlabeled questions per cached generation shard
    # Training memory: recompute activations in the backward pass. Same adapter; measured on FPB
    # (SmolLM2-135M, batch 8): peak RSS 5.2 -> 2.9 GB, 1.6x the training time.
    gradient_checkpointing: bool = False
    progress: bool = True

    @field_validator("api_key")
    @classmethod
    def _key_reference(cls, value: str | None) -> str | None:
        if value is not None and not KEY_REFERENCE.fullmatch(value):
            # The message never repeats the value: it may be a key pasted in by mistake.
            raise ValueError("give where the key is, env:VARIABLE or secret:PREFECT_BLOCK, not the key itself "
                             "(the config is written to config.yaml, the reports and Prefect's run parameters)")
        return value


KEY_REFERENCE = re.compile(r"(env|secret):[A-Za-z0-9_.-]+")
# How each kind of `execution.api_key` reference is read. The core reads environment variables;
# tasks/common.py adds "secret" (Prefect Secret blocks), as the core never imports Prefect.
KEY_READERS: dict[str, Callable[[str], str | None]] = {"env": os.environ.get}


def resolve_api_key(reference: str | None) -> SecretStr | None:
    """The key an `execution.api_key` reference names, as a SecretStr (masked in repr, str and
    dumps), or None without a reference; ValueError with a one-line reason when it cannot be read."""
    if reference is None:
        return None
    kind, _, name = reference.partition(":")
    if kind not in KEY_READERS:
        raise ValueError(f"execution.api_key {reference!r}: Prefect Secret blocks are read by the Prefect "
                         "flows (semievol evolve / evaluate); in process use env:VARIABLE")
    value = KEY_READERS[kind](name)
    if not value:
        raise ValueError(f"execution.api_key {reference!r}: "
                         + ("environment variable not set" if kind == "env" else "empty or missing"))
    return SecretStr(value)


class SemiEvolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # see ExecutionConfig

    # --- models and data ---
    model: str = "smollm2-135m-instruct"
    embedder: str = "all-minilm-l6-v2"
    answer_type: Literal["auto", "choice", "number", "text"] = "auto"
    seed: int = 0
    system_prompt: str | None = None

    # --- 1. in-weight propagation (warm SFT) and 6. final fine-tune ---
    train: TrainConfig = Field(default_factory=TrainConfig)
    # From the base on labeled + selected (paper Eq. 9) | the warm adapter continued on the selected
    # (released code) | the warm adapter continued on labeled + selected.
    final_training: Literal["union", "continue", "continue_union"] = "union"
    # The warm model of collaboration, self-justification and a "continue" final fine-tune: this
    # run's SFT, or the adapter registry's champion when there is one (rounds, paper Fig. 7: the
    # latest adapter labels the next night's rows).
    warm_from: Literal["sft", "champion"] = "sft"
    # Optimizer updates of the final fine-tune (None: train.max_steps, as for the warm SFT). A
    # continued fine-tune starts from a converged adapter and needs fewer.
    final_max_steps: int | None = Field(default=None, ge=1)
    # Weight of a pseudo-label's loss relative to a gold label's in the final fine-tune (1: equal,
    # the paper). The loss stays normalised by the token count, so < 1 also shrinks their steps.
    pseudo_weight: float = Field(default=1.0, gt=0.0, le=1.0)

    # --- 2. in-context propagation ---
    k_demos: int = Field(default=3, ge=0, le=16)

    # --- 3. collaborative learning ---
    n_collaborators: int = Field(default=4, ge=1, le=32)
    collaborators: list[Collaborator] | None = None  # explicit list; else drawn with `seed`
    temperature: float = Field(default=1.0, ge=0.0)
    max_new_tokens: int = Field(default=48, ge=1)
    # "generate": free text at `temperature`, H from its tokens (paper). "choice_logprobs": for
    # choice tasks, each collaborator samples its answer from its option-letter distribution
    # and H is -log p(answer letter) — one forward pass instead of a decode.
    collaboration_mode: Literal["generate", "choice_logprobs"] = "generate"
    knn_collaborator: bool = False  # add the k neighbours' majority label as one more vote
    # Rounds: True keeps a shard's responses and justifications once made, whichever warm model
    # (champion) would answer now, so a night generates only its new rows. False: a new warm
    # model answers every row again (the weekly refresh).
    reuse_pseudo_labels: bool = False

    # --- 4. self-justification ---
    justify_max_new_tokens: int = Field(default=48, ge=1)

    # --- 5. adaptive selection ---
    theta: float = Field(default=0.5, gt=0.0, le=1.0)  # keep H <= theta-quantile (paper Eq. 7)
    selection_scope: Literal["all", "justified"] = "all"  # "justified": released code's variant
    class_balance: bool = False  # apply the percentile within each answer class
    source_balance: bool = False  # ... and/or within each source (consensus|justified): H scales differ
    # "knn": keep a pseudo-label only if the kNN label vote (an independent view) gives the same
    # answer; needs knn_collaborator. Low H alone keeps what the warm model already believes.
    agreement: Literal["none", "knn"] = "none"
    # "prior": instead of the H quantile, keep at most theta x (labels left) split over the classes
    # by the labeled set's class frequencies, lowest H first within a class (FlexMatch-style).
    class_quota: Literal["none", "prior"] = "none"

    # --- 7. evaluation ---
    eval_mode: Literal["generate", "choice_logprobs"] = "generate"
    eval_max_new_tokens: int = Field(default=32, ge=1)
    bootstrap_samples: int = Field(default=1000, ge=100)

    # --- 8. promotion gate (semievol_core/gate.py) ---
    # A challenger adapter becomes champion only if McNemar's exact p < gate_alpha AND it gains at
    # least gate_min_gain accuracy points over the champion (over SFT when there is none yet).
    gate_alpha: float = Field(default=0.05, gt=0.0, le=1.0)
    gate_min_gain: float = Field(default=0.0, ge=0.0)  # points; below 0 a worse model could ship

    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @model_validator(mode="after")
    def _check(self) -> "SemiEvolConfig":
        if self.collaborators is not None:
            if not self.collaborators:
                raise ValueError("collaborators: give at least one, or leave it unset")
            too_many = [c.name for c in self.collaborators if c.n_demos > self.k_demos]
            if too_many:
                raise ValueError(f"collaborators {too_many} want more demonstrations than k_demos={self.k_demos}")
        if self.agreement == "knn" and not (self.knn_collaborator and self.k_demos > 0):
            raise ValueError("agreement 'knn' compares each pseudo-label with the kNN label vote over the "
                             "k_demos nearest labeled examples: set knn_collaborator: true and k_demos >= 1")
        if self.class_quota == "prior":
            clash = [name for name, on in (("class_balance", self.class_balance),
                                           ("source_balance", self.source_balance),
                                           ("selection_scope: justified", self.selection_scope == "justified"))
                     if on]
            if clash:
                raise ValueError(f"class_quota 'prior' replaces the theta-quantile of H, so it does not "
                                 f"combine with {', '.join(clash)}: turn them off")
        return self

    # ---- (de)serialisation ----------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "SemiEvolConfig":
        return cls.model_validate(load_yaml_mapping(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    # ---- cache keys -----------------------------------------------------------------------------
    def result_fields(self) -> dict:
        """Everything that can change a result (execution settings removed)."""
        return self.model_dump(mode="json", exclude={"execution"})

    def result_key(self, *fields: str) -> str:
        """A stable JSON string of the named result fields (all when none are named)."""
        data = self.result_fields()
        if fields:
            data = {f: data[f] for f in fields}
        return json.dumps(data, sort_keys=True)


def load_yaml_mapping(path: str | Path) -> dict:
    """A YAML file's top-level mapping; ValueError with a one-line reason naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read config: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping of field: value")
    return data


def apply_overrides(data: dict, pairs: Sequence[str]) -> dict:
    """`KEY=VALUE` pairs applied to a config mapping in place (and returned): dotted keys reach
    nested fields (`train.epochs=3`), values are YAML (`3`, `true`, `[a, b]`, empty for null).
    Field names and values are left to `SemiEvolConfig.model_validate`; ValueError with a
    one-line reason for a pair that is not KEY=VALUE or walks into a value that is not a mapping."""
    for pair in pairs:
        key, sep, text = pair.partition("=")
        *parents, leaf = key.strip().split(".")
        if not sep or not leaf or not all(parents):
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE (dotted KEY for nested fields)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {pair!r}: not a YAML value: {' '.join(str(exc).split())}") from None
        node = data
        for depth, name in enumerate(parents, 1):
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {pair!r}: {'.'.join(parents[:depth])} is a value, not a group of fields")
        node[leaf] = value
    return data
