"""SemiEvolConfig (YAML, validation, cache keys), model resolution and the real sentence embedder."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from semievol_core.config import FinalConfig, RoundsConfig, SemiEvolConfig
from semievol_core.embed import Embedder
from semievol_core.models import resolve_model


def test_config_defaults_are_the_papers():
    cfg = SemiEvolConfig()
    collab = cfg.collaboration
    assert (cfg.propagation.k_demos, collab.n_collaborators, collab.temperature) == (3, 4, 1.0)
    assert cfg.selection.theta == 0.5
    assert cfg.final.training == "union" and cfg.selection.scope == "all"
    assert (cfg.train.lora_r, cfg.train.lora_alpha, cfg.train.lora_dropout) == (16, 32, 0.05)


def test_config_yaml_round_trip_and_clear_errors(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("selection:\n  theta: 0.3\ntrain:\n  epochs: 2\nexecution:\n  batch_size: 4\n")
    cfg = SemiEvolConfig.from_yaml(path)
    assert cfg.selection.theta == 0.3 and cfg.train.epochs == 2 and cfg.execution.batch_size == 4
    (tmp_path / "again.yaml").write_text(cfg.to_yaml())
    assert SemiEvolConfig.from_yaml(tmp_path / "again.yaml") == cfg
    path.write_text("selection:\n  thetta: 0.3\n")
    with pytest.raises(ValidationError, match="thetta"):
        SemiEvolConfig.from_yaml(path)
    path.write_text("selection:\n  theta: 1.5\n")
    with pytest.raises(ValidationError, match=r"selection\.theta"):
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
    c = SemiEvolConfig(selection={"theta": 0.4})
    assert a.result_key("selection") != c.result_key("selection")
    assert a.result_key("model") == c.result_key("model")
    assert a.result_key("selection.scope") == c.result_key("selection.scope")
    with pytest.raises(KeyError):
        a.result_key("execution")  # never part of a key


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
    assert rounds == base.model_copy(update={"rounds": RoundsConfig(warm_from="champion", reuse_pseudo_labels=True),
                                             "final": FinalConfig(training="continue_union")})
    assert SemiEvolConfig.model_validate(refresh["config"]) == rounds.model_copy(
        update={"rounds": RoundsConfig(warm_from="champion", reuse_pseudo_labels=False)})
    assert refresh["out_dir"] == nightly["out_dir"] and refresh["data_dir"] == nightly["data_dir"]
    assert by_name["evolve-refresh"]["schedules"][0]["cron"] == "0 4 * * 0"


# ------------------------------------------------------------------------------ the nesting by step
# deployments/configs/paper.yaml as it was written before the config was nested by step.
FLAT_PAPER = """\
model: smollm2-135m-instruct
k_demos: 3
n_collaborators: 4
temperature: 1.0
collaboration_mode: generate
theta: 0.5
selection_scope: all
final_training: union
eval_mode: generate
"""


def test_an_old_flat_config_loads_as_the_nested_one_with_one_note(tmp_path, caplog):
    from pathlib import Path

    flat = tmp_path / "paper.yaml"
    flat.write_text(FLAT_PAPER)
    nested = Path(__file__).resolve().parents[1] / "deployments" / "configs" / "paper.yaml"
    with caplog.at_level("WARNING", logger="semievol_core.config"):
        old = SemiEvolConfig.from_yaml(flat)
    assert old == SemiEvolConfig.from_yaml(nested)
    (note,) = [r.getMessage() for r in caplog.records]
    assert note.startswith("config: flat keys moved: ") and "\n" not in note
    for move in ("k_demos -> propagation.k_demos", "collaboration_mode -> collaboration.mode",
                 "theta -> selection.theta", "selection_scope -> selection.scope", "final_training -> final.training",
                 "eval_mode -> evaluation.mode"):
        assert move in note
    caplog.clear()
    SemiEvolConfig.from_yaml(nested)
    assert not caplog.records  # nothing moved, nothing said


def test_a_field_given_flat_and_nested_is_refused_naming_both():
    with pytest.raises(ValidationError, match=r"theta and selection\.theta both given"):
        SemiEvolConfig.model_validate({"theta": 0.3, "selection": {"theta": 0.4}})
    # a flat key beside other fields of its section moves in among them
    cfg = SemiEvolConfig.model_validate({"theta": 0.3, "selection": {"scope": "justified"}})
    assert (cfg.selection.theta, cfg.selection.scope) == (0.3, "justified")


def test_overrides_take_old_and_new_names_on_old_and_new_files(caplog):
    from semievol_core.config import apply_overrides

    with caplog.at_level("WARNING", logger="semievol_core.config"):
        for data in ({"theta": 0.5, "eval_mode": "choice_logprobs"}, {"selection": {"theta": 0.5}}):
            for pair in ("theta=0.3", "selection.theta=0.3"):
                cfg = SemiEvolConfig.model_validate(apply_overrides(dict(data), [pair]))
                assert cfg.selection.theta == 0.3, (data, pair)
    assert all(r.getMessage().count("\n") == 0 for r in caplog.records)
    assert "theta -> selection.theta" in caplog.records[0].getMessage()
    with pytest.raises(ValueError, match=r"run\.yaml: theta and selection\.theta both given"):
        apply_overrides({"theta": 0.5, "selection": {"theta": 0.4}}, [], source="run.yaml")
    cfg = SemiEvolConfig.model_validate(apply_overrides(
        {}, ["execution.backend=openai", "execution.base_url=http://gpu:8000/v1", "execution.backend.served_model=m"]))
    assert (cfg.execution.backend.name, cfg.execution.backend.base_url, cfg.execution.backend.served_model) == (
        "openai", "http://gpu:8000/v1", "m")


def test_backends_are_a_union_each_validated():
    from semievol_core import steps

    old = SemiEvolConfig(execution={"backend": "openai", "base_url": "http://gpu:8000/v1", "api_key": "env:K",
                                    "request_deadline_seconds": 7, "batch_size": 4})
    backend = old.execution.backend
    assert (backend.name, backend.base_url, backend.api_key, backend.request_deadline_seconds) == (
        "openai", "http://gpu:8000/v1", "env:K", 7)
    assert old == SemiEvolConfig(execution={"backend": {"name": "openai", "base_url": "http://gpu:8000/v1",
                                                        "api_key": "env:K", "request_deadline_seconds": 7},
                                            "batch_size": 4})
    with pytest.raises(ValidationError, match=r"execution\.backend\.openai\.base_url\s+Field required"):
        SemiEvolConfig(execution={"backend": {"name": "openai"}})
    with pytest.raises(ValidationError, match=r"execution\.backend\.transformers\.base_url\s+Extra inputs"):
        SemiEvolConfig(execution={"backend": {"name": "transformers", "base_url": "http://x"}})
    with pytest.raises(ValidationError, match=r"max_lora_rank 8 is below train\.lora_r 16"):
        SemiEvolConfig(execution={"backend": {"name": "vllm", "max_lora_rank": 8}})
    SemiEvolConfig(execution={"backend": {"name": "vllm", "max_lora_rank": 8}}, train={"lora_r": 8})
    vllm = SemiEvolConfig(execution={"backend": {"name": "vllm", "max_lora_rank": 32}})
    assert steps.backend_options(vllm) == ("smollm2-135m-instruct", {"max_lora_rank": 32})


def test_a_teacher_collaborator_needs_its_model_and_its_model_a_collaborator():
    from semievol_core import steps

    teach = [{"model": "warm", "n_demos": 0}, {"model": "teacher", "n_demos": 0}]
    with pytest.raises(ValidationError, match=r"teacher-0shot ask the teacher: set collaboration\.teacher"):
        SemiEvolConfig(collaboration={"collaborators": teach})
    with pytest.raises(ValidationError, match=r"collaboration\.teacher 'big' is asked by no step"):
        SemiEvolConfig(collaboration={"teacher": "big"})
    with pytest.raises(ValidationError, match=r"justification ask the teacher"):
        SemiEvolConfig(justification={"model": "teacher"})
    SemiEvolConfig(justification={"model": "teacher"}, collaboration={"teacher": "big"})
    cfg = SemiEvolConfig(collaboration={"collaborators": teach, "teacher": "big"},
                         execution={"teacher_backend": {"name": "openai", "base_url": "http://gpu:8000/v1",
                                                        "served_model": "llama-8b"}})
    # The teacher's name decides its answers (cache keys); where it is served does not.
    served_elsewhere = cfg.model_copy(update={"execution": SemiEvolConfig().execution})
    other_teacher = SemiEvolConfig(collaboration={"collaborators": teach, "teacher": "bigger"})
    assert _config_keys(cfg) == _config_keys(served_elsewhere)
    # A teacher's name reaches a generation shard's key only when it answers (steps.teacher_key);
    # a teacher that only judges keys justification alone, so turning it on re-answers nothing.
    assert steps.teacher_key(cfg) == "teacher:big" and steps.teacher_key(other_teacher) == "teacher:bigger"
    judge = SemiEvolConfig(justification={"model": "teacher"}, collaboration={"teacher": "big"})
    other_judge = SemiEvolConfig(justification={"model": "teacher"}, collaboration={"teacher": "bigger"})
    assert steps.teacher_key(judge) == steps.teacher_key(SemiEvolConfig()) == ""
    assert _config_keys(judge)["generate"] == _config_keys(SemiEvolConfig())["generate"]
    assert _config_keys(judge)["justify"] != _config_keys(other_judge)["justify"]
    with pytest.raises(ValidationError, match=r"both vllm: two engines"):
        SemiEvolConfig(justification={"model": "teacher"}, collaboration={"teacher": "big"},
                       execution={"backend": {"name": "vllm"}, "teacher_backend": {"name": "vllm"}})
    # Added after runs were cached: at their old-behaviour values they stay out of every key, so
    # an upgrade re-answers nothing; set, they enter generation's and justification's keys.
    plain = SemiEvolConfig()
    assert "teacher" not in plain.result_key("collaboration") and "model" not in plain.result_key("justification")
    assert plain.result_key("collaboration.teacher", "justification") == plain.result_key("justification")
    judged = SemiEvolConfig(justification={"model": "teacher"}, collaboration={"teacher": "big"})
    assert _config_keys(judged)["justify"] != _config_keys(SemiEvolConfig())["justify"]
    model, opts = steps.backend_options(cfg, teacher=True)
    assert (model, opts["base_url"], opts["tokenizer"]) == ("llama-8b", "http://gpu:8000/v1", "big")
    assert steps.backend_options(cfg)[0] == "smollm2-135m-instruct"  # the run's own model stays in process
    with pytest.raises(ValueError, match="no collaboration.teacher is configured"):
        steps.backend_options(SemiEvolConfig(), teacher=True)
    unset = cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"teacher_backend": cfg.execution
                           .teacher_backend.model_copy(update={"api_key": "env:SEMIEVOL_NO_SUCH_KEY"})})})
    with pytest.raises(ValueError, match=r"^execution\.teacher_backend\.api_key 'env:SEMIEVOL_NO_SUCH_KEY': environment"):
        steps.backend_options(unset, teacher=True)


def _config_keys(cfg: SemiEvolConfig) -> dict[str, str]:
    from semievol_core import graph

    return {s.name: cfg.result_key(*s.config) for s in graph.STEPS + graph.EVALUATION if s.config}


@pytest.mark.parametrize("change,changed", [
    ({"selection": {"theta": 0.3}}, {"select"}),
    ({"execution": {"batch_size": 2, "threads": 1, "progress": False, "concurrency": 1}}, set()),
    ({"rounds": {"reuse_pseudo_labels": True}}, {"pick-warm"}),
    ({"rounds": {"warm_from": "champion"}}, {"pick-warm"}),
    ({"collaboration": {"knn_collaborator": True}}, {"collect"}),  # the kNN vote joins after generation
    ({"collaboration": {"temperature": 0.7}}, {"generate", "collect"}),
    ({"collaboration": {"mode": "choice_logprobs"}}, {"generate", "collect", "justify"}),
    ({"justification": {"max_new_tokens": 8}}, {"justify"}),
    ({"propagation": {"embedder": "other"}}, {"embed-labeled", "embed-unlabeled", "embed-test",
                                              "retrieve-unlabeled", "retrieve-test"}),
    ({"final": {"pseudo_weight": 0.5}}, {"train-final"}),
    ({"train": {"epochs": 2}}, {"train-warm", "train-final"}),
    ({"gate": {"alpha": 0.01}}, {"gate"}),
    # the bootstrap is the scores' alone: no prediction is made again
    ({"evaluation": {"bootstrap_samples": 200}}, {"score-vanilla", "score-rag_knn", "score-knn_vote",
                                                  "score-sft", "score-semievol", "evaluate-champion",
                                                  "evaluate-model", "gate"}),
    ({"evaluation": {"max_new_tokens": 8}}, {"evaluate-vanilla", "evaluate-rag_knn", "evaluate-knn_vote",
                                             "evaluate-sft", "evaluate-semievol", "score-vanilla", "score-rag_knn",
                                             "score-knn_vote", "score-sft", "score-semievol", "evaluate-champion",
                                             "evaluate-model", "gate"}),
])
def test_a_step_key_follows_the_sections_the_step_reads(change, changed):
    base = _config_keys(SemiEvolConfig())
    other = _config_keys(SemiEvolConfig(**change))
    assert {name for name in base if base[name] != other[name]} == changed
