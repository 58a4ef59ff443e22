"""Self-justification: the warm model settles the questions its collaborators disagree on (§3.4).

    justified = justify(backend, votes, responses, questions, warm_adapter, cfg, answer_type)
    # unlabeled_id, text, answer, parse_ok, num_tokens, H

For each question without consensus the warm model reads the question, its options and every
collaborator's reply (answer and reasoning) and answers once, greedily: this is a decision, not
another sample. Questions with consensus are not asked again.
"""

from __future__ import annotations

import pandas as pd

from .answers import canonical_answer, parse_answer
from .backends.base import Backend, Sampling
from .config import SemiEvolConfig
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
    sampling = Sampling(n=1, temperature=0.0, max_tokens=cfg.justify_max_new_tokens, seed=cfg.seed)
    gens = backend.generate(chats, sampling, adapter=warm_adapter)
    rows = []
    for uid, opts, (g,) in zip(disputed, options, gens):
        parsed = parse_answer(g.text, answer_type, opts)
        rows.append((uid, g.text, canonical_answer(parsed, answer_type), parsed.ok, g.num_tokens, g.mean_nll))
    return pd.DataFrame(rows, columns=JUSTIFIED_COLUMNS)
