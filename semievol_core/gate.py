"""The promotion gate: a challenger replaces the champion only when it is significantly better.

    d = decide("runs/n/predictions/semievol.parquet", "runs/n/predictions/champion.parquet",
               against="champion", alpha=0.05, min_gain=0.0)
    d["promote"], d["difference"], d["mcnemar_p"], d["n"], d["reason"]
    apply(Registry("data/fpb/registry"), d, adapter="runs/n/semievol_adapter", facts={...})

Both predictions cover the same test questions (the run's test table), so the test is paired:
McNemar's exact p on the questions exactly one of them gets right, and the accuracy difference with
its paired bootstrap CI (steps.compare). Promote when p < alpha AND the gain is at least
`min_gain` points (both in the config: gate.alpha, gate.min_gain). The first run, with no
champion, is compared with this run's SFT adapter: the SemiEvol adapter must beat what the labels
alone give before it ships.
"""

from __future__ import annotations

from pathlib import Path

from .registry import Registry
from .steps import compare


def decide(challenger: str | Path, baseline: str | Path, against: str, alpha: float, min_gain: float,
           bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    """The gate's decision and its numbers (see the module docstring)."""
    cmp = compare(challenger, baseline, bootstrap_samples, seed)
    gain = 100 * cmp["difference"]
    significant = cmp["mcnemar_p"] < alpha
    # With min_gain >= 0 a promoted challenger is strictly better: p < alpha needs disagreements,
    # and equal counts either way give p = 1.
    promote = bool(significant and gain >= min_gain)
    if promote:
        why = f"p = {cmp['mcnemar_p']:.3g} < {alpha} and the gain is at least {min_gain:g} points"
    elif not significant:
        why = f"p = {cmp['mcnemar_p']:.3g} is not below {alpha}"
    else:
        why = f"the gain is below {min_gain:g} points"
    verb = "promoted" if promote else f"kept the {against}"
    reason = (f"{verb}: the challenger is {gain:+.1f} points against the {against} "
              f"(95% CI {100 * cmp['ci_low']:+.1f} to {100 * cmp['ci_high']:+.1f}) on {cmp['n']} "
              f"test questions; {why}")
    return {**cmp, "against": against, "alpha": alpha, "min_gain": min_gain, "promote": promote,
            "reason": reason}


def apply(registry: Registry, decision: dict, adapter: str | Path, facts: dict, gated_against: str | None) -> dict:
    """Register the challenger (lineage, table digests, config, metrics) and promote or reject it.
    Returns {"id", "champion", "promoted", "path"}. The same adapter bytes are registered once;
    a challenger that is the champion already is left as it is, and one that was champion before
    (replaced, or rolled back by an operator) comes back only by hand. `gated_against`: the
    champion id the gate compared with (None: none); promotion is refused if it changed since."""
    rec = registry.register(adapter, **facts, decision=decision)
    if registry.champion_id() == rec["id"] or registry.was_champion(rec["id"]):
        promoted = False
    elif decision["promote"]:
        promoted = registry.promote(rec["id"], decision, expected=gated_against)
    else:
        registry.reject(rec["id"], decision)
        promoted = False
    return {"id": rec["id"], "champion": registry.champion_id(), "promoted": promoted,
            "path": str(registry.root.resolve())}
