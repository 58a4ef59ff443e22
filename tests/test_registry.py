"""The adapter registry and the promotion gate (semievol_core/registry.py, gate.py): promotion, a
rejected challenger, rollback, a crash between the event and the link, two writers at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from semievol_core import registry as registry_module
from semievol_core.gate import apply, decide
from semievol_core.registry import Registry, RegistryError

ROOT = Path(__file__).resolve().parents[1]


def _adapter(root: Path, name: str) -> Path:
    """A stand-in adapter directory: distinct bytes per name (the registry copies files as they are)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(name.encode() * 100)
    (d / "adapter_config.json").write_text(json.dumps({"r": 8, "name": name}))
    return d


def _link(reg: Registry) -> str | None:
    link = reg.root / "champion"
    return os.readlink(link) if link.is_symlink() else None


def test_promote_reject_rollback(tmp_path):
    reg = Registry(tmp_path / "reg")
    assert reg.champion() is None and reg.champion_path() is None and reg.history() == []
    a = reg.register(_adapter(tmp_path, "a"), round=1, metrics={"accuracy": 0.6})
    assert reg.register(tmp_path / "a")["id"] == a["id"]  # same bytes: the same record, no copy
    assert a["parent"] is None and (reg.root / "adapters" / a["id"] / "adapter_model.safetensors").exists()
    assert reg.promote(a["id"], {"promote": True}) is True
    assert reg.promote(a["id"]) is False  # already the champion
    assert reg.champion()["id"] == a["id"] and _link(reg) == f"adapters/{a['id']}"
    assert (reg.champion_path() / "adapter_config.json").read_text() == (tmp_path / "a" / "adapter_config.json").read_text()

    b = reg.register(_adapter(tmp_path, "b"), round=2)
    assert b["parent"] == a["id"]  # lineage: registered while a was the champion
    reg.reject(b["id"], {"promote": False})
    reg.reject(b["id"], {"promote": False})  # recorded once
    assert reg.champion_id() == a["id"] and _link(reg) == f"adapters/{a['id']}"
    assert [e["event"] for e in reg.history()] == ["registered", "promoted", "registered", "rejected"]

    c = reg.register(_adapter(tmp_path, "c"), round=3)
    reg.promote(c["id"])
    assert _link(reg) == f"adapters/{c['id']}"
    assert [r["champion"] for r in reg.records()] == [False, False, True]
    assert reg.rollback() == a["id"]
    assert reg.champion_id() == a["id"] and _link(reg) == f"adapters/{a['id']}"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback()
    with pytest.raises(RegistryError, match="no adapter 'nope'"):
        reg.promote("nope")


def test_a_crash_between_the_event_and_the_link_is_repaired_by_the_next_reader(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "reg")
    a, b = (reg.register(_adapter(tmp_path, n))["id"] for n in ("a", "b"))
    reg.promote(a)

    def crash(target, link):
        raise OSError("killed before the link moved")

    monkeypatch.setattr(registry_module, "atomic_symlink", crash)
    with pytest.raises(OSError, match="killed"):
        reg.promote(b)
    assert _link(reg) == f"adapters/{a}"  # the link still names one adapter: the old champion
    monkeypatch.undo()
    again = Registry(tmp_path / "reg")  # the next run (or `semievol registry list`) opens it
    assert again.champion_id() == b and _link(again) == f"adapters/{b}"


