"""The `evolve` flow: the whole SemiEvol method as cached Prefect tasks.

    from flows.evolve import evolve
    report = evolve("data/fpb", "runs/fpb", SemiEvolConfig(selection={"theta": 0.3}), Limits(labeled=64))

The steps, their order and what each reads are declared once, in `semievol_core.graph`; this flow
walks that graph with every step as a cached task (tasks/step.py), exactly as
`semievol_core.pipeline.run_semievol` walks it in process. Only the steps the requested `systems`
need run. Outputs: each step's under `<out>/<step>/<key>/` with the task's cache entry beside them,
and stable names (`<out>/warm_adapter`, `<out>/pseudo_labels.parquet`, ...) linked to the latest
(semievol_core/store.py). A re-run on the same data executes no step;
changing θ re-runs select, train-final and evaluate-semievol (and score-semievol); changing the model re-runs training
and generation.
Generation runs in shards of `cfg.execution.shard_size` questions, each its own cached task run,
so a killed run loses at most the shard in flight. With `execution.workers` (a local cluster) or
`execution.cluster` (a running one), the shards of embedding, generation, justification and
evaluation are submitted at once to Dask, or to Ray with `execution.engine: ray`, and run on its workers, each of which loads
the model once (flows/common.task_pool); a Dask worker lost mid-shard has its shard re-run on another. One run per
`out_dir` at a time: a second one fails at once, naming the first one's pid (steps.run_dir_lock).

Artifacts (keys shared across runs, so the UI shows each one's history): `semievol-verdict`
(SemiEvol - SFT with its CI and McNemar p: better or not), `semievol-accuracy`
(accuracy and 95% CI per system), `semievol-selection` (pseudo-label statistics: class mix by label
name next to the labeled prior, labels removed per rule, accuracy when an oracle exists),
`semievol-report` (report.md + where the outputs are), `semievol-embed`, `semievol-generate`,
`semievol-justify`, `semievol-evaluate` (progress of each fan-out).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from semievol_core import graph
from semievol_core.config import SemiEvolConfig
from semievol_core.registry import Registry
from semievol_core.steps import Limits, run_dir_lock
from semievol_core.report import gate_markdown, render_markdown, systems_table, verdict_line
from tasks.common import content_digest, ensure_gpu_limit

from flows.common import (StepRunner, publish_accuracy, publish_history, publish_markdown, publish_selection,
                          run_name, task_pool)


@flow(name="evolve", description="SemiEvol: semi-supervised fine-tuning from labeled + unlabeled data.",
      flow_run_name=run_name("evolve", "data_dir"))
def evolve(data_dir: str, out_dir: str, config: SemiEvolConfig = SemiEvolConfig(),
           limits: Limits = Limits(), systems: list[str] = list(graph.SYSTEMS), gate: bool = True,
           registry: str | None = None) -> dict:
    """Run SemiEvol on the dataset in `data_dir`; outputs and report.json/report.md in `out_dir`.
    `gate`: register the SemiEvol adapter in `registry` (default `<data_dir>/registry`) and promote
    it only if the promotion gate passes (semievol_core/gate.py)."""
    log = get_run_logger()
    gate = gate and "semievol" in systems
    # The registry is read for its champion (rounds.warm_from: champion) even when nothing is promoted.
    reg = Registry(registry or Path(data_dir) / "registry") \
        if gate or registry or config.rounds.warm_from == "champion" else None
    todo = graph.plan(systems, gate=gate)
    out = Path(out_dir).resolve()
    # One run per directory (created by the lock): a second one fails at once (atomic.LockHeld).
    with run_dir_lock(out), task_pool(config.execution, log) as (pool, workers):
        ensure_gpu_limit(log, devices=workers)
        runner, timings = StepRunner(config, out, log, pool), {}
        values = graph.execute(todo, graph.sources(data_dir, limits, reg), runner, config, out, timings,
                               digest=content_digest)
        report, extra = graph.finish(out, config, values, systems, timings, runner.cached_seconds,
                                     registry=reg if gate else None, processes=runner.processes)
        log.info("cache hits: %s; executed: %s", sorted(set(runner.cached)) or "none",
                 sorted(set(runner.executed)) or "none")

        results, selection = graph.results_of(values, systems), values.get("selection") or {}
        publish_accuracy(results, key="semievol-accuracy", description=f"Test accuracy per system — {out}")
        if "semievol_vs_sft" in extra:
            line = verdict_line(extra["semievol_vs_sft"])
            log.info(line)
            publish_markdown(f"# Verdict\n\n**{line}.**\n\n{systems_table(results)}\n", key="semievol-verdict",
                             description=line)
        if "gate" in extra:
            log.info("promotion gate: %s", extra["gate"]["reason"])
            publish_markdown(gate_markdown(extra), key="semievol-gate", description=extra["gate"]["reason"])
        if reg is not None:
            plot = (extra.get("figures") or {}).get("history")
            publish_history(reg, key="semievol-history", description=f"Champion and challengers — {reg.root}"
                            + (f"; plot: `{out / plot}`" if plot else ""))
        if selection:
            log.info("selected %s of %s pseudo-labels", selection["n_selected"], selection["n_unlabeled"])
            publish_selection(selection, key="semievol-selection", description=f"Pseudo-label selection — {out}")
        # The UI cannot load the run's PNGs by a relative path: "Where things are" lists them instead.
        md = render_markdown(out, config, results, selection, timings,
                             {k: v for k, v in extra.items() if k != "figures"}, runner.cached_seconds)
        adapters = list(dict.fromkeys(values[k] for k in ("sft_adapter", "warm", "semievol_adapter") if values.get(k)))
        md += ("\n## Where things are\n\n"
               f"- run directory: `{out}`\n- report: `{out / 'report.json'}`, `{out / 'report.md'}`\n"
               f"- adapters: {', '.join(f'`{a}`' for a in adapters) or 'none'}\n"
               f"- predictions: `{out / 'predictions'}`\n"
               f"- figures: {', '.join(f'`{out / f}`' for f in (extra.get('figures') or {}).values()) or 'none'}\n"
               f"- data snapshot: `{out / 'data'}` (from `{Path(data_dir).resolve()}`)\n"
               f"- steps from cache: {', '.join(sorted(set(runner.cached))) or 'none'}\n")
        publish_markdown(md, key="semievol-report", description=f"SemiEvol report — {out}")
        return report
