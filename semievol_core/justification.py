"""Self-justification: the warm model settles the questions its collaborators disagree on (§3.4).

    justified = justify(backend, votes, responses, questions, warm_adapter, cfg, answer_type)
    # unlabeled_id, text, answer, parse_ok, num_tokens, H

For each question without consensus the warm model reads the question, its options and every
collaborator's reply (answer and reasoning) and answers once, greedily: this is a decision, not
another sample. Questions with consensus are not asked again. With collaboration.mode
"choice_logprobs" on a choice task, the decision is the most likely option letter after the
justification prompt, and H its NLL, just as the collaborators' answers were made.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .answers import LETTERS, canonical_answer, parse_answer
from .backends.base import Backend, Sampling
from .config import SemiEvolConfig
from .letter_scores import letter_reply, score_letters
from .prompts import Candidate, justification_chat

JUSTIFIED_COLUMNS = ["unlabeled_id", "text", "answer", "parse_ok", "num_tokens", "H"]


def justify(backend: Backend, votes: pd.DataFrame, responses: pd.DataFrame, questions: pd.DataFrame,
            warm_adapter: str | None, cfg: SemiEvolConfig, answer_type: str) -> pd.DataFrame:
    disputed = votes.loc[~votes["consensus"].astype(bool), "unlabeled_id"].tolist()
    if not disputed:
        return pd.DataFrame(columns=JUSTIFIED_COLUMNS)
    by_id = questions.set_index("id")
    llm = responses[responses["model"] != "knn"]  # the kNN vote has no reasoning to show
    grouped = {uid: g for uid, g in llm.groupby("unlabeled_id")}
    chats, options = [], []
    for uid in disputed:
        q = by_id.loc[uid]
        g = grouped.get(uid, llm.iloc[:0])
        cands = [Candidate(a if isinstance(a, str) else None, t) for a, t in zip(g["answer"], g["text"])]
        chats.append(justification_chat(q["question"], q["options"], cands, system=cfg.system_prompt))
        options.append(q["options"])
    if cfg.collaboration.mode == "choice_logprobs" and answer_type == "choice":
        return _justify_by_letters(backend, disputed, chats, options, warm_adapter)
    sampling = Sampling(n=1, temperature=0.0, max_tokens=cfg.justification.max_new_tokens, seed=cfg.seed)
    gens = backend.generate(chats, sampling, adapter=warm_adapter)
    rows = []
    for uid, opts, (g,) in zip(disputed, options, gens):
        parsed = parse_answer(g.text, answer_type, opts)
        rows.append((uid, g.text, canonical_answer(parsed, answer_type), parsed.ok, g.num_tokens, g.mean_nll))
    return pd.DataFrame(rows, columns=JUSTIFIED_COLUMNS)


def _justify_by_letters(backend, disputed, chats, options, warm_adapter) -> pd.DataFrame:
    rows = [None] * len(disputed)
    for i, lp in score_letters(backend, chats, options, adapter=warm_adapter):
        best = int(np.argmax(lp))
        text = letter_reply(LETTERS[:len(lp)], lp, best)
        rows[i] = (disputed[i], text, LETTERS[best], True, 1, float(-lp[best]))
    return pd.DataFrame(rows, columns=JUSTIFIED_COLUMNS)
