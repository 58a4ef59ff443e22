"""The transformers backend on the tiny random Llama: shapes, logprobs, seeds, stops, adapters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semievol_core.backends.base import Sampling
from semievol_core.backends.transformers_backend import TransformersBackend

CHATS = [
    [{"role": "user", "content": "Is the sentiment of 'profits rose' A. negative B. neutral C. positive?"}],
    [{"role": "user", "content": "Short one?"}],
    [{"role": "user", "content": "A much longer question " * 20 + "with options A. yes B. no"}],
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    be = TransformersBackend(str(tiny_model_dir), batch_size=2, progress=False)
    yield be
    be.unload()


def _reference_logprobs(be: TransformersBackend, chat, text_tokens: list[int]) -> list[float]:
    """Log-probs of the given continuation tokens by one full forward pass (no cache, no padding)."""
    model, tok = be._load()
    prompt = tok(be.render(chat), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + text_tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return [logp[len(prompt) + i - 1, t].item() for i, t in enumerate(text_tokens)]


def _greedy_tokens(be: TransformersBackend, chat, n: int) -> list[int]:
    """n greedy continuation tokens by plain forward passes (no cache, no padding)."""
    model, tok = be._load()
    ids = tok(be.render(chat), add_special_tokens=False)["input_ids"]
    start = len(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[start:]


def test_generate_returns_n_samples_with_one_logprob_per_token(backend):
    gens = backend.generate(CHATS, Sampling(n=3, temperature=1.0, max_tokens=12, seed=7))
    assert [len(g) for g in gens] == [3, 3, 3]
    for per_chat in gens:
        for g in per_chat:
            assert g.finish_reason in ("stop", "length")
            assert 1 <= g.num_tokens <= 12 or g.finish_reason == "stop"
            assert all(lp <= 0 for lp in g.token_logprobs)
            if g.finish_reason == "length":
                assert g.num_tokens == 12
    # n samples at temperature 1 from a random model are not all the same text.
    assert len({g.text for g in gens[0]}) > 1


def test_logprobs_are_the_models_own_distribution_despite_padding_and_cache(backend):
    """Batched, left-padded, KV-cached decoding must give the same token log-probs as one plain
    forward pass over prompt + continuation, and they must not be temperature-scaled."""
    tok = backend.tokenizer
    for temperature in (0.0, 1.7):
        gens = backend.generate(CHATS, Sampling(n=2, temperature=temperature, max_tokens=10, seed=3))
        checked = 0
        for chat, per_chat in zip(CHATS, gens):
            for g in per_chat:
                if temperature == 0:  # the reference's own tokens: greedy text ("\n" x 10) may not re-encode
                    ids = _greedy_tokens(backend, chat, g.num_tokens)
                    assert tok.decode(ids, skip_special_tokens=True) == g.text
                else:
                    ids = tok(g.text, add_special_tokens=False)["input_ids"]
                    if len(ids) != g.num_tokens:  # decode/encode round trip not exact: skip this one
                        continue
                ref = _reference_logprobs(backend, chat, ids)
                np.testing.assert_allclose(g.token_logprobs, ref, atol=2e-3)
                checked += 1
        # every greedy sample is checked; of the sampled ones at least one must round-trip
        assert checked == 2 * len(CHATS) if temperature == 0 else checked > 0, (temperature, checked)


def test_seeded_sampling_does_not_depend_on_batching(tiny_model_dir, backend):
    s = Sampling(n=2, temperature=1.0, max_tokens=10, seed=11)
    together = backend.generate(CHATS, s)
    alone = TransformersBackend(str(tiny_model_dir), batch_size=1, progress=False).generate(CHATS[1:2], s)
    reversed_ = backend.generate(CHATS[::-1], s)
    assert [g.text for g in together[1]] == [g.text for g in alone[0]]
    assert [g.text for g in together[0]] == [g.text for g in reversed_[2]]
    other_seed = backend.generate(CHATS, Sampling(n=2, temperature=1.0, max_tokens=10, seed=12))
    assert [g.text for g in other_seed[0]] != [g.text for g in together[0]]


def test_greedy_equals_argmax_continuation(backend):
    (g,), = backend.generate(CHATS[:1], Sampling(n=1, temperature=0.0, max_tokens=6))
    model, tok = backend._load()
    ids = tok(backend.render(CHATS[0]), add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(6):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    assert g.text == tok.decode(out, skip_special_tokens=True)


def test_stop_strings_cut_the_text(backend):
    gens = backend.generate(CHATS, Sampling(n=2, temperature=1.0, max_tokens=20, seed=1))
    # Pick a stop string that some sample contains, then check it is cut there.
    sample = next(g.text for per in gens for g in per if len(g.text) > 6)
    stop = sample[3:5]
    cut = backend.generate(CHATS, Sampling(n=2, temperature=1.0, max_tokens=20, seed=1, stop=(stop,)))
    for per_full, per_cut in zip(gens, cut):
        for full, c in zip(per_full, per_cut):
            assert stop not in c.text
            if stop in full.text:
                assert full.text.startswith(c.text) and c.finish_reason == "stop"


def test_choice_logprobs_match_a_plain_forward_pass(backend):
    lp = backend.choice_logprobs(CHATS, ["A", "B", "C"])
    assert lp.shape == (3, 3) and lp.dtype == np.float32 and np.isfinite(lp).all()
    model, tok = backend._load()
    from semievol_core.backends.base import letter_token_ids

    ids = letter_token_ids(tok, ["A", "B", "C"])
    for row, chat in enumerate(CHATS):
        prompt = tok(backend.render(chat, answer_prefix=True), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].float(), -1)[ids]
        np.testing.assert_allclose(lp[row], ref.numpy(), atol=1e-4)


def test_lora_adapters_switch_without_reloading(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        peft_model.save_pretrained(tmp_path / f"adapter{seed}")
        paths.append(str(tmp_path / f"adapter{seed}"))
    be = TransformersBackend(str(tiny_model_dir), progress=False)
    base_lp = be.choice_logprobs(CHATS, ["A", "B"])
    a1 = be.choice_logprobs(CHATS, ["A", "B"], adapter=paths[0])
    base_model = be._model.get_base_model()
    a2 = be.choice_logprobs(CHATS, ["A", "B"], adapter=paths[1])
    again_base = be.choice_logprobs(CHATS, ["A", "B"])
    again_a1 = be.choice_logprobs(CHATS, ["A", "B"], adapter=paths[0])
    assert be._model.get_base_model() is base_model  # switched, not reloaded
    assert not np.allclose(base_lp, a1, atol=1e-4) and not np.allclose(a1, a2, atol=1e-4)
    np.testing.assert_allclose(base_lp, again_base, atol=1e-5)
    np.testing.assert_allclose(a1, again_a1, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="not a peft adapter"):
        be.choice_logprobs(CHATS, ["A"], adapter=str(tmp_path))


def test_sampling_rejects_bad_values():
    for bad in (dict(n=0), dict(temperature=-1), dict(top_p=0), dict(max_tokens=0)):
        with pytest.raises(ValueError):
            Sampling(**bad)
    assert math.isnan(__import__("semievol_core.backends.base", fromlist=["Generation"]).Generation("").mean_nll)
