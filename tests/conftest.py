"""Shared fixtures: a tiny randomly initialised Llama (mechanics, seconds) and the real SmolLM2.

The tiny model uses SmolLM2's tokenizer and chat template (so prompts render exactly as in
production) with 2 layers of width 64: ~3.3M parameters, almost all in the embedding.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "semievol"


def build_tiny_llama(out_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from semievol_core.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from semievol_core.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def vllm_server(smollm2_dir, tmp_path_factory):
    """One real vLLM OpenAI server per test session (startup ~35 s): SmolLM2 served as "smollm2"
    plus a random LoRA served as "rand". Skips when .venv-vllm is missing."""
    try:
        from tests.vllm_server import smollm2_with_lora, vllm_available
    except ImportError:
        from vllm_server import smollm2_with_lora, vllm_available
    ok, why = vllm_available()
    if not ok:
        pytest.skip(why or "vllm unavailable")
    server = smollm2_with_lora(smollm2_dir, tmp_path_factory.mktemp("vllm"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


# A small sentiment dataset we write ourselves (not the shared benchmark files): enough rows for
# the method's mechanics on the tiny model, with an oracle for pseudo-label accuracy.
_SUBJECTS = ["Sales", "Operating profit", "Net income", "Revenue", "Earnings", "Orders", "Margins", "Exports"]
_VERBS = {"A": ["fell sharply", "dropped", "declined"], "B": ["was unchanged", "stayed flat", "held steady"],
          "C": ["rose strongly", "increased", "grew"]}
SENTIMENT_OPTIONS = ["negative", "neutral", "positive"]


def sentiment_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        label = "ABC"[i % 3]
        subject = _SUBJECTS[i % len(_SUBJECTS)]
        verb = _VERBS[label][(i // 3) % 3]
        rows.append({"id": f"s{i:04d}",
                     "question": f"What is the sentiment of: {subject} {verb} in quarter {i % 4 + 1} of {2000 + i}?",
                     "options": SENTIMENT_OPTIONS, "answer": label, "metadata": "{}"})
    return rows


def write_sentiment_dataset(data_dir: Path, n_labeled=12, n_unlabeled=10, n_test=9) -> Path:
    import pandas as pd

    from semievol_core.data import split_oracle, write_table

    write_table(pd.DataFrame(sentiment_rows(n_labeled)), data_dir / "labeled.parquet", "labeled")
    unl, oracle = split_oracle(pd.DataFrame(sentiment_rows(n_unlabeled, offset=1000)))
    write_table(unl, data_dir / "unlabeled" / "part-00000.parquet", "unlabeled")
    write_table(oracle, data_dir / "oracle.parquet", "oracle")
    write_table(pd.DataFrame(sentiment_rows(n_test, offset=2000)), data_dir / "test.parquet", "test")
    return data_dir


@pytest.fixture
def sentiment_dataset(tmp_path) -> Path:
    return write_sentiment_dataset(tmp_path / "data")


def failing_parquet_writes(monkeypatch, fail) -> None:
    """Make every Parquet write of semievol_core.data call fail(table, where) instead: both
    pq.write_table and the ParquetWriter that tables go through (row groups, part sizes)."""
    import semievol_core.data as data

    class FailingWriter:
        def __init__(self, where, schema):
            self.where = where

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write_table(self, table, **kwargs):
            fail(table, self.where)

    monkeypatch.setattr(data.pq, "write_table", fail)
    monkeypatch.setattr(data.pq, "ParquetWriter", FailingWriter)
