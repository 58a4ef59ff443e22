"""The run report: report.json (machine-readable) and report.md (for people), same content.

    write_report(out_dir, cfg, systems, selection, timings, extra={"mcnemar_semievol_vs_sft": p})

report.json = {"config": {...}, "systems": {name: {accuracy, ci_low, ci_high, parse_failure_rate,
n}}, "selection": {n_unlabeled, n_consensus, n_justified, n_selected, threshold,
pseudo_label_accuracy, ...}, "timings": {step: seconds}, ...extra}
"""

from __future__ import annotations

from pathlib import Path

from .config import SemiEvolConfig
from .steps import save_json


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def systems_table(systems: dict) -> str:
    lines = ["| system | accuracy % | 95% CI | parse failures % | n |", "|---|---:|---|---:|---:|"]
    for name, m in systems.items():
        lines.append(f"| {name} | {_pct(m['accuracy'])} | {_pct(m['ci_low'])}–{_pct(m['ci_high'])} | "
                     f"{_pct(m.get('parse_failure_rate'))} | {m.get('n', '')} |")
    return "\n".join(lines)


def selection_table(sel: dict) -> str:
    lines = ["| statistic | value |", "|---|---:|"]
    for k, v in sel.items():
        if isinstance(v, float):
            v = f"{v:.4f}"
        lines.append(f"| {k} | {v} |")
    return "\n".join(lines)


def render_markdown(out_dir: str | Path, cfg: SemiEvolConfig, systems: dict, selection: dict,
                    timings: dict, extra: dict | None = None) -> str:
    parts = [f"# SemiEvol run — `{out_dir}`", "", "## Test accuracy", "", systems_table(systems), ""]
    for k, v in (extra or {}).items():
        parts.append(f"- **{k}**: {v}")
    parts += ["", "## Pseudo-label selection", "", selection_table(selection), "",
              "## Step timings (s)", "", "| step | seconds |", "|---|---:|"]
    parts += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    parts += ["", "## Outputs", "",
              "neighbors.parquet, responses.parquet, votes.parquet, justified.parquet, pseudo_labels.parquet, "
              "predictions/, warm_adapter/, semievol_adapter/ — all under the run directory above.",
              "", "## Configuration", "", "```yaml", cfg.to_yaml().rstrip(), "```", ""]
    return "\n".join(parts)


def write_report(out_dir: str | Path, cfg: SemiEvolConfig, systems: dict, selection: dict,
                 timings: dict, extra: dict | None = None) -> dict:
    out_dir = Path(out_dir)
    report = {"config": cfg.model_dump(mode="json"), "systems": systems, "selection": selection,
              "timings": timings, **(extra or {})}
    save_json(report, out_dir / "report.json")
    (out_dir / "report.md").write_text(render_markdown(out_dir, cfg, systems, selection, timings, extra),
                                       encoding="utf-8")
    (out_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    return report
