"""The run report: report.json (machine-readable) and report.md (for people), same content.

    write_report(out_dir, cfg, systems, selection, timings, extra={"semievol_vs_sft": cmp},
                 cached={"train-warm": 812.4})
    verdict_line(cmp)   # "SemiEvol is better than SFT: +6.0 points (95% CI +2.0 to +10.0), McNemar p = 0.004 ..."

report.json = {"config": {...}, "systems": {name: {accuracy, ci_low, ci_high, parse_failure_rate,
n}}, "selection": {n_unlabeled, n_consensus, n_justified, n_selected, threshold,
pseudo_label_accuracy, removed_unparsed, removed_by_agreement, removed_by_threshold,
selected_class_counts, class_mix, class_mix_warning (only when the mix is off), ...} (see
steps.selection_stats), "timings": {step: seconds in this run}, "cached_steps": {step: seconds it
took when computed}, ...extra}. `semievol_vs_sft` in extra (steps.compare) becomes the verdict.
report.md shows the selection's class mix as a table (class | labeled prior % | selected % |
selected n), under the class-mix warning in bold when there is one.
"""

from __future__ import annotations

from pathlib import Path

from .config import SemiEvolConfig
from .steps import save_json, save_text


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def systems_table(systems: dict) -> str:
    lines = ["| system | accuracy % | 95% CI | parse failures % | n |", "|---|---:|---|---:|---:|"]
    for name, m in systems.items():
        lines.append(f"| {name} | {_pct(m['accuracy'])} | {_pct(m['ci_low'])}–{_pct(m['ci_high'])} | "
                     f"{_pct(m.get('parse_failure_rate'))} | {m.get('n', '')} |")
    return "\n".join(lines)


def selection_table(sel: dict) -> str:
    """The selection statistics as a table, then the class mix (class | labeled prior % | selected %
    | selected n), with the class-mix warning in bold above both when there is one."""
    parts = [f"**Warning: {sel['class_mix_warning']}.**", ""] if sel.get("class_mix_warning") else []
    mix, counts = sel.get("class_mix"), sel.get("selected_class_counts") or {}
    lines = ["| statistic | value |", "|---|---:|"]
    for k, v in sel.items():
        if k in ("class_mix", "class_mix_warning") or (mix and k == "selected_class_counts"):
            continue  # shown above / in the class table below
        if isinstance(v, float):
            v = f"{v:.4f}"
        lines.append(f"| {k} | {v} |")
    parts.append("\n".join(lines))
    if mix:  # choice tasks (steps.selection_stats); free answers keep the counts row above
        rows = ["| class | labeled prior % | selected % | selected n |", "|---|---:|---:|---:|"]
        rows += [f"| {c} | {_pct(m['labeled'])} | {_pct(m['selected'])} | {counts.get(c, 0)} |"
                 for c, m in mix.items()]
        parts += ["", "\n".join(rows)]
    return "\n".join(parts)


def verdict_line(cmp: dict) -> str:
    """One line: is SemiEvol better than SFT, by how much, how sure (steps.compare's dict)."""
    word = "better" if cmp["better"] else "not better"
    return (f"SemiEvol is {word} than SFT: {100 * cmp['difference']:+.1f} points "
            f"(95% CI {100 * cmp['ci_low']:+.1f} to {100 * cmp['ci_high']:+.1f}), "
            f"McNemar p = {cmp['mcnemar_p']:.3g}, on {cmp['n']} test questions")


def gate_markdown(extra: dict) -> str:
    """The promotion gate's decision and what happened in the registry, as markdown."""
    g, reg = extra["gate"], extra.get("registry")
    lines = [f"**Promotion gate: {g['reason']}.**", ""]
    if reg:
        state = "promoted to champion" if reg["promoted"] else (
            "already the champion" if reg["champion"] == reg["id"] else "rejected; the champion is unchanged")
        lines += [f"- challenger `{reg['id']}`: {state}",
                  f"- champion: `{reg['champion'] or 'none'}` (serve `{reg['path']}/champion`)", ""]
    return "\n".join(lines)


def timings_table(timings: dict, cached: dict | None = None) -> str:
    """Wall seconds per step; a step answered from the cache shows what it took when computed."""
    cached = cached or {}
    lines = ["| step | seconds | |", "|---|---:|---|"]
    for k, v in timings.items():
        if k in cached:
            lines.append(f"| {k} | {cached[k]:.1f} | cached (took {v:.1f} s in this run) |")
        else:
            lines.append(f"| {k} | {v:.1f} | |")
    return "\n".join(lines)


def render_markdown(out_dir: str | Path, cfg: SemiEvolConfig, systems: dict, selection: dict,
                    timings: dict, extra: dict | None = None, cached: dict | None = None) -> str:
    extra = dict(extra or {})
    cmp = extra.pop("semievol_vs_sft", None)
    parts = [f"# SemiEvol run — `{out_dir}`", ""]
    if cmp is not None:
        parts += [f"**{verdict_line(cmp)}.**", ""]
    if "gate" in extra:
        parts += [gate_markdown(extra)]
        extra.pop("gate"), extra.pop("registry", None)
    figures = extra.pop("figures", None) or {}
    parts += ["## Test accuracy", "", systems_table(systems), ""]
    for k, v in extra.items():
        parts.append(f"- **{k}**: {v}")
    if "history" in figures:
        parts += ["", f"![Champion and challengers by round]({figures['history']})"]
    parts += ["", "## Pseudo-label selection", "", selection_table(selection), ""]
    if "selection_h" in figures:
        parts += [f"![H of the selected pseudo-labels, right and wrong]({figures['selection_h']})", ""]
    parts += ["## Step timings", "", timings_table(timings, cached)]
    parts += ["", "## Outputs", "",
              "neighbors.parquet, responses.parquet, votes.parquet, justified.parquet, pseudo_labels.parquet, "
              "predictions/, warm_adapter/, semievol_adapter/ — under the run directory above, each a link to "
              "the step directory that wrote it (`<step>/<key>/`).",
              "", "## Configuration", "", "```yaml", cfg.to_yaml().rstrip(), "```", ""]
    return "\n".join(parts)


def write_report(out_dir: str | Path, cfg: SemiEvolConfig, systems: dict, selection: dict,
                 timings: dict, extra: dict | None = None, cached: dict | None = None) -> dict:
    out_dir = Path(out_dir)
    report = {"config": cfg.model_dump(mode="json"), "systems": systems, "selection": selection,
              "timings": timings, "cached_steps": cached or {}, **(extra or {})}
    save_json(report, out_dir / "report.json")
    save_text(render_markdown(out_dir, cfg, systems, selection, timings, extra, cached), out_dir / "report.md")
    save_text(cfg.to_yaml(), out_dir / "config.yaml")
    return report
