"""The SemiEvol method declared once: its steps, what each reads and writes, what it depends on.

    from semievol_core.graph import STEPS, plan, needed_by
    for step in plan(["sft", "semievol"]):
        print(step.name, step.inputs, "->", step.outputs, step.config, step.accelerator)
    needed_by("embed-unlabeled")          # frozenset({'semievol'})

A step is a record: the function it runs (a thin call into `semievol_core.steps`), the named values
it reads and the named values it returns, the config sections its output depends on (its cache key),
whether it needs the accelerator, and (derived from the inputs) the systems that need it. Values
are small: paths of tables and adapters, the answer type, selection statistics, metrics.

Both executors walk this one graph with `execute` and differ only in how they call a step:
`semievol_core.pipeline.run_semievol` calls it in process; the Prefect flow `flows/evolve.py`
makes each step a cached task (tasks/step.py). Steps with `each` fan out: `embed-unlabeled`,
`generate` and `justify` run once per shard of unlabeled questions, `evaluate-<system>` once per
shard of test questions, and each call is its own task run (and cache entry), so a crash loses at
most one shard.

Paper terms: (1) in-weight propagation = train-warm; (2) in-context propagation = plan-shards, embed-*,
retrieve-*; (3) collaborative learning = generate, collect, vote; (4) self-justification
= justify; (5) adaptive selection = select; (6) final fine-tune = train-final (Eq. 9: union from
the base, or the released code's continue-from-warm); (7) plan-test, evaluate-<system>, score-<system>.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import pyarrow.parquet as pq

from . import steps, store
from .config import SemiEvolConfig
from .data import read_table

if TYPE_CHECKING:
    from .registry import Registry

SYSTEMS = steps.SYSTEMS
NEIGHBOR_SYSTEMS = steps.NEIGHBOR_SYSTEMS


@dataclass(frozen=True)
class Step:
    """One step of the method (see the module docstring).

    name: the step and its task-run name in the UI ("embed-test"); task: the task it is a run of
    ("embed"; default: name); run(cfg, run_dir, **inputs) -> {output: value}; each: an input
    holding a list, the step then runs once per element (passed as `item`) and each output becomes
    a list in the same order (a tuple of such inputs: their lists zipped, `item` the element's
    list of values); key: optional (cfg, inputs) -> str, the part of the cache key that
    stands for inputs it names in `keyed_by_content` (a generation shard: its own questions and
    demonstrations, not the whole tables); files: inputs that are paths (keyed by content);
    config: what of the config the output depends on, as `SemiEvolConfig.result_key` names it:
    sections and top-level fields ("selection", "seed"), fields of a section ("propagation.k_demos")
    and fields left out of a section named before ("-collaboration.knn_collaborator"). Never
    `execution`."""

    name: str
    run: Callable[..., dict]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    config: tuple[str, ...] = ()
    accelerator: bool = False
    task: str = ""
    each: str | tuple[str, ...] | None = None
    files: tuple[str, ...] = ()
    key: Callable[[SemiEvolConfig, dict], str] | None = None
    keyed_by_content: tuple[str, ...] = ()

    @property
    def task_name(self) -> str:
        return self.task or self.name

    @property
    def systems(self) -> frozenset[str]:
        return needed_by(self.name)

    def source_digest(self) -> str:
        """Part of the cache key: editing what a step runs invalidates it."""
        return hashlib.sha256(inspect.getsource(self.run).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ what each step runs
def _prepare(cfg, run: Path, data_dir: str, limits: dict) -> dict:
    d = steps.prepare_data(data_dir, run / "data", steps.Limits(**(limits or {})), cfg.seed)
    labeled = read_table(d / "labeled.parquet", "labeled")
    oracle = d / "oracle.parquet"
    return {"labeled": str(d / "labeled.parquet"), "unlabeled": str(d / "unlabeled.parquet"),
            "test": str(d / "test.parquet"), "oracle": str(oracle) if oracle.exists() else None,
            "answer_type": steps.answer_type_of(labeled, cfg),
            "counts": {"labeled": len(labeled),  # the copies' row counts, from their metadata
                       **{n: pq.read_metadata(d / f"{n}.parquet").num_rows for n in ("unlabeled", "test")}}}


def _train_warm(cfg, run: Path, labeled: str, on_progress: Callable[[float], None] | None = None) -> dict:
    """(1) SFT on the labeled rows: the `sft` system, and the warm model unless a champion is."""
    return {"sft_adapter": str(steps.train_adapter(cfg, [(labeled, "labeled")], run / "warm_adapter",
                                                   on_progress=on_progress))}


def _pick_warm(cfg, run: Path, sft_adapter: str, champion: str | None) -> dict:
    """The warm model of collaboration, self-justification and a continued final fine-tune: this
    run's SFT, or (rounds.warm_from: champion, paper Fig. 7's rounds) the registry's champion."""
    return {"warm": champion if cfg.rounds.warm_from == "champion" and champion else sft_adapter}


