"""report.md's pictures (semievol_core/plots.py): the champion across rounds and H by correctness."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from matplotlib.image import imread

from semievol_core.data import write_table
from semievol_core.plots import champion_series, h_plot, history_plot
from semievol_core.registry import Registry
from semievol_core.report import render_markdown
from semievol_core.config import SemiEvolConfig


def _adapter(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(name.encode() * 50)
    (d / "adapter_config.json").write_text(json.dumps({"name": name}))
    return d


def _png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h, w = imread(path).shape[:2]
    return w, h


def test_champion_series_follows_promotions_rejections_and_rollbacks():
    events = [{"event": "registered", "id": "a"}, {"event": "promoted", "id": "a"},
              {"event": "registered", "id": "b"}, {"event": "rejected", "id": "b"},
              {"event": "registered", "id": "c"}, {"event": "promoted", "id": "c"},
              {"event": "rolled-back", "id": "c", "to": "a"},  # by hand, before the next round
              {"event": "registered", "id": "d"}]
    assert champion_series(events) == [("a", True, "a"), ("b", False, "a"), ("c", True, "a"), ("d", False, "a")]
    assert champion_series([{"event": "registered", "id": "x"}]) == [("x", False, None)]
    assert champion_series([]) == []


def test_history_plot_draws_every_round(tmp_path):
    reg = Registry(tmp_path / "reg")
    assert history_plot(reg, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    for i, (name, acc, promote) in enumerate([("a", 0.60, True), ("b", 0.58, False), ("c", 0.66, True)], 1):
        rec = reg.register(_adapter(tmp_path, name), round=i,
                           metrics={"accuracy": acc, "ci_low": acc - 0.04, "ci_high": acc + 0.04})
        reg.promote(rec["id"]) if promote else reg.reject(rec["id"])
    out = history_plot(reg, tmp_path / "history.png")
    assert out == tmp_path / "history.png"
    w, h = _png(out)
    assert w > 300 and h > 200
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temp file left


def test_h_plot_needs_an_oracle_and_a_selection(tmp_path):
    pl = pd.DataFrame({"unlabeled_id": ["u1", "u2", "u3", "u4"], "answer": ["A", "B", "A", "B"],
                       "source": "consensus", "H": [0.1, 0.2, 0.9, 0.3], "threshold": 0.5,
                       "selected": [True, True, False, True]})
    pl.to_parquet(tmp_path / "pl.parquet")
    oracle = tmp_path / "oracle.parquet"
    write_table(pd.DataFrame({"id": ["u1", "u2", "u3", "u4"], "answer": ["A", "A", "A", "B"]}), oracle, "oracle")
    assert h_plot(tmp_path / "pl.parquet", None, tmp_path / "x.png") is None
    assert h_plot(tmp_path / "pl.parquet", tmp_path / "missing.parquet", tmp_path / "x.png") is None
    assert _png(h_plot(tmp_path / "pl.parquet", oracle, tmp_path / "h.png"))[0] > 300
    pl.assign(selected=False).to_parquet(tmp_path / "none.parquet")
    assert h_plot(tmp_path / "none.parquet", oracle, tmp_path / "y.png") is None


def test_report_shows_the_figures_it_is_given(tmp_path):
    systems = {"sft": {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10}}
    md = render_markdown(tmp_path, SemiEvolConfig(), systems, {}, {},
                         extra={"figures": {"history": "history.png", "selection_h": "selection_h.png"}})
    assert "![Champion and challengers by round](history.png)" in md
    assert "](selection_h.png)" in md and "**figures**" not in md
    assert "](history.png)" not in render_markdown(tmp_path, SemiEvolConfig(), systems, {}, {})
