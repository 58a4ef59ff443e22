"""SemiEvolConfig (YAML, validation, cache keys), model resolution and the real sentence embedder."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from semievol_core.config import SemiEvolConfig
from semievol_core.embed import Embedder
from semievol_core.models import resolve_model


def test_config_defaults_are_the_papers():
    cfg = SemiEvolConfig()
    assert (cfg.k_demos, cfg.n_collaborators, cfg.temperature, cfg.theta) == (3, 4, 1.0, 0.5)
    assert cfg.final_training == "union" and cfg.selection_scope == "all"
    assert (cfg.train.lora_r, cfg.train.lora_alpha, cfg.train.lora_dropout) == (16, 32, 0.05)


def test_config_yaml_round_trip_and_clear_errors(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("theta: 0.3\ntrain:\n  epochs: 2\nexecution:\n  batch_size: 4\n")
    cfg = SemiEvolConfig.from_yaml(path)
    assert cfg.theta == 0.3 and cfg.train.epochs == 2 and cfg.execution.batch_size == 4
    (tmp_path / "again.yaml").write_text(cfg.to_yaml())
    assert SemiEvolConfig.from_yaml(tmp_path / "again.yaml") == cfg
    path.write_text("thetta: 0.3\n")
    with pytest.raises(ValidationError, match="thetta"):
        SemiEvolConfig.from_yaml(path)
    path.write_text("theta: 1.5\n")
    with pytest.raises(ValidationError, match="theta"):
        SemiEvolConfig.from_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        SemiEvolConfig.from_yaml(path)
    with pytest.raises(ValueError, match="cannot read"):
        SemiEvolConfig.from_yaml(tmp_path / "missing.yaml")


def test_result_key_ignores_execution_settings():
    a = SemiEvolConfig()
    b = SemiEvolConfig(execution={"batch_size": 64, "threads": 1, "progress": False})
    assert a.result_key() == b.result_key()
    assert a.result_key("theta") != SemiEvolConfig(theta=0.4).result_key("theta")
    assert a.result_key("model") == SemiEvolConfig(theta=0.4).result_key("model")


def test_resolve_model_paths(tmp_path, smollm2_dir):
    assert (smollm2_dir / "model.safetensors").exists() and (smollm2_dir / "config.json").exists()
    assert resolve_model("SmolLM2-135M-Instruct") == smollm2_dir  # cached: no second de-quantization
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))


def test_bundled_embedder_is_offline_normalised_and_semantic():
    emb = Embedder(progress=False)
    v = emb.embed(["Profits rose sharply this quarter.", "Earnings increased strongly.",
                   "The cat sat on the mat.", ""])
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    # Order-independent: the length sort inside must not leak into the result.
    np.testing.assert_allclose(emb.embed(["The cat sat on the mat.", "Profits rose sharply this quarter."]),
                               v[[2, 0]], atol=1e-5)
    assert emb.embed([]).shape == (0, 384)


def test_the_nightly_deployment_runs_the_recommended_recipe():
    """prefect.yaml cannot read a config file, so its `config` anchor repeats recommended.yaml:
    this keeps the two from drifting apart."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    deployed = yaml.safe_load((root / "prefect.yaml").read_text())["definitions"]["config"]
    recommended = yaml.safe_load((root / "deployments" / "configs" / "recommended.yaml").read_text())
    assert SemiEvolConfig.model_validate(deployed) == SemiEvolConfig.model_validate(recommended)


def test_the_nightly_rounds_and_the_weekly_refresh_differ_only_where_they_should():
    """evolve-nightly is the recommended recipe run as rounds; evolve-refresh the same, answering
    every row again; both validate as configs and write the same run directory."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((root / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in doc["deployments"]}
    nightly, refresh = (by_name[n]["parameters"] for n in ("evolve-nightly", "evolve-refresh"))
    base = SemiEvolConfig.model_validate(doc["definitions"]["config"])
    rounds = SemiEvolConfig.model_validate(nightly["config"])
    assert rounds == base.model_copy(update={"warm_from": "champion", "reuse_pseudo_labels": True,
                                             "final_training": "continue_union"})
    assert SemiEvolConfig.model_validate(refresh["config"]) == rounds.model_copy(update={"reuse_pseudo_labels": False})
    assert refresh["out_dir"] == nightly["out_dir"] and refresh["data_dir"] == nightly["data_dir"]
    assert by_name["evolve-refresh"]["schedules"][0]["cron"] == "0 4 * * 0"
