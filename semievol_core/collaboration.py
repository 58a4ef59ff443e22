"""Collaborative learning: n collaborators answer every unlabeled question (paper §3.3).

    collabs = plan_collaborators(n=4, k=3, seed=0)            # e.g. warm-3shot, base-0shot, ...
    responses = generate_responses(backend, questions, demos_by_id, collabs, warm_adapter, cfg)

A collaborator is one configuration {base, warm model} x {0..k demonstrations}; a config may also
list {model: teacher} collaborators, answered by another model on `teacher_backend`
(collaboration.teacher, no adapter). Collaborators with
the same configuration are merged into one backend call with n samples, so their prompt is
prefilled once. Every raw reply is kept with its parsed answer and its mean token NLL H.

`questions` is a DataFrame with id, question, options (list or None); `demos_by_id` maps a
question id to its retrieved demonstrations, nearest first (a collaborator with j demos takes the
first j).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from .answers import canonical_answer, parse_answer
from .backends.base import Backend, Sampling
from .config import Collaborator, SemiEvolConfig
from .letter_scores import letter_reply, score_letters
from .prompts import LETTERS, Demo, question_chat

# One row per (question, collaborator sample), as responses files store it: a shard whose answers
# all failed to parse still writes `answer` as strings, so shards stream into one table.
RESPONSE_SCHEMA = pa.schema([
    ("unlabeled_id", pa.large_string()), ("collaborator", pa.large_string()), ("model", pa.large_string()),
    ("n_demos", pa.int64()), ("sample", pa.int64()), ("text", pa.large_string()), ("answer", pa.large_string()),
    ("parse_ok", pa.bool_()), ("parse_method", pa.large_string()), ("num_tokens", pa.int64()), ("H", pa.float64()),
    ("finish_reason", pa.large_string()),
])
RESPONSE_COLUMNS = RESPONSE_SCHEMA.names


def plan_collaborators(n: int, k: int, seed: int) -> list[Collaborator]:
    """Draw n distinct configurations from {base, warm} x {0..k} with a fixed seed.

    When n exceeds the 2(k+1) distinct configurations, the draw repeats configurations (their
    samples then differ only by sampling noise). Sorted so the plan reads the same for a seed.
    """
    space = [Collaborator(model=m, n_demos=j) for m in ("warm", "base") for j in range(k + 1)]
    rng = np.random.default_rng(seed)
    picks = list(rng.permutation(len(space))[: min(n, len(space))])
    while len(picks) < n:
        picks.append(int(rng.integers(len(space))))
    chosen = [space[i] for i in picks]
    return sorted(chosen, key=lambda c: (c.model != "warm", -c.n_demos))


def _stable_seed(*parts: object) -> int:
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _chats(questions: pd.DataFrame, demos_by_id: Mapping[str, Sequence[Demo]], n_demos: int,
           system: str | None) -> list:
    return [question_chat(q, opts, demos_by_id.get(uid, ())[:n_demos], system=system)
            for uid, q, opts in zip(questions["id"], questions["question"], questions["options"])]


def generate_responses(
    backend: Backend,
    questions: pd.DataFrame,
    demos_by_id: Mapping[str, Sequence[Demo]],
    collaborators: Sequence[Collaborator],
    warm_adapter: str | None,
    cfg: SemiEvolConfig,
    answer_type: str,
    on_progress: Callable[[float], None] | None = None,
    teacher_backend: Backend | None = None,
) -> pd.DataFrame:
    """One row per (question, collaborator sample): see RESPONSE_COLUMNS. on_progress(fraction)
    is called after each collaborator group (a group = one model and demo count). Teacher
    collaborators answer on `teacher_backend`."""
    rows: list[tuple] = []
    groups = Counter(collaborators)
    for done, (collab, count) in enumerate(sorted(groups.items(), key=lambda kv: kv[0].name), start=1):
        if done > 1 and on_progress is not None:
            on_progress((done - 1) / len(groups))
        adapter = warm_adapter if collab.model == "warm" else None
        if collab.model == "warm" and warm_adapter is None:
            raise ValueError("a warm collaborator needs the warm adapter")
        if collab.model == "teacher" and teacher_backend is None:
            raise ValueError("a teacher collaborator needs the teacher's backend (collaboration.teacher)")
        on = teacher_backend if collab.model == "teacher" else backend
        chats = _chats(questions, demos_by_id, collab.n_demos, cfg.system_prompt)
        seed = _stable_seed(cfg.seed, collab.name)
        if cfg.collaboration.mode == "choice_logprobs" and answer_type == "choice":
            rows += _answer_by_letters(on, questions, chats, collab, count, adapter, cfg, seed)
            continue
        sampling = Sampling(n=count, temperature=cfg.collaboration.temperature,
                            max_tokens=cfg.collaboration.max_new_tokens, seed=seed)
        gens = on.generate(chats, sampling, adapter=adapter)
        for uid, opts, samples in zip(questions["id"], questions["options"], gens):
            for s, g in enumerate(samples):
                parsed = parse_answer(g.text, answer_type, opts)
                rows.append((uid, collab.name, collab.model, collab.n_demos, s, g.text,
                             canonical_answer(parsed, answer_type), parsed.ok, parsed.method,
                             g.num_tokens, g.mean_nll, g.finish_reason))
    return pd.DataFrame(rows, columns=RESPONSE_COLUMNS)


def _answer_by_letters(backend, questions, chats, collab, count, adapter, cfg, seed) -> list[tuple]:
    """Sample each answer from the model's distribution over option letters (one forward pass).

    H is -log p(letter) under the model's full-vocabulary distribution: the NLL of the one answer
    token, the same quantity the paper averages over a free-text reply's tokens.
    """
    rows, temperature = [], cfg.collaboration.temperature
    for i, scores in score_letters(backend, chats, questions["options"].tolist(), adapter=adapter):
        uid = questions["id"].iloc[i]
        lp = scores.astype(np.float64)
        n = len(lp)
        letters = list(LETTERS[:n])
        # Sampling distribution: the letters' probabilities renormalised, at the temperature.
        if temperature > 0:
            z = (lp - lp.max()) / temperature
            p = np.exp(z) / np.exp(z).sum()
        rng = np.random.default_rng(_stable_seed(seed, uid))
        for s in range(count):
            pick = int(rng.choice(n, p=p)) if temperature > 0 else int(np.argmax(lp))
            text = letter_reply(letters, lp, pick)
            rows.append((uid, collab.name, collab.model, collab.n_demos, s, text, letters[pick],
                         True, "letter_logprobs", 1, float(-lp[pick]), "stop"))
    return rows


def knn_responses(knn_votes: pd.DataFrame) -> pd.DataFrame:
    """The neighbours' majority label as one more collaborator's vote (no LLM; H is NaN)."""
    return pd.DataFrame({
        "unlabeled_id": knn_votes["unlabeled_id"], "collaborator": "knn", "model": "knn",
        "n_demos": 0, "sample": 0,
        "text": knn_votes.apply(lambda r: f"Answer: {r['answer']}  [neighbour agreement {r['agreement']:.2f}]", axis=1),
        "answer": knn_votes["answer"], "parse_ok": True, "parse_method": "knn_vote",
        "num_tokens": 0, "H": math.nan, "finish_reason": "stop",
    }, columns=RESPONSE_COLUMNS)