def _embed(kind: str) -> Callable[..., dict]:
    def embed(cfg, run: Path, **table: str) -> dict:
        return {f"vecs_{kind}": str(steps.embed_table(cfg, table[kind], kind, run / "embeddings" / f"{kind}.npy"))}
    embed.__name__ = f"embed_{kind}"
    return embed


def _embed_unlabeled(cfg, run: Path, item: list[int], unlabeled: str) -> dict:
    """(2) An embedding shard of the unlabeled questions (`embed_rows`), named by its key
    directory like a generation shard."""
    out = run / "embeddings" / "unlabeled" / f"shard-{run.name}.npy"
    return {"vecs_unlabeled": str(steps.embed_shard(cfg, unlabeled, "unlabeled", item, out))}


def _retrieve_unlabeled(cfg, run: Path, unlabeled: str, vecs_unlabeled: list[str], labeled: str,
                        vecs_labeled: str) -> dict:
    return {"neighbors": str(steps.find_neighbors(cfg, unlabeled, "unlabeled", vecs_unlabeled, labeled,
                                                  vecs_labeled, run / "neighbors.parquet"))}


def _retrieve_test(cfg, run: Path, test: str, vecs_test: str, labeled: str, vecs_labeled: str) -> dict:
    return {"test_neighbors": str(steps.find_neighbors(cfg, test, "test", vecs_test, labeled, vecs_labeled,
                                                       run / "test_neighbors.parquet"))}


