"""Tests of VLLMBackend (in-process vllm.LLM). vLLM lives in .venv-vllm, so the real test runs a
small script under that interpreter (with the `if __name__ == "__main__"` guard vLLM's engine
process needs) and checks the JSON it prints.

    pytest tests/test_backend_vllm.py            # the vLLM part skips without .venv-vllm
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

try:  # `tests` is a package only when the repo root is on sys.path (python -m pytest)
    from tests.vllm_server import REPO, VLLM_PYTHON, make_random_lora, vllm_available, vllm_env
except ImportError:  # plain `pytest` puts tests/ itself on sys.path
    from vllm_server import REPO, VLLM_PYTHON, make_random_lora, vllm_available, vllm_env

_VLLM_OK, _VLLM_WHY = vllm_available()

# Run under .venv-vllm/bin/python: argv = model_dir lora_dir. Prints one JSON line last.
SCRIPT = '''
import json
import sys

from semievol_core.backends.base import Sampling
from semievol_core.backends.vllm_backend import VLLMBackend

CHATS = [
    [{"role": "user", "content": "Say hi."}],
    [{"role": "user", "content": "Question: What is 2 + 2?\\nA) 3\\nB) 4\\nC) 5\\nReply with the letter."}],
]


def gens_json(gens):
    return [[{"text": g.text, "lps": g.token_logprobs, "finish": g.finish_reason} for g in row] for row in gens]


def main():
    model_dir, lora_dir, agreement_chats = sys.argv[1], sys.argv[2], sys.argv[3]
    backend = VLLMBackend(model_dir, dtype="float32", max_model_len=2048, max_lora_rank=16)
    with open(agreement_chats) as fh:
        greedy = backend.generate(json.load(fh), Sampling(n=1, temperature=0.0, max_tokens=24))
    sampling = Sampling(n=2, temperature=1.0, max_tokens=10, seed=42)
    first = backend.generate(CHATS, sampling)
    again = backend.generate(CHATS, sampling)
    base = backend.choice_logprobs(CHATS, ["A", "B", "C"])
    lora = backend.choice_logprobs(CHATS, ["A", "B", "C"], adapter=lora_dir)
    lora_gen = backend.generate(CHATS[:1], Sampling(n=1, temperature=0.0, max_tokens=4), adapter=lora_dir)
    backend.unload()
    print(json.dumps({
        "first": gens_json(first), "again": gens_json(again), "lora_gen": gens_json(lora_gen),
        "base": base.tolist(), "lora": lora.tolist(), "dtype": str(base.dtype),
        "unloaded": backend._llm is None, "greedy": [g[0].text for g in greedy],
    }))


if __name__ == "__main__":
    main()
'''


def test_module_imports_without_vllm():
    """The module and the constructor must not import vllm (the main venv has none)."""
    code = (
        "import sys\n"
        "from semievol_core.backends.vllm_backend import VLLMBackend\n"
        "VLLMBackend('smollm2-135m-instruct')\n"
        "assert 'vllm' not in sys.modules, 'vllm imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(REPO), timeout=120)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not _VLLM_OK, reason=_VLLM_WHY or "vllm unavailable")
def test_inprocess_generate_and_choice_logprobs_and_agreement(tmp_path, vllm_server, shared_data):
    """VLLMBackend for real, and the three generators' greedy answers on 50 FPB prompts agree
    (>= 90% of parsed answers), so a user can switch backends without changing results."""
    import pandas as pd

    from semievol_core.answers import parse_choice
    from semievol_core.backends.base import Sampling
    from semievol_core.backends.openai_http import OpenAIBackend
    from semievol_core.backends.transformers_backend import TransformersBackend
    from semievol_core.prompts import question_chat

    from semievol_core.models import resolve_model

    try:
        model_dir = Path(resolve_model("smollm2-135m-instruct"))
    except FileNotFoundError as exc:
        pytest.skip(f"SmolLM2 not available: {exc}")
    lora_dir = make_random_lora(model_dir, tmp_path / "lora_rand", r=8)
    fpb = pd.read_csv(shared_data / "fpb" / "test.csv").head(50)
    options = [json.loads(o) for o in fpb["options"]]
    chats = [question_chat(q, o) for q, o in zip(fpb["question"], options)]
    chats_file = tmp_path / "chats.json"
    chats_file.write_text(json.dumps(chats))
    script = tmp_path / "run_vllm_backend.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [str(VLLM_PYTHON), str(script), str(model_dir), str(lora_dir), str(chats_file)],
        cwd=str(tmp_path), env=vllm_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # vLLM logs to stdout as well: our JSON is the last line.
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    first = out["first"]
    assert [len(row) for row in first] == [2, 2]
    for gen in (g for row in first for g in row):
        assert gen["lps"] and all(math.isfinite(v) and v <= 0.0 for v in gen["lps"])
        if gen["finish"] == "length":
            assert len(gen["lps"]) == 10  # one logprob per emitted token
    assert first[0][0]["lps"] != first[0][1]["lps"]  # n samples are distinct draws
    assert [[g["text"] for g in row] for row in first] == [[g["text"] for g in row] for row in out["again"]]

    assert out["dtype"] == "float32"
    base, lora = out["base"], out["lora"]
    assert len(base) == 2 and all(len(row) == 3 for row in base)
    assert all(math.isfinite(v) and v <= 0.0 for row in base + lora for v in row)
    assert max(abs(a - b) for ra, rb in zip(base, lora) for a, b in zip(ra, rb)) > 0.05
    assert len(out["lora_gen"][0]) == 1
    assert out["unloaded"]

    greedy = Sampling(n=1, temperature=0.0, max_tokens=24)
    texts = {
        "vllm": out["greedy"],
        "transformers": [g[0].text for g in TransformersBackend(str(model_dir), progress=False).generate(chats, greedy)],
        "http": [g[0].text for g in OpenAIBackend(vllm_server.base_url, "smollm2", tokenizer=str(model_dir)).generate(chats, greedy)],
    }
    parsed = {k: [parse_choice(t, o).value for t, o in zip(v, options)] for k, v in texts.items()}
    for a, b in (("transformers", "vllm"), ("transformers", "http"), ("vllm", "http")):
        agree = sum(x == y for x, y in zip(parsed[a], parsed[b])) / len(chats)
        assert agree >= 0.9, f"{a} vs {b}: parsed greedy answers agree on only {agree:.0%}"