def test_a_crash_while_registering_leaves_no_record(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "reg")
    a = reg.register(_adapter(tmp_path, "a"))["id"]
    reg.promote(a)
    monkeypatch.setattr(registry_module.shutil, "copy2", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        reg.register(_adapter(tmp_path, "b"))
    monkeypatch.undo()
    assert [r["id"] for r in reg.records()] == [a]  # the half copy is a hidden temp, then gone
    assert not [p for p in (reg.root / "adapters").iterdir() if p.name.startswith(".")]


def test_two_processes_promoting_at_once_keep_one_consistent_history(tmp_path):
    root = tmp_path / "reg"
    adapters = [_adapter(tmp_path, f"w{w}-{i}") for w in range(2) for i in range(8)]
    script = (
        "import sys; from semievol_core.registry import Registry\n"
        "reg = Registry(sys.argv[1])\n"
        "for path in sys.argv[2:]:\n"
        "    reg.promote(reg.register(path)['id'])\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(root), *map(str, adapters[w * 8:(w + 1) * 8])],
                              cwd=ROOT) for w in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    reg = Registry(root)
    events = reg.history()
    assert len(events) == 32 and len(reg.records()) == 16
    champion = None
    for e in (e for e in events if e["event"] == "promoted"):
        assert e["previous"] == champion  # each promotion saw the state the one before it left
        champion = e["id"]
    assert reg.champion_id() == champion and _link(reg) == f"adapters/{champion}"


def _predictions(path: Path, correct: list[bool]) -> Path:
    pd.DataFrame({"id": [f"q{i}" for i in range(len(correct))], "correct": correct}).to_parquet(path)
    return path


def test_the_gate_promotes_only_a_significant_gain_of_at_least_min_gain(tmp_path):
    base = _predictions(tmp_path / "base.parquet", [True] * 50 + [False] * 50)
    better = _predictions(tmp_path / "better.parquet", [True] * 50 + [True] * 20 + [False] * 30)  # +20 points
    slightly = _predictions(tmp_path / "slightly.parquet", [True] * 50 + [True] * 3 + [False] * 47)  # +3
    d = decide(better, base, "champion", alpha=0.05, min_gain=0.0, bootstrap_samples=200)
    assert d["promote"] and d["difference"] == pytest.approx(0.2) and d["mcnemar_p"] < 1e-5 and d["n"] == 100
    assert d["reason"].startswith("promoted: the challenger is +20.0 points against the champion")
    d = decide(slightly, base, "champion", alpha=0.05, min_gain=0.0, bootstrap_samples=200)
    assert not d["promote"] and d["mcnemar_p"] == pytest.approx(0.25)  # 3 discordant pairs: 2 * 0.5^3
    assert "kept the champion" in d["reason"] and "not below 0.05" in d["reason"]
    d = decide(better, base, "sft", alpha=0.05, min_gain=25.0, bootstrap_samples=200)
    assert not d["promote"] and "below 25 points" in d["reason"]
    d = decide(base, better, "champion", alpha=0.05, min_gain=0.0, bootstrap_samples=200)  # significantly worse
    assert not d["promote"]


def test_apply_records_the_decision_and_leaves_a_losing_challengers_champion(tmp_path):
    reg = Registry(tmp_path / "reg")
    yes, no = {"promote": True, "reason": "r"}, {"promote": False, "reason": "r"}
    won = apply(reg, yes, _adapter(tmp_path, "a"), {"round": 1}, gated_against=None)
    assert won["promoted"] and won["champion"] == won["id"]
    lost = apply(reg, no, _adapter(tmp_path, "b"), {"round": 2}, gated_against=won["id"])
    assert not lost["promoted"] and lost["champion"] == won["id"]
    same = apply(reg, yes, tmp_path / "a", {"round": 3}, gated_against=won["id"])  # the champion again
    assert same == {**won, "promoted": False}
    assert reg.record(lost["id"])["decision"] == no
    # a decision taken against a champion that has changed since is not applied
    c = reg.register(_adapter(tmp_path, "c"))["id"]
    with pytest.raises(RegistryError, match="champion changed"):
        apply(reg, yes, tmp_path / "c", {}, gated_against=None)
    assert reg.champion_id() == won["id"]
    # an operator's rollback is not undone by a re-run that reaches the same adapter again
    reg.promote(c, expected=won["id"])
    assert reg.rollback() == won["id"]
    again = apply(reg, yes, tmp_path / "c", {}, gated_against=won["id"])
    assert not again["promoted"] and reg.champion_id() == won["id"]


@pytest.mark.parametrize("torn", ['{"event": "promoted", "id": "x', '{"event": "promoted", "decision": {"a": 1}'])
def test_a_torn_event_line_is_ignored_and_cut_off_by_the_next_writer(tmp_path, torn):
    reg = Registry(tmp_path / "reg")
    a = reg.register(_adapter(tmp_path, "a"))["id"]
    reg.promote(a)
    with open(reg.root / "events.jsonl", "a") as fh:  # a writer killed in the middle of its line
        fh.write(torn)
    again = Registry(tmp_path / "reg")
    assert again.champion_id() == a
    b = again.register(_adapter(tmp_path, "b"))["id"]
    again.promote(b)
    assert [e["event"] for e in Registry(tmp_path / "reg").history()] == ["registered", "promoted"] * 2