def _plan_shards(cfg, run: Path, unlabeled: str) -> dict:
    """The unlabeled rows' shards: generation's (and justification's), and embedding's, GROWTH
    times bigger and at most a GROWTH-th as many a part: a question costs the embedder a fraction
    of what it costs the collaborators, and each shard is a task run to orchestrate (~0.5 s)."""
    ex = cfg.execution
    return {"shard_rows": steps.shard_plan(unlabeled, ex.shard_size, ex.max_shards),
            "embed_rows": steps.shard_plan(unlabeled, ex.shard_size * steps.GROWTH,
                                           max(ex.max_shards // steps.GROWTH, 1))}


def _generate(cfg, run: Path, item: list[int], unlabeled: str, labeled: str, neighbors: str, warm: str,
              answer_type: str, on_progress: Callable[[float], None] | None = None) -> dict:
    # Named by the key directory (`run`), so the stable names of all shards sit side by side.
    out = run / "responses" / f"shard-{run.name}.parquet"
    return {"shards": str(steps.generate_shard(cfg, item, unlabeled, labeled, neighbors, warm, out, answer_type,
                                               on_progress=on_progress))}


def _shard_key(cfg: SemiEvolConfig, inputs: dict) -> str:
    """A shard's own generation key (steps.shard_generation_key): rows appended to the table later
    do not change it, so the shards generated before stay cached when the dataset grows."""
    return steps.shard_generation_key(cfg, inputs["item"], inputs["unlabeled"], inputs["labeled"],
                                      inputs["neighbors"], inputs["warm"], inputs["answer_type"])


def _collect(cfg, run: Path, shard_rows: list[list[int]], shards: list[str], labeled: str, neighbors: str) -> dict:
    return {"responses": str(steps.collect_responses(cfg, shard_rows, shards, labeled, neighbors,
                                                     run / "responses.parquet"))}


def _vote(cfg, run: Path, responses: str) -> dict:
    return {"votes": str(steps.vote_step(responses, run / "votes.parquet"))}


def _justify(cfg, run: Path, item: list, votes: str, unlabeled: str, warm: str,
             answer_type: str, on_progress: Callable[[float], None] | None = None) -> dict:
    """(4) A shard's disputed questions, from its own responses file (item: its rows and the file)."""
    rows, responses = item
    return {"justified_shards": str(steps.justify_shard(cfg, rows, votes, responses, unlabeled, warm, answer_type,
                                                        run / "justified" / f"shard-{run.name}.parquet"))}


def _justify_key(cfg: SemiEvolConfig, inputs: dict) -> str:
    rows, responses = inputs["item"]
    return steps.justification_key(cfg, rows, inputs["votes"], responses, inputs["unlabeled"],
                                   inputs["warm"], inputs["answer_type"])


def _collect_justified(cfg, run: Path, justified_shards: list[str]) -> dict:
    return {"justified": str(steps.collect_justified(justified_shards, run / "justified.parquet"))}


def _select(cfg, run: Path, votes: str, justified: str, responses: str, unlabeled: str, labeled: str,
            oracle: str | None, answer_type: str) -> dict:
    pseudo = steps.select_step(cfg, votes, justified, responses, labeled, run / "pseudo_labels.parquet")
    stats = steps.selection_stats(pseudo, votes, oracle, answer_type, unlabeled, labeled=labeled,
                                  responses=responses, agreement=cfg.selection.agreement)
    return {"pseudo_labels": str(pseudo), "selection": stats}


def _train_final(cfg, run: Path, labeled: str, warm: str, pseudo_labels: str, unlabeled: str,
                 on_progress: Callable[[float], None] | None = None) -> dict:
    final = cfg.final
    if final.training == "union":  # paper Eq. 9: labeled + selected pseudo-labels, from the base
        tables, start = [(labeled, "labeled")], None
    elif final.training == "continue":  # released code: continue the warm adapter on the pseudo-labels
        tables, start = [], warm
    else:  # "continue_union": continue the warm adapter on labeled + pseudo-labels
        tables, start = [(labeled, "labeled")], warm
    if final.max_steps is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": final.max_steps})})
    return {"semievol_adapter": str(steps.train_adapter(cfg, tables, run / "semievol_adapter", init_adapter=start,
                                                        pseudo_labels=pseudo_labels, unlabeled=unlabeled,
                                                        on_progress=on_progress))}


# What an evaluation reads: k_demos (the demonstrations of rag_knn), not the embedder, which reaches
# it as the test neighbours.
EVALUATION_CONFIG = ("model", "system_prompt", "seed", "propagation.k_demos", "evaluation")
# What a prediction reads: the same but the bootstrap, which only the scores use.
PREDICTION_CONFIG = (*EVALUATION_CONFIG, "-evaluation.bootstrap_samples")
# The systems (and the champion) that run with an adapter -> the value holding it.
ADAPTER_OF = {"sft": "sft_adapter", "semievol": "semievol_adapter", "champion": "champion"}


def _plan_test(cfg, run: Path, test: str) -> dict:
    """The test rows' evaluation shards, planned as the unlabeled rows' generation shards."""
    return {"test_rows": steps.shard_plan(test, cfg.execution.shard_size, cfg.execution.max_shards)}


def _evaluate(system: str) -> Callable[..., dict]:
    adapter_input = ADAPTER_OF.get(system)

    def evaluate(cfg, run: Path, item: list[int], test: str, answer_type: str, **inputs: str) -> dict:
        """(7) One evaluation shard (test rows `item`), named by its key directory."""
        adapter = inputs.pop(adapter_input) if adapter_input else None
        out = run / "predictions" / system / f"shard-{run.name}.parquet"
        return {f"prediction_shards_{system}": str(steps.predict_shard(cfg, system, test, item, answer_type, out,
                                                                       adapter=adapter, **inputs))}
    evaluate.__name__ = f"evaluate_{system}"
    return evaluate


def _score(system: str) -> Callable[..., dict]:
    def score(cfg, run: Path, answer_type: str, **inputs: list[str]) -> dict:
        """The system's evaluation shards joined into predictions/<system>.parquet, and its metrics."""
        out = run / "predictions" / f"{system}.parquet"
        m = steps.score_predictions(cfg, inputs[f"prediction_shards_{system}"], answer_type, out)
        return {f"metrics_{system}": m, f"predictions_{system}": str(out)}
    score.__name__ = f"score_{system}"
    return score


def _evaluate_steps(system: str) -> tuple[Step, Step]:
    """evaluate-<system>, fanned out by test shard, then score-<system>. Each system reads only what
    it uses (vanilla: the test table alone), so e.g. the vanilla evaluation's cache key does not
    depend on training or neighbours."""
    adapter = (ADAPTER_OF[system],) if system in ADAPTER_OF else ()
    nb = ("labeled", "test_neighbors") if system in NEIGHBOR_SYSTEMS else ()
    shards = f"prediction_shards_{system}"
    return (Step(f"evaluate-{system}", _evaluate(system), ("test_rows", "test", "answer_type", *adapter, *nb),
                 (shards,), config=PREDICTION_CONFIG, accelerator=system != "knn_vote", task="evaluate",
                 each="test_rows", files=("test", *adapter, *nb)),
            Step(f"score-{system}", _score(system), (shards, "answer_type"), (f"metrics_{system}", f"predictions_{system}"),
                 config=("evaluation", "seed"), task="score", files=(shards,)))


def _evaluate_champion(cfg, run: Path, test: str, answer_type: str, champion: str | None) -> dict:
    """The registry's champion on this run's test questions, in one step (nothing when there is
    none yet)."""
    if champion is None:
        return {"metrics_champion": None, "predictions_champion": None}
    out = run / "predictions" / "champion.parquet"
    return {"metrics_champion": steps.evaluate_system(cfg, "champion", test, answer_type, out, adapter=champion),
            "predictions_champion": str(out)}


def _gate(cfg, run: Path, predictions_semievol: str, predictions_sft: str,
          predictions_champion: str | None) -> dict:
    """(8) The promotion gate's decision: SemiEvol against the champion, or against SFT when the
    registry has no champion yet (semievol_core/gate.py)."""
    from .gate import decide

    baseline, against = ((predictions_champion, "champion") if predictions_champion
                         else (predictions_sft, "sft"))
    return {"gate": decide(predictions_semievol, baseline, against, cfg.gate.alpha, cfg.gate.min_gain,
                           cfg.evaluation.bootstrap_samples, cfg.seed)}


TRAINING_CONFIG = ("model", "train")  # an adapter's config besides its examples and start
# The configuration each step reads is named here, next to the step, or (read by a file-level key
# in steps.py too) in steps.py, and nowhere else.
STEPS: tuple[Step, ...] = (
    Step("prepare", _prepare, ("data_dir", "limits"),
         ("labeled", "unlabeled", "test", "oracle", "answer_type", "counts"), config=("seed", "answer_type"),
         keyed_by_content=("data_dir",), key=lambda cfg, inputs: steps.dataset_fingerprint(inputs["data_dir"])),
    Step("train-warm", _train_warm, ("labeled",), ("sft_adapter",), config=TRAINING_CONFIG, accelerator=True,
         files=("labeled",)),
    Step("pick-warm", _pick_warm, ("sft_adapter", "champion"), ("warm",), config=("rounds",),
         files=("sft_adapter", "champion")),
    Step("plan-shards", _plan_shards, ("unlabeled",), ("shard_rows", "embed_rows"), files=("unlabeled",),  # execution, yet it sets the plan:
         key=lambda cfg, inputs: f"shard_size={cfg.execution.shard_size},max_shards={cfg.execution.max_shards},"
                                 f"growth={steps.GROWTH}"),
    *(Step(f"embed-{kind}", _embed(kind), (kind,), (f"vecs_{kind}",), config=("propagation.embedder",),
           accelerator=True, task="embed", files=(kind,)) for kind in ("labeled", "test")),
    # The unlabeled table, the one that grows, is embedded a shard at a time: the shards fan out to
    # the workers, and a night's new rows are embedded alone.
    Step("embed-unlabeled", _embed_unlabeled, ("embed_rows", "unlabeled"), ("vecs_unlabeled",),
         config=("propagation.embedder",), accelerator=True, task="embed", each="embed_rows",
         key=lambda cfg, inputs: steps.embedding_key(inputs["unlabeled"], "unlabeled", inputs["item"]),
         keyed_by_content=("item", "unlabeled")),
    Step("retrieve-unlabeled", _retrieve_unlabeled, ("unlabeled", "vecs_unlabeled", "labeled", "vecs_labeled"),
         ("neighbors",), config=("propagation",), task="retrieve",
         files=("unlabeled", "vecs_unlabeled", "labeled", "vecs_labeled")),
    Step("retrieve-test", _retrieve_test, ("test", "vecs_test", "labeled", "vecs_labeled"), ("test_neighbors",),
         config=("propagation",), task="retrieve", files=("test", "vecs_test", "labeled", "vecs_labeled")),
    Step("generate", _generate, ("shard_rows", "unlabeled", "labeled", "neighbors", "warm", "answer_type"),
         ("shards",), accelerator=True, each="shard_rows", key=_shard_key,
         keyed_by_content=("item", "unlabeled", "labeled", "neighbors", "warm"),
         config=steps.GENERATION_CONFIG),
    Step("collect", _collect, ("shard_rows", "shards", "labeled", "neighbors"), ("responses",), config=("collaboration",),
         files=("shards", "labeled", "neighbors")),
    Step("vote", _vote, ("responses",), ("votes",), files=("responses",)),
    Step("justify", _justify, ("shard_rows", "shards", "votes", "unlabeled", "warm", "answer_type"),
         ("justified_shards",), config=steps.JUSTIFICATION_CONFIG, accelerator=True, each=("shard_rows", "shards"),
         key=_justify_key, keyed_by_content=("item", "votes", "unlabeled", "warm")),
    Step("collect-justified", _collect_justified, ("justified_shards",), ("justified",),
         files=("justified_shards",)),
    Step("select", _select, ("votes", "justified", "responses", "unlabeled", "labeled", "oracle", "answer_type"),
         ("pseudo_labels", "selection"), config=("selection",),
         files=("votes", "justified", "responses", "unlabeled", "labeled", "oracle")),
    Step("train-final", _train_final, ("labeled", "warm", "pseudo_labels", "unlabeled"), ("semievol_adapter",),
         config=(*TRAINING_CONFIG, "final"), accelerator=True,
         files=("labeled", "warm", "pseudo_labels", "unlabeled")),
    Step("plan-test", _plan_test, ("test",), ("test_rows",), files=("test",),  # execution sets the plan, as for plan-shards
         key=lambda cfg, inputs: f"shard_size={cfg.execution.shard_size},max_shards={cfg.execution.max_shards},"
                                 f"growth={steps.GROWTH}"),
    *(step for system in SYSTEMS for step in _evaluate_steps(system)),
    Step("evaluate-champion", _evaluate_champion, ("test", "answer_type", "champion"),
         ("metrics_champion", "predictions_champion"), config=EVALUATION_CONFIG, accelerator=True, task="evaluate",
         files=("test", "champion")),
    Step("gate", _gate, ("predictions_semievol", "predictions_sft", "predictions_champion"), ("gate",),
         config=("gate", "evaluation", "seed"),
         files=("predictions_semievol", "predictions_sft", "predictions_champion")),
)


# ------------------------------------------------------------------------------ one model on one test table
def _prepare_test(cfg, run: Path, test_table: str, limit: int | None) -> dict:
    """A (seeded sample of a) test table copied into the run."""
    from .data import write_table

    df = read_table(test_table, "test")
    if limit is not None and limit < len(df):
        df = df.sample(n=limit, random_state=cfg.seed).sort_index()
    if df.empty:
        raise ValueError(f"{test_table}: the test table is empty")
    out = run / "data" / "test.parquet"
    write_table(df.reset_index(drop=True), out, "test")
    return {"test": str(out), "answer_type": steps.answer_type_of(df, cfg), "n": len(df)}


def _evaluate_model(cfg, run: Path, test: str, answer_type: str, adapter: str | None, name: str) -> dict:
    out = run / "predictions" / f"{steps.check_model_name(name)}.parquet"
    return {"metrics": steps.evaluate_system(cfg, name, test, answer_type, out, adapter=adapter),
            "predictions": str(out)}


# The `evaluate` flow: accuracy of one model (+ adapter) on a test table.
EVALUATION: tuple[Step, ...] = (
    Step("prepare-test", _prepare_test, ("test_table", "limit"), ("test", "answer_type", "n"),
         config=("seed", "answer_type"), files=("test_table",)),
    Step("evaluate-model", _evaluate_model, ("test", "answer_type", "adapter", "name"), ("metrics", "predictions"),
         config=EVALUATION_CONFIG, accelerator=True, task="evaluate", files=("test", "adapter")),
)
BY_NAME = {s.name: s for s in STEPS + EVALUATION}
_PRODUCER = {out: s for s in STEPS for out in s.outputs}  # of the evolve graph
# Values the caller gives; every other input is some step's output. `champion`: the registry's
# champion adapter (its stable path), or None.
SOURCES = ("data_dir", "limits", "champion")


def _closure(names: Iterable[str]) -> set[str]:
    """The named steps and every step they depend on, transitively."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [_PRODUCER[i].name for i in BY_NAME[name].inputs if i in _PRODUCER]
    return seen


def targets(systems: Sequence[str], pseudo_labels: bool = False, gate: bool = False) -> list[str]:
    """The steps that answer for `systems` (their scores), plus selection if `pseudo_labels`,
    plus the promotion gate if `gate` (it needs the semievol and sft evaluations)."""
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    return ([f"score-{s}" for s in systems] + (["select"] if pseudo_labels else [])
            + (["gate"] if gate else []))


def plan(systems: Sequence[str], pseudo_labels: bool = False, gate: bool = False) -> list[Step]:
    """The steps the requested systems need, in the declared (topological) order."""
    needed = _closure(targets(systems, pseudo_labels, gate))
    return [s for s in STEPS if s.name in needed]


def needed_by(step_name: str) -> frozenset[str]:
    return frozenset(s for s in SYSTEMS if step_name in _closure([f"score-{s}"]))


# ------------------------------------------------------------------------------ cache keys
def _plain(value: Any) -> Any:
    """A JSON-able stand-in for an input keyed by value."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def step_key(step: Step, cfg: SemiEvolConfig, inputs: dict,
             digest: Callable[[str], str] = steps.file_digest) -> str:
    """What a step's output depends on, and nothing else: the code (CODE_VERSION and the step's
    source), the config sections it reads (`step.config`; never execution), its file inputs by content
    (`digest`), its other inputs by value, and its own key part (`step.key`) for the inputs it
    covers. The step writes under `<run>/<step>/<key>/` (semievol_core/store.py)."""
    parts: dict[str, Any] = {"code": steps.CODE_VERSION, "step": step.name, "source": step.source_digest(),
                             "config": cfg.result_key(*step.config) if step.config else None}
    if step.key is not None:
        parts["own"] = step.key(cfg, inputs)
    for name, value in sorted(inputs.items()):
        if name in step.keyed_by_content:
            continue
        if name in step.files and value is not None:
            parts[name] = [digest(v) for v in value] if isinstance(value, list) else digest(value)
        else:
            parts[name] = _plain(value)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------ walking the graph
# call(step, inputs, key, index, count) -> the step's outputs: index/count is the element of a
# fan-out step (else None/1), key its step_key, computed once by `execute`. A call that can run
# a fan-out's elements at once (the Prefect executor on a Dask cluster) also has
# `many(step, [(inputs, key), ...]) -> [outputs, ...]`, in the elements' order.
Call = Callable[[Step, dict, str, int | None, int], dict]


def execute(todo: Sequence[Step], values: dict, call: Call, cfg: SemiEvolConfig, run_dir: str | Path,
            timings: dict[str, float] | None = None, digest: Callable[[str], str] = steps.file_digest) -> dict:
    """Run `todo` in order, each call under its key directory `<run_dir>/<step>/<key>/`
    (semievol_core/store.py), then point the stable names at its outputs. `values` starts with
    SOURCES and collects every output. Wall time per step (summed over a fan-out) goes into
    `timings`; `digest` hashes file inputs for the keys (the flows memoise it)."""
    def linked(step: Step, key: str, outputs: dict) -> dict:
        store.link_latest(run_dir, store.key_dir(run_dir, step.name, key), outputs)
        return outputs

    for step in todo:
        inputs = {name: values.get(name) for name in step.inputs}
        t0 = time.perf_counter()
        if step.each is None:
            key = step_key(step, cfg, inputs, digest)
            values.update(linked(step, key, call(step, inputs, key, None, 1)))
        else:
            if isinstance(step.each, tuple):
                items = [list(element) for element in zip(*(inputs.pop(name) for name in step.each), strict=True)]
            else:
                items = inputs.pop(step.each)
            elements = [{**inputs, "item": item} for item in items]
            keys = [step_key(step, cfg, e, digest) for e in elements]
            if hasattr(call, "many"):
                results = call.many(step, list(zip(elements, keys)))
            else:
                results = [call(step, e, k, i, len(elements)) for i, (e, k) in enumerate(zip(elements, keys))]
            results = [linked(step, k, r) for k, r in zip(keys, results)]
            values.update({out: [r[out] for r in results] for out in step.outputs})
        if timings is not None:
            timings[step.name] = round(timings.get(step.name, 0.0) + time.perf_counter() - t0, 3)
    return values


def run_keyed(step: Step, cfg: SemiEvolConfig, run_dir: str | Path, inputs: dict, key: str,
              **execution: Any) -> tuple[dict, float | None]:
    """(outputs, seconds): the step's outputs from its key directory if it finished there before,
    with what it took then; else from running it there, with None (`execution`: execution-only
    arguments such as on_progress)."""
    d = store.key_dir(run_dir, step.name, key)
    done = store.load_done(d, run_dir)
    if done is not None:
        return done
    t0 = time.perf_counter()
    outputs = step.run(cfg, d, **inputs, **execution)
    store.save_done(outputs, time.perf_counter() - t0, d, run_dir)
    return outputs, None


def sources(data_dir: str | Path, limits: steps.Limits, registry: "Registry | None") -> dict:
    """The values a walk starts from: the dataset, the sample limits, the registry's champion
    (its adapter directory, resolved, so a later promotion never changes what this run read)."""
    cid = registry.champion_id() if registry is not None else None
    return {"data_dir": str(data_dir), "limits": limits.model_dump(),
            "champion": str((registry.adapters / cid).resolve()) if cid else None}


class InProcess:
    """The plain executor's way to run a step (a `Call`): a direct call in its key directory,
    skipped when that directory is complete. `cached_seconds`: the steps found complete in every
    element, with what they took when they ran (as the Prefect executor reports its cache hits)."""

    def __init__(self, cfg: SemiEvolConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self._found: dict[str, float] = {}
        self._ran: set[str] = set()

    def __call__(self, step: Step, inputs: dict, key: str, index: int | None, count: int) -> dict:
        outputs, seconds = run_keyed(step, self.cfg, self.run_dir, inputs, key)
        if seconds is None:
            self._ran.add(step.name)
        else:
            self._found[step.name] = round(self._found.get(step.name, 0.0) + seconds, 3)
        return outputs

    @property
    def cached_seconds(self) -> dict[str, float]:
        return {name: s for name, s in self._found.items() if name not in self._ran}


def results_of(values: dict, systems: Sequence[str]) -> dict[str, dict]:
    return {s: values[f"metrics_{s}"] for s in systems}


def finish(run_dir: Path, cfg: SemiEvolConfig, values: dict, systems: Sequence[str], timings: dict,
           cached_seconds: dict | None = None, registry: "Registry | None" = None,
           processes: dict[str, dict[tuple, int]] | None = None) -> tuple[dict, dict]:
    """report.json / report.md from the walked graph's values: (report, extra entries). With a
    registry and a gate decision, the SemiEvol adapter is registered and promoted or rejected
    (gate.apply) before the report is written, so the report says what happened. `processes`
    (step -> {(host, pid): backends built}, the Prefect executor's) goes in as `processes`:
    per step that ran, the processes that answered and the models each had loaded."""
    from .report import write_report

    results = results_of(values, systems)
    extra = {"answer_type": values["answer_type"]}
    if processes:
        extra["processes"] = {step: [{"host": h, "pid": pid, "backends_built": n} for (h, pid), n in seen.items()]
                              for step, seen in processes.items()}
    if "sft" in results and "semievol" in results:
        extra.update(steps.verdict(run_dir / "predictions", cfg))
    if values.get("gate"):
        extra["gate"] = values["gate"]
        if registry is not None:
            extra["registry"] = _promote_or_keep(registry, run_dir, cfg, values)
    figures = _draw(run_dir, values, registry)
    if figures:
        extra["figures"] = figures
    return write_report(run_dir, cfg, results, values.get("selection") or {}, timings, extra, cached_seconds), extra


def _draw(run_dir: Path, values: dict, registry: "Registry | None") -> dict[str, str]:
    """The report's PNGs (semievol_core/plots.py), by file name relative to the run directory."""
    from . import plots

    drawn = {"history": plots.history_plot(registry, run_dir / "history.png") if registry is not None else None,
             "selection_h": (plots.h_plot(values["pseudo_labels"], values.get("oracle"), run_dir / "selection_h.png")
                             if values.get("pseudo_labels") else None)}
    return {name: path.name for name, path in drawn.items() if path is not None}


def _promote_or_keep(registry: "Registry", run_dir: Path, cfg: SemiEvolConfig, values: dict) -> dict:
    from .data import table_fingerprint
    from .gate import apply

    tables = {name: table_fingerprint(values[name]) for name in ("labeled", "unlabeled", "test")}
    facts = {"run": str(Path(run_dir).resolve()), "round": len(registry.records()) + 1, "tables": tables,
             "config": cfg.result_fields(), "metrics": values.get("metrics_semievol")}
    champion = values.get("champion")  # resolved: <registry>/adapters/<id>, or None
    return apply(registry, values["gate"], values["semievol_adapter"], facts,
                 gated_against=Path(champion).name if champion else None)
