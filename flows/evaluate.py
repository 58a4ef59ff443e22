"""The `evaluate` flow: accuracy (with a 95% CI) of one model, optionally with a LoRA adapter, on a test table.

    from flows.evaluate import evaluate
    res = evaluate("data/fpb", "runs/eval-1", adapter="runs/fpb/semievol_adapter", limit=200)
    res["metrics"]["accuracy"], res["metrics"]["ci_low"], res["metrics"]["ci_high"]

`test` is a test table (Parquet file) or a dataset directory (its test.parquet is used). `model`
overrides config.model. Outputs in `out_dir`: data/test.parquet (the sample evaluated),
predictions/<name>.parquet (`name`: a plain file name, never a path), metrics.json, report.md;
one run per `out_dir` at a time (steps.run_dir_lock). Cached like every SemiEvol task: the same
model, adapter bytes and test rows are not evaluated twice. Artifacts: `semievol-eval-accuracy`
(table) and `semievol-eval-report` (markdown).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from semievol_core.config import SemiEvolConfig
from semievol_core.report import systems_table
from semievol_core.steps import check_model_name, run_dir_lock, save_json, save_text
from semievol_core import graph
from tasks.common import content_digest, ensure_gpu_limit

from flows.common import StepRunner, publish_accuracy, publish_markdown, run_name


@flow(name="evaluate", description="Accuracy of one model (+ adapter) on a test table.",
      flow_run_name=run_name("evaluate", "test"))
def evaluate(test: str, out_dir: str, model: str | None = None, adapter: str | None = None,
             config: SemiEvolConfig = SemiEvolConfig(), name: str = "model", limit: int | None = None) -> dict:
    log = get_run_logger()
    cfg = config if model is None else config.model_copy(update={"model": model})
    test_path = Path(test)
    if test_path.is_dir():
        test_path = test_path / "test.parquet"
    if not test_path.exists():
        raise FileNotFoundError(f"{test_path}: no test table")
    if adapter is not None and not Path(adapter).is_dir():
        raise FileNotFoundError(f"{adapter}: adapter directory not found")
    check_model_name(name)
    out = Path(out_dir).resolve()
    ensure_gpu_limit(log)
    runner, timings = StepRunner(cfg, out, log), {}
    sources = {"test_table": str(test_path), "limit": limit, "name": name,
               "adapter": str(Path(adapter).resolve()) if adapter else None}
    with run_dir_lock(out):  # one run per directory (created by the lock); a second fails at once
        res = graph.execute(graph.EVALUATION, sources, runner, cfg, out, timings, digest=content_digest)
        metrics = res["metrics"]
        summary = {"model": cfg.model, "adapter": adapter, "test": str(test_path), "n": res["n"],
                   "answer_type": res["answer_type"], "metrics": metrics, "predictions": res["predictions"],
                   "timings": timings}
        save_json(summary, out / "metrics.json")
        md = "\n".join([
            f"# Evaluation — `{name}`", "", f"- model: `{cfg.model}`", f"- adapter: `{adapter or 'none'}`",
            f"- test table: `{test_path}` ({res['n']} questions, {res['answer_type']})", "",
            systems_table({name: metrics}), "",
            f"Predictions: `{res['predictions']}`; metrics: `{out / 'metrics.json'}`", "",
            "```yaml", cfg.to_yaml().rstrip(), "```", ""])
        save_text(md, out / "report.md")
    log.info("%s: accuracy %.3f (95%% CI %.3f-%.3f) on %d questions", name, metrics["accuracy"],
             metrics["ci_low"], metrics["ci_high"], res["n"])
    publish_accuracy({name: metrics}, key="semievol-eval-accuracy", description=f"Accuracy — {out}")
    publish_markdown(md, key="semievol-eval-report", description=f"Evaluation report — {out}")
    return summary
