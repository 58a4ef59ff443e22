"""The `evolve` flow: the whole SemiEvol method as cached, retried Prefect tasks.

    from flows.evolve import evolve
    report = evolve("data/fpb", "runs/fpb", SemiEvolConfig(theta=0.3), RunLimits(labeled=64))

Same steps, order and run-directory layout as `semievol_core.pipeline.run_semievol` (see
semievol_core/steps.py for the layout), plus `<out>/.prefect-cache/` holding the task results the
cache answers from. A re-run on the same data executes no step; changing θ re-runs filter, the
final training and the semievol evaluation; changing the model re-runs training and generation.
Generation runs in shards of `cfg.execution.shard_size` questions, each its own cached task run,
so a killed run loses at most the shard in flight.

Artifacts (keys shared across runs, so the UI shows each one's history): `semievol-verdict`
(SemiEvol - SFT with its CI and McNemar p: better or not), `semievol-accuracy`
(accuracy and 95% CI per system), `semievol-selection` (pseudo-label statistics: class mix by label
name next to the labeled prior, labels removed per rule, accuracy when an oracle exists),
`semievol-report` (report.md + where the outputs are), `semievol-generation` (progress).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from semievol_core import steps
from semievol_core.config import SemiEvolConfig
from semievol_core.pipeline import DEFAULT_SYSTEMS
from semievol_core.report import render_markdown, systems_table, verdict_line, write_report
from tasks import method
from tasks.common import ensure_gpu_limit

from flows.common import RunLimits, StepRunner, publish_accuracy, publish_markdown, publish_selection, run_name


@flow(name="evolve", description="SemiEvol: semi-supervised fine-tuning from labeled + unlabeled data.",
      flow_run_name=run_name("evolve", "data_dir"))
def evolve(data_dir: str, out_dir: str, config: SemiEvolConfig = SemiEvolConfig(),
           limits: RunLimits = RunLimits(), systems: list[str] = list(DEFAULT_SYSTEMS)) -> dict:
    """Run SemiEvol on the dataset in `data_dir`; outputs and report.json/report.md in `out_dir`."""
    log = get_run_logger()
    cfg = config
    unknown = [s for s in systems if s not in steps.SYSTEMS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; choose from {list(steps.SYSTEMS)}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ensure_gpu_limit(log)
    run = StepRunner(out, log)

    prep = run.run("prepare", method.prepare, cfg=cfg, data_dir=str(data_dir), out=str(out / "data"),
                   limits=limits.model_dump())
    d = Path(prep["path"])
    labeled, unlabeled, test = (str(d / f"{n}.parquet") for n in ("labeled", "unlabeled", "test"))
    answer_type = prep["answer_type"]
    log.info("data: %s; answer type %s", prep["counts"], answer_type)

    warm = run.run("train-warm", method.train, cfg=cfg, out=str(out / "warm_adapter"), labeled=labeled)["path"]

    emb = out / "embeddings"
    vecs = {}
    for name, table in (("labeled", labeled), ("unlabeled", unlabeled), ("test", test)):
        vecs[name] = run.run("embed", method.embed, name=f"embed-{name}", cfg=cfg, table=table, kind=name,
                             out=str(emb / f"{name}.npy"))["path"]
    neighbors = run.run("retrieve", method.retrieve, name="retrieve-unlabeled", cfg=cfg, queries=unlabeled, query_kind="unlabeled",
                        query_vecs=vecs["unlabeled"], labeled=labeled, labeled_vecs=vecs["labeled"],
                        out=str(out / "neighbors.parquet"))["path"]
    test_nb = run.run("retrieve", method.retrieve, name="retrieve-test", cfg=cfg, queries=test, query_kind="test",
                      query_vecs=vecs["test"], labeled=labeled, labeled_vecs=vecs["labeled"],
                      out=str(out / "test_neighbors.parquet"))["path"]

    plan = steps.shard_plan(unlabeled, cfg.execution.shard_size)
    label = f"generation of {out}"
    progress = create_progress_artifact(progress=0.0, key="semievol-generation",
                                        description=f"{label}: 0/{len(plan)} shards")
    shards = []
    for i, ids in enumerate(plan, start=1):
        res = run.run("generate", method.generate, name=f"generate-{i}/{len(plan)}", cfg=cfg, ids=ids,
                      unlabeled=unlabeled, labeled=labeled, neighbors=neighbors, warm_adapter=warm,
                      shard_dir=str(out / "responses"), answer_type=answer_type,
                      progress={"artifact": str(progress), "shard": i, "shards": len(plan), "label": label})
        shards.append(res["path"])
        update_progress_artifact(progress, progress=100.0 * i / len(plan),
                                 description=f"{label}: {i}/{len(plan)} shards")
        log.info("generation shard %d/%d done (%d questions)", i, len(plan), len(ids))
    responses = run.run("collect", method.collect, cfg=cfg, shards=shards, labeled=labeled,
                        neighbors=neighbors, out=str(out / "responses.parquet"))["path"]

    votes = run.run("vote", method.vote, responses=responses, out=str(out / "votes.parquet"))["path"]
    justified = run.run("justify", method.justify, cfg=cfg, votes=votes, responses=responses,
                        unlabeled=unlabeled, warm_adapter=warm, answer_type=answer_type,
                        out=str(out / "justified.parquet"))["path"]
    oracle = d / "oracle.parquet"
    sel = run.run("select", method.filter_labels, cfg=cfg, votes=votes, justified=justified,
                  responses=responses, unlabeled=unlabeled, labeled=labeled,
                  oracle=str(oracle) if oracle.exists() else None,
                  answer_type=answer_type, out=str(out / "pseudo_labels.parquet"))
    pseudo, selection = sel["path"], sel["stats"]
    log.info("selected %s of %s pseudo-labels", selection["n_selected"], selection["n_unlabeled"])

    final_out = str(out / "semievol_adapter")
    if cfg.final_training == "union":  # paper Eq. 9: labeled + selected pseudo-labels from the base
        final = run.run("train-final", method.train, cfg=cfg, out=final_out, labeled=labeled,
                        pseudo_labels=pseudo, unlabeled=unlabeled)["path"]
    else:  # released code: continue the warm adapter on the pseudo-labels
        final = run.run("train-final", method.train, cfg=cfg, out=final_out, init_adapter=warm,
                        pseudo_labels=pseudo, unlabeled=unlabeled)["path"]

    adapters = {"sft": warm, "semievol": final}
    results = {}
    for system in systems:
        # Only the systems that read them get the labeled table and neighbours, so that e.g. the
        # vanilla evaluation's cache key does not depend on them.
        uses_neighbors = system in ("rag_knn", "knn_vote")
        res = run.run(f"evaluate-{system}", method.evaluate, cfg=cfg, system=system, test=test,
                      answer_type=answer_type, out=str(out / "predictions" / f"{system}.parquet"),
                      adapter=adapters.get(system), labeled=labeled if uses_neighbors else None,
                      test_neighbors=test_nb if uses_neighbors else None)
        results[system] = res["metrics"]

    extra = {"answer_type": answer_type}
    if "sft" in results and "semievol" in results:
        extra.update(steps.verdict(out / "predictions", cfg))
    report = write_report(out, cfg, results, selection, run.timings, extra, run.cached_seconds)
    log.info("cache hits: %s; executed: %s", sorted(set(run.cached)) or "none",
             sorted(set(run.executed)) or "none")

    publish_accuracy(results, key="semievol-accuracy", description=f"Test accuracy per system — {out}")
    if "semievol_vs_sft" in extra:
        line = verdict_line(extra["semievol_vs_sft"])
        log.info(line)
        publish_markdown(f"# Verdict\n\n**{line}.**\n\n{systems_table(results)}\n", key="semievol-verdict",
                         description=line)
    publish_selection(selection, key="semievol-selection", description=f"Pseudo-label selection — {out}")
    md = render_markdown(out, cfg, results, selection, run.timings, extra, run.cached_seconds)
    md += ("\n## Where things are\n\n"
           f"- run directory: `{out}`\n- report: `{out / 'report.json'}`, `{out / 'report.md'}`\n"
           f"- adapters: `{warm}`, `{final}`\n- predictions: `{out / 'predictions'}`\n"
           f"- data snapshot: `{d}` (from `{Path(data_dir).resolve()}`)\n"
           f"- steps from cache: {', '.join(sorted(set(run.cached))) or 'none'}\n")
    publish_markdown(md, key="semievol-report", description=f"SemiEvol report — {out}")
    return report
