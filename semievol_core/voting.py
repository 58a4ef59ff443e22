"""Vote: where do the collaborators agree? (paper §3.4, the input to self-justification)

    votes = vote(responses)
    # unlabeled_id, n_responses, n_parsed, answers (list), majority, agreement, consensus

`answer` values in `responses` are already canonical (a letter, a canonical number string, or
normalised text), so equality is plain string equality. Consensus means every collaborator gave a
parsable answer and all are the same; an unparsable reply breaks consensus, because the
collaborators did not in fact agree. Majority ties go to the answer seen first in collaborator
order, which is deterministic.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

VOTE_SCHEMA = pa.schema([
    ("unlabeled_id", pa.large_string()), ("n_responses", pa.int64()), ("n_parsed", pa.int64()),
    ("answers", pa.list_(pa.string())), ("majority", pa.large_string()), ("agreement", pa.float64()),
    ("consensus", pa.bool_()),
])
VOTE_COLUMNS = VOTE_SCHEMA.names


def vote(responses: pd.DataFrame) -> pd.DataFrame:
    rows = []
    ordered = responses.sort_values(["unlabeled_id", "collaborator", "sample"], kind="stable")
    for uid, group in ordered.groupby("unlabeled_id", sort=True):
        answers = [a for a in group["answer"] if isinstance(a, str)]
        counts: dict[str, int] = {}
        for a in answers:
            counts[a] = counts.get(a, 0) + 1
        majority = max(counts, key=lambda a: counts[a]) if counts else None  # first max wins
        n = len(group)
        agreement = counts[majority] / n if majority is not None else 0.0
        consensus = majority is not None and len(answers) == n and len(counts) == 1
        rows.append((uid, n, len(answers), answers, majority, agreement, consensus))
    return pd.DataFrame(rows, columns=VOTE_COLUMNS)
