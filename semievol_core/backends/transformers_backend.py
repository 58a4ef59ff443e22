"""In-process transformers backend (CPU or GPU), with LoRA adapters switched by peft.

    from semievol_core.backends.transformers_backend import TransformersBackend
    be = TransformersBackend("smollm2-135m-instruct")          # bundled SmolLM2, float32 on CPU
    gens = be.generate(chats, Sampling(n=4, temperature=1.0, max_tokens=48, seed=0))
    lp = be.choice_logprobs(chats, ["A", "B", "C"], adapter="runs/x/warm_adapter")

Why a hand-written decode loop instead of `model.generate`:
- the n samples of a prompt share its prefill: the prompt is run once and its KV cache is expanded
  n ways (prefill is most of the FLOPs when prompts carry 3 demonstrations);
- rows that finish (EOS or a stop string) leave the batch at once, so a batch costs what its
  longest *live* row costs, and short `Answer: X` replies stop early;
- we record the log-prob of each emitted token under the model's own distribution (log-softmax of
  the raw logits, before temperature/top-p), which is what H in the paper needs;
- sampling noise comes from a generator seeded per (seed, prompt, sample index), so a prompt's
  samples do not depend on which batch or shard it landed in: re-running a shard is reproducible.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

from .base import ANSWER_PREFIX, Backend, Chat, Generation, Sampling, letter_token_ids


def _seed_for(seed: int, prompt: str, sample: int) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{sample}\x00{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


BASE_ADAPTER = "base-placeholder"  # the never-enabled adapter every loaded model carries (_wrap)

class TransformersBackend(Backend):
    name = "transformers"

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 16,
        token_budget: int = 16384,
        threads: int | None = None,
        progress: bool = True,
    ) -> None:
        """`batch_size` caps prompts per batch; `token_budget` caps padded prompt tokens x n per batch
        (memory for activations and KV cache). Neither changes results, only speed."""
        self.model_name = model
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.token_budget = token_budget
        self.threads = threads
        self.progress = progress
        self._model = None
        self._tokenizer = None
        self._adapters: dict[tuple, str] = {}  # (adapter path, file stamp) -> peft adapter name

    # ---- loading ---------------------------------------------------------------------------
    def _load(self):
        if self._model is not None:
            return self._model, self._tokenizer
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import quiet_loading, resolve_model

        if self.threads:
            torch.set_num_threads(self.threads)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.dtype == "auto":
            # bf16 matmuls are emulated (slow) on most CPUs: float32 there, bf16 on GPU.
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        else:
            dtype = getattr(torch, self.dtype)
        path = resolve_model(self.model_name)
        tok = AutoTokenizer.from_pretrained(path)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        quiet_loading()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        self._eos_ids = self._stop_token_ids(model, tok)
        model = self._wrap(model)
        model.eval()
        self._device = device
        self._model, self._tokenizer = model, tok
        return model, tok

    @staticmethod
    def _wrap(model):
        """The model inside peft's LoRA wrappers from the start, its one placeholder adapter never
        enabled (base calls run under disable_adapter). Measured: once peft wraps a model its base
        log-probs differ from the unwrapped model's in the last float32 bit (1 of 15 scores on the
        tiny Llama), so wrapping at the first adapter made a base answer depend on whether the
        process had loaded an adapter before, e.g. a Dask worker starting at shard 7 against the
        in-process run that loaded the warm adapter in shard 1."""
        from peft import LoraConfig, get_peft_model

        from ..training import peft_without_deprecation_warning

        with peft_without_deprecation_warning():
            return get_peft_model(model, LoraConfig(r=1, target_modules="all-linear"), adapter_name=BASE_ADAPTER)

    @staticmethod
    def _stop_token_ids(model, tok) -> set[int]:
        ids = set()
        for source in (model.generation_config.eos_token_id, tok.eos_token_id):
            if source is None:
                continue
            ids.update(source if isinstance(source, (list, tuple)) else [source])
        return ids

    @property
    def tokenizer(self):
        return self._load()[1]

    def unload(self) -> None:
        self._model = None
        self._tokenizer = None
        self._adapters = {}
        import gc

        gc.collect()

    def _use_adapter(self, adapter: str | None):
        """Return a context manager under which the model runs with `adapter` (None = base)."""
        import contextlib

        model, _ = self._load()
        if adapter is None:
            return model.disable_adapter()
        path = os.path.abspath(adapter)
        # Key on the weights file's stamp too: an adapter re-trained into the same directory
        # must be loaded afresh, not served stale from memory.
        weights = os.path.join(path, "adapter_model.safetensors")
        if not os.path.exists(weights):
            raise FileNotFoundError(f"{path} is not a peft adapter directory (no adapter_model.safetensors)")
        st = os.stat(weights)
        key = (path, st.st_mtime_ns, st.st_size)
        if key not in self._adapters:
            name = f"a{len(self._adapters)}"
            model.load_adapter(path, adapter_name=name)
            self._adapters[key] = name
        self._model.set_adapter(self._adapters[key])
        return contextlib.nullcontext()

    # ---- prompts -----------------------------------------------------------------------------
    def render(self, chat: Chat, answer_prefix: bool = False) -> str:
        text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return text + ANSWER_PREFIX if answer_prefix else text

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        # The chat template already writes any special tokens the model wants.
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _batches(self, lengths: Sequence[int], n: int) -> list[list[int]]:
        """Indices grouped into length-sorted batches that respect batch_size and token_budget."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches, current = [], []
        for i in order:
            longest = lengths[i]  # sorted ascending: the newest is the longest
            if current and (
                len(current) >= self.batch_size or (len(current) + 1) * longest * n > self.token_budget
            ):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _left_pad(self, seqs: Sequence[Sequence[int]]):
        import torch

        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s) :] = 1
        return ids.to(self._device), mask.to(self._device)

    def _progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="prompt", disable=not self.progress, leave=False)

    # ---- scoring -----------------------------------------------------------------------------
    def choice_logprobs(
        self, chats: Sequence[Chat], letters: Sequence[str], adapter: str | None = None
    ) -> np.ndarray:
        import torch

        model, tok = self._load()
        letter_ids = torch.tensor(letter_token_ids(tok, letters))
        seqs = self._encode([self.render(c, answer_prefix=True) for c in chats])
        out = np.zeros((len(chats), len(letters)), dtype=np.float32)
        with self._use_adapter(adapter), torch.inference_mode(), self._progress(len(chats), "score") as bar:
            for batch in self._batches([len(s) for s in seqs], 1):
                ids, mask = self._left_pad([seqs[i] for i in batch])
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self._model(
                    input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1
                ).logits[:, -1].float()
                logp = torch.log_softmax(logits, dim=-1)[:, letter_ids.to(logits.device)]
                out[batch] = logp.cpu().numpy()
                bar.update(len(batch))
        return out

    # ---- generation --------------------------------------------------------------------------
    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, adapter: str | None = None
    ) -> list[list[Generation]]:
        import torch

        self._load()
        prompts = [self.render(c) for c in chats]
        seqs = self._encode(prompts)
        results: list[list[Generation]] = [[] for _ in chats]
        with self._use_adapter(adapter), torch.inference_mode(), self._progress(len(chats), "generate") as bar:
            for batch in self._batches([len(s) for s in seqs], sampling.n):
                gens = self._generate_batch([seqs[i] for i in batch], [prompts[i] for i in batch], sampling)
                for i, g in zip(batch, gens):
                    results[i] = g
                bar.update(len(batch))
        return results

    def _generate_batch(self, seqs, prompts, sampling: Sampling) -> list[list[Generation]]:
        import torch
        from transformers import DynamicCache

        model, tok = self._model, self._tokenizer
        n = sampling.n
        ids, mask = self._left_pad(seqs)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                    use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        # Prefill once per prompt, then give each of its n samples a copy of the KV cache.
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
        next_pos = pos[:, -1].repeat_interleave(n) + 1
        rows = len(seqs) * n
        generators = None
        if sampling.temperature > 0:
            generators = []
            for p in prompts:
                for j in range(n):
                    g = torch.Generator(device=logits.device)
                    g.manual_seed(_seed_for(sampling.seed, p, j))
                    generators.append(g)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        finish = ["length"] * rows
        stop_cut: dict[int, int] = {}
        live = list(range(rows))  # row ids still decoding, in batch order
        for step in range(sampling.max_tokens):
            logp = torch.log_softmax(logits, dim=-1)
            chosen = self._sample(logits, sampling, [generators[r] for r in live] if generators else None)
            chosen_lp = logp.gather(1, chosen[:, None])[:, 0].tolist()
            chosen = chosen.tolist()
            keep = []
            for b, r in enumerate(live):
                t = chosen[b]
                if t in self._eos_ids:
                    finish[r] = "stop"
                    continue
                tokens[r].append(t)
                logprobs[r].append(chosen_lp[b])
                if sampling.stop:
                    text = tok.decode(tokens[r], skip_special_tokens=True)
                    hit = min((text.find(s) for s in sampling.stop if s in text), default=-1)
                    if hit >= 0:
                        finish[r], stop_cut[r] = "stop", hit
                        continue
                keep.append(b)
            if not keep or step == sampling.max_tokens - 1:
                break
            if len(keep) < len(live):
                # Finished rows leave the batch: their KV cache rows are dropped too.
                idx = torch.tensor(keep, device=logits.device)
                cache.batch_select_indices(idx)
                mask, next_pos = mask[idx], next_pos[idx]
                live = [live[b] for b in keep]
                chosen = [chosen[b] for b in keep]
            step_ids = torch.tensor(chosen, device=logits.device)[:, None]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=next_pos[:, None],
                        cache=cache, use_cache=True)
            logits = out.logits[:, -1].float()
            next_pos = next_pos + 1
        results = []
        for i in range(len(seqs)):
            gens = []
            for r in range(i * n, (i + 1) * n):
                text = tok.decode(tokens[r], skip_special_tokens=True)
                if r in stop_cut:
                    text = text[: stop_cut[r]]
                gens.append(Generation(text=text, token_logprobs=logprobs[r], finish_reason=finish[r]))
            results.append(gens)
        return results

    @staticmethod
    def _sample(logits, sampling: Sampling, generators):
        import torch

        if generators is None:  # temperature 0: greedy
            return logits.argmax(dim=-1)
        scaled = logits / sampling.temperature
        if sampling.top_p < 1.0:
            sorted_logits, order = scaled.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # Drop a token when the mass before it already reaches top_p (the top one always stays).
            drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= sampling.top_p
            drop = drop_sorted.scatter(1, order, drop_sorted)
            scaled = scaled.masked_fill(drop, float("-inf"))
        # Gumbel-max with per-row generators: row r's draw depends only on its own seed.
        uniform = torch.stack([torch.rand(scaled.shape[1], generator=g, device=scaled.device)
                               for g in generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
        return (scaled + gumbel).argmax(dim=-1)
