"""Answer multiple-choice questions from the model's log-probs of the option letters.

    for i, lp in score_letters(backend, chats, options, adapter=warm):   # lp[j] = log p(LETTERS[j])
        answer = LETTERS[int(np.argmax(lp))]
    letter_reply("ABC", lp, pick)   # "Answer: B  [letter log-probs: A=-2.103, B=-0.412, C=-1.871]"
    read_letter_reply(text)         # {"A": -2.103, "B": -0.412, "C": -1.871}

One backend.choice_logprobs call scores the same letters for every chat it gets, so questions are
scored in groups by their number of options: fewest options first, each group in question order.
Collaboration (the collaborators' answers), self-justification (the warm model's decision) and
evaluation (evaluation.mode "choice_logprobs") all answer this way.
"""

from __future__ import annotations

import re
from typing import Iterator, Sequence

import numpy as np

from .backends.base import Backend, Chat
from .schema import LETTERS


def score_letters(backend: Backend, chats: Sequence[Chat], options: Sequence[Sequence[str] | None],
                  adapter: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(i, log-probs of chat i's option letters A.. as its next token), one per chat, in the
    group order above. The log-probs are the backend's float32 row: over the full vocabulary, so
    they need not sum to 1. A question without options is a ValueError, raised before any call."""
    n_opts = np.array([len(o) if o is not None else 0 for o in options])
    for n in sorted(set(n_opts)):
        if n == 0:
            raise ValueError("answering by option-letter log-probs (choice_logprobs) needs options "
                             "on every question")
        idx = np.flatnonzero(n_opts == n)
        logp = backend.choice_logprobs([chats[i] for i in idx], list(LETTERS[:n]), adapter=adapter)
        for row, i in enumerate(idx):
            yield int(i), logp[row]


def letter_reply(letters: Sequence[str], logprobs: Sequence[float], pick: int) -> str:
    """The stored 'raw text' of an answer chosen from letter log-probs: the answer and the evidence."""
    shown = ", ".join(f"{l}={v:.3f}" for l, v in zip(letters, logprobs))
    return f"Answer: {letters[pick]}  [letter log-probs: {shown}]"


def read_letter_reply(text: str) -> dict[str, float]:
    """The letter log-probs a `letter_reply` text keeps (3 decimals), by letter; {} for any other text."""
    _, found, shown = text.partition("[letter log-probs: ")
    return {l: float(v) for l, v in re.findall(r"([A-Z])=(-?[0-9.]+)", shown)} if found else {}
