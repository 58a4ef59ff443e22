"""The one interface every inference backend implements.

    backend = make_backend("transformers", model="smollm2-135m-instruct")
    gens = backend.generate(chats, Sampling(n=4, temperature=1.0, max_tokens=48, seed=0))
    gens[i][j].text, gens[i][j].token_logprobs, gens[i][j].finish_reason
    lp = backend.choice_logprobs(chats, ["A", "B", "C"])   # (len(chats), 3) float32 log-probs
    backend.unload()

A chat is a list of {"role": ..., "content": ...} messages. Backends load lazily on first use and
free their memory on `unload()`. `adapter` names a LoRA adapter directory (peft format); None means
the base model.

Log-probabilities are those of the model's own distribution (log-softmax of the raw logits), not of
the temperature-scaled sampling distribution, so H = mean NLL is comparable across temperatures.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

Chat = list[dict[str, str]]

# Text appended after the chat template's generation prompt when scoring option letters: the
# letter is then the very next token. Shared by every backend so their scores agree.
ANSWER_PREFIX = "Answer:"


@dataclass(frozen=True)
class Sampling:
    """How to sample. `seed` makes a call reproducible; temperature 0 means greedy."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Sampling.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"Sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"Sampling.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Generation:
    """One sampled completion: its text, the log-prob of each emitted token, why it stopped."""

    text: str
    token_logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" (EOS or stop string) | "length" (hit max_tokens)

    @property
    def num_tokens(self) -> int:
        return len(self.token_logprobs)

    @property
    def mean_nll(self) -> float:
        """H = -(1/L) sum log p(token), in nats per token (paper Eq. 6). NaN for an empty text."""
        if not self.token_logprobs:
            return math.nan
        return -float(np.mean(self.token_logprobs))


class Backend(ABC):
    """Four methods: generate, choice_logprobs, unload (+ lazy load inside). See module docstring."""

    name: str = "base"

    @abstractmethod
    def generate(
        self, chats: Sequence[Chat], sampling: Sampling, adapter: str | None = None
    ) -> list[list[Generation]]:
        """Per chat, `sampling.n` generations (same order as `chats`)."""

    @abstractmethod
    def choice_logprobs(
        self, chats: Sequence[Chat], letters: Sequence[str], adapter: str | None = None
    ) -> np.ndarray:
        """log p(letter | chat rendered + ANSWER_PREFIX) for each letter: float32 (len(chats), len(letters)).

        One forward pass per chat, no sampling. Log-probs are over the full vocabulary (not
        renormalised over the letters), so rows need not sum to 1.
        """

    @abstractmethod
    def unload(self) -> None:
        """Free model memory. The backend reloads lazily if used again."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unload()


def letter_token_ids(tokenizer, letters: Sequence[str]) -> list[int]:
    """Token id of each option letter as the next token after ANSWER_PREFIX (i.e. " A", " B", ...).

    Found by tokenizing the whole `ANSWER_PREFIX + " " + letter` and taking the last token, so it is
    right for tokenizers that merge the space into the letter (Llama/SmolLM2: " A") and for those
    that do not. Raises if a letter does not end in a single token of its own.
    """
    prefix_ids = tokenizer(ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in letters:
        full = tokenizer(f"{ANSWER_PREFIX} {letter}", add_special_tokens=False)["input_ids"]
        if full[: len(prefix_ids)] != prefix_ids or len(full) != len(prefix_ids) + 1:
            raise ValueError(f"option letter {letter!r} is not a single token after {ANSWER_PREFIX!r}")
        ids.append(full[-1])
    return ids
