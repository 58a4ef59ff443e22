"""The run's two pictures, as PNGs beside report.md (matplotlib, drawn without pyplot's global state).

    history_plot(registry, run_dir / "history.png")        # challenger and champion accuracy by round
    h_plot(run_dir / "pseudo_labels.parquet", run_dir / "data" / "oracle.parquet", run_dir / "selection_h.png")

`history_plot`: one point per adapter the registry has seen (its test accuracy with the 95% CI, filled
when the gate promoted it) and the champion's accuracy after each round as a step line, so a
night that lost shows as a hollow point under a flat line. `h_plot`: the H (mean token NLL, nats)
of the selected pseudo-labels, split into right and wrong by the oracle, to show whether low H
means right on this data. Both return the path written, or None when there is nothing to draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_path
from .data import read_table

if TYPE_CHECKING:
    from .registry import Registry


def _figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.figure import Figure  # lazy: only runs that draw pay for the import

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _save(fig, out: Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out


def champion_series(events: list[dict]) -> list[tuple[str, bool, str | None]]:
    """Per registered adapter, in order: (id, ever promoted, the champion's id once its round was
    decided), from the registry's events. A round is decided at the next registration (or now),
    so promotions and rollbacks by hand in between count, as a server would have seen them."""
    series: list[list] = []
    stack: list[str] = []
    for e in events:
        if e["event"] == "registered":
            if series:
                series[-1][2] = stack[-1] if stack else None
            series.append([e["id"], False, None])
        elif e["event"] == "promoted":
            stack.append(e["id"])
            for row in series:
                row[1] = row[1] or row[0] == e["id"]
        elif e["event"] == "rolled-back" and stack:
            stack.pop()
    if series:
        series[-1][2] = stack[-1] if stack else None
    return [tuple(row) for row in series]


def history_plot(registry: "Registry", out: str | Path) -> Path | None:
    """Accuracy (%) of every registered adapter by round, with the champion's accuracy as a step line."""
    metrics = {r["id"]: r.get("metrics") or {} for r in registry.records()}
    series = [row for row in champion_series(registry.history()) if metrics.get(row[0], {}).get("accuracy") is not None]
    if not series:
        return None
    pct = {i: {k: 100 * v for k, v in m.items() if k in ("accuracy", "ci_low", "ci_high") and v is not None}
           for i, m in metrics.items()}
    fig, ax = _figure()
    x = list(range(1, len(series) + 1))
    acc = [pct[i]["accuracy"] for i, _, _ in series]
    ax.errorbar(x, acc, fmt="none", ecolor="0.6", capsize=3,
                yerr=[[a - pct[i].get("ci_low", a) for a, (i, _, _) in zip(acc, series)],
                      [pct[i].get("ci_high", a) - a for a, (i, _, _) in zip(acc, series)]])
    for filled in (True, False):
        pts = [(xi, a) for xi, a, (_, promoted, _) in zip(x, acc, series) if promoted is filled]
        if pts:
            ax.scatter(*zip(*pts), s=36, zorder=3, color="C0" if filled else "white", edgecolors="C0",
                       label="challenger, promoted" if filled else "challenger, kept out")
    champion = [pct.get(c, {}).get("accuracy", float("nan")) if c else float("nan") for _, _, c in series]
    ax.step(x, champion, where="post", color="C1", label="champion")
    ax.set(xlabel="round (adapter registered)", ylabel="test accuracy %", xticks=x,
           title=f"Champion and challengers, {len(series)} round{'s' * (len(series) > 1)}")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, out)


def h_plot(pseudo_labels: str | Path, oracle: str | Path | None, out: str | Path) -> Path | None:
    """Histogram of H for the selected pseudo-labels, right vs wrong against the oracle."""
    if oracle is None or not Path(oracle).exists():
        return None
    import pandas as pd

    pl = pd.read_parquet(pseudo_labels, columns=["unlabeled_id", "answer", "H", "selected"])
    pl = pl[pl["selected"]]
    if pl.empty:
        return None
    truth = read_table(oracle, "oracle").set_index("id")["answer"]
    right = pl["answer"].to_numpy() == truth.reindex(pl["unlabeled_id"]).to_numpy()
    fig, ax = _figure()
    bins = 30
    ax.hist([pl["H"][right], pl["H"][~right]], bins=bins, stacked=True, color=["C2", "C3"],
            label=[f"right ({right.sum()})", f"wrong ({(~right).sum()})"])
    ax.set(xlabel="H, mean token NLL of the pseudo-label (nats)", ylabel="selected pseudo-labels",
           title=f"Selected pseudo-labels: {100 * right.mean():.1f}% right")
    ax.legend(fontsize="small")
    return _save(fig, out)
