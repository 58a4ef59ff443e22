"""SemiEvol's server-facing steps against a real vLLM server, straight and through the fault proxy
(fault_proxy.py), compared table by table (issue 12).

    from proxy_run import proxy_trial
    result = proxy_trial(server_url, model_dir, work, seed=0)   # server: smollm2 + the LoRA "rand"
    result.deterministic   # two runs without the proxy wrote the same tables
    result.identical       # the run through the proxy wrote them too
    result.injected        # {"5xx": 11, "timeout": 3, ...}: faults the proxy injected, by kind

In process, with `execution.backend: openai`: the graph's steps from prepare to select (embed,
retrieve, generate per shard, collect, vote, justify per shard, select), so every request the
method sends (collaborators' answers and self-justification) goes to the server; the server's LoRA
"rand" is the warm model (its weights are served there, not trained here: train-warm and pick-warm
are left out, and reuse_pseudo_labels keeps the warm model's files out of the shard keys).
Deterministic by construction: collaboration.mode choice_logprobs asks for the option letters'
logprobs at temperature 0 and samples letters locally with seeded generators, and one request at a
time (concurrency 1) keeps the server's batches, and the proxy's draw of fates, in one order.

The retries happen in one layer, the OpenAI backend (semievol_core/backends/openai_http.py): each
request is retried on 5xx, timeouts, bad JSON and resets until it succeeds or its one deadline
(execution.request_deadline_seconds) would pass. The Prefect flow does not retry its tasks on top:
a task retry would re-send every request of a whole shard for the one that failed, and stack its
attempts on the backend's, multiplying the time a dead server takes to fail the run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from fault_proxy import FaultProxy

ATTEMPT_TIMEOUT = 10.0   # seconds: execution.request_timeout_seconds; a reply from vLLM on 2 busy cores fits
WARM = "rand"            # the served LoRA standing in for the warm model
STEPS = ("prepare", "plan-shards", "embed-labeled", "embed-unlabeled", "retrieve-unlabeled", "generate", "collect",
         "vote", "justify", "collect-justified", "select")
TABLES = ("responses.parquet", "votes.parquet", "justified.parquet", "pseudo_labels.parquet")


@dataclass
class ProxyResult:
    deterministic: bool = False
    identical: bool = False
    injected: dict = field(default_factory=dict)  # kind -> faults injected
    requests: int = 0                               # requests the proxy received
    forwarded: int = 0                              # of which sent on to the server
    differ: list[str] = field(default_factory=list)  # tables unlike the first clean run's
    seconds: float = 0.0

    def record(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def config(base_url: str, model_dir: Path):
    from semievol_core.config import SemiEvolConfig

    return SemiEvolConfig(
        model=str(model_dir), collaboration={"mode": "choice_logprobs"}, rounds={"reuse_pseudo_labels": True},
        execution={"backend": {"name": "openai", "base_url": base_url, "served_model": "smollm2",
                               "request_timeout_seconds": ATTEMPT_TIMEOUT},
                   "concurrency": 1, "progress": False, "shard_size": 4})


def server_steps(base_url: str, model_dir: Path, data: Path, out: Path) -> Path:
    """STEPS in process against `base_url`; returns the run directory `out`."""
    from semievol_core import graph, steps
    from semievol_core.steps import Limits

    values = {**graph.sources(data, Limits(), None), "warm": WARM}
    cfg = config(base_url, model_dir)
    with steps.run_dir_lock(out):
        graph.execute([graph.BY_NAME[name] for name in STEPS], values, graph.InProcess(cfg, out), cfg, out)
    steps.unload_backends()  # closes this base URL's client: the next run opens its own
    return out


def _differ(a: Path, b: Path) -> list[str]:
    return [t for t in TABLES if not pq.read_table(a / t).equals(pq.read_table(b / t))]


def proxy_trial(server_url: str, model_dir: Path, work: Path, seed: int = 0) -> ProxyResult:
    """Two clean runs, then one through a FaultProxy(seed); see the module docstring."""
    from conftest import write_sentiment_dataset

    t0 = time.monotonic()
    # 6 questions x 4 collaborators: enough requests for every fault kind's first (fault_proxy.FIRST_WITHIN)
    data = write_sentiment_dataset(work / "data", n_unlabeled=6)
    clean = server_steps(server_url, model_dir, data, work / "clean")
    again = server_steps(server_url, model_dir, data, work / "again")
    with FaultProxy(server_url, seed=seed, attempt_timeout=ATTEMPT_TIMEOUT) as proxy:
        proxied = server_steps(proxy.base_url, model_dir, data, work / "proxied")
    res = ProxyResult(injected=dict(proxy.injected), requests=proxy.requests, forwarded=proxy.forwarded,
                      differ=_differ(clean, proxied))
    res.deterministic = not _differ(clean, again)
    res.identical = res.deterministic and not res.differ
    res.seconds = time.monotonic() - t0
    return res
