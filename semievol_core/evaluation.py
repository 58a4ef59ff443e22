"""Evaluate a (model, adapter, demonstrations) system on a labeled test table (paper §4).

    preds = predict(backend, test, answer_type, adapter=None, demos_by_id=None, mode="generate")
    m = metrics(preds, answer_type)     # accuracy, 95% bootstrap CI, parse-failure rate, confusion

`mode="generate"` answers greedily in free text and parses the reply (a parse failure counts as
wrong and is reported separately); `mode="choice_logprobs"` takes the option letter the model
finds most likely as the next token after "Answer:" (choice tasks only; never fails to parse).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .answers import LETTERS, answers_equal, canonical_answer, parse_answer
from .backends.base import Backend, Sampling
from .letter_scores import score_letters
from .prompts import question_chat
from .stats import bootstrap_ci

PREDICTION_COLUMNS = ["id", "text", "answer", "parse_ok", "gold", "correct"]


def predict(backend: Backend, test: pd.DataFrame, answer_type: str, adapter: str | None = None,
            demos_by_id: dict | None = None, n_demos: int = 0, mode: str = "generate",
            max_new_tokens: int = 32, system: str | None = None) -> pd.DataFrame:
    chats = [question_chat(q, o, (demos_by_id or {}).get(i, ())[:n_demos], system=system)
             for i, q, o in zip(test["id"], test["question"], test["options"])]
    if mode == "choice_logprobs":
        if answer_type != "choice":
            raise ValueError("eval mode 'choice_logprobs' needs a multiple-choice test set")
        texts, answers = [""] * len(test), [None] * len(test)
        for i, lp in score_letters(backend, chats, test["options"].tolist(), adapter=adapter):
            answers[i] = LETTERS[int(np.argmax(lp))]
            texts[i] = "Answer: " + answers[i]
        parse_ok = [True] * len(test)
    elif mode == "generate":
        gens = backend.generate(chats, Sampling(n=1, temperature=0.0, max_tokens=max_new_tokens), adapter=adapter)
        texts = [g[0].text for g in gens]
        parsed = [parse_answer(t, answer_type, o) for t, o in zip(texts, test["options"])]
        answers = [canonical_answer(p, answer_type) for p in parsed]
        parse_ok = [p.ok for p in parsed]
    else:
        raise ValueError(f"unknown eval mode {mode!r}")
    gold = test["answer"].tolist()
    correct = [answers_equal(a, g, answer_type) for a, g in zip(answers, gold)]
    return pd.DataFrame({"id": test["id"].tolist(), "text": texts, "answer": answers,
                         "parse_ok": parse_ok, "gold": gold, "correct": correct},
                        columns=PREDICTION_COLUMNS)


def metrics(preds: pd.DataFrame, answer_type: str, bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    correct = preds["correct"].to_numpy(dtype=bool)
    lo, hi = bootstrap_ci(correct, samples=bootstrap_samples, seed=seed)
    out = {
        "accuracy": float(correct.mean()) if len(correct) else float("nan"),
        "ci_low": lo, "ci_high": hi, "n": int(len(correct)),
        "parse_failure_rate": float((~preds["parse_ok"].to_numpy(dtype=bool)).mean()) if len(preds) else 0.0,
    }
    if answer_type == "choice":
        # Rows: gold letter; columns: predicted letter ("none" for a parse failure).
        pred = preds["answer"].fillna("none")
        out["confusion"] = {g: {p: int(c) for p, c in row.items() if c}
                            for g, row in pd.crosstab(preds["gold"], pred).iterrows()}
    return out
