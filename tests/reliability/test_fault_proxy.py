"""The fault-injecting proxy (fault_proxy.py) between the OpenAI backend and the real vLLM test
server: 20% HTTP 5xx, attempts held past their timeout, truncated JSON, slow replies and one
connection reset mid-reply change nothing in what SemiEvol writes.

    pytest -q tests/reliability/test_fault_proxy.py   # skips without .venv-vllm; ~1 min on 2 idle
                                                      # cores after the server's start

proxy_run.py runs the method's server-facing steps (collaboration, self-justification, selection)
with `execution.backend: openai` twice without the proxy (the server must be deterministic for
the comparison to mean anything) and once through it. Who retries: the backend alone, each request
within its one deadline (execution.request_deadline_seconds); Prefect does not retry tasks, which
would re-send a whole shard's requests for one failure and stack its attempts on the backend's.
"""

from __future__ import annotations

import pytest

from fault_proxy import KINDS
from proxy_run import proxy_trial

try:  # `tests` is a package only when the repo root is on sys.path (python -m pytest)
    from tests.vllm_server import vllm_available
except ImportError:  # plain `pytest` puts tests/ itself on sys.path
    from vllm_server import vllm_available

_VLLM_OK, _VLLM_WHY = vllm_available()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not _VLLM_OK, reason=_VLLM_WHY or "vllm unavailable")
def test_faults_on_the_way_to_vllm_leave_the_pseudo_labels_as_a_clean_run_wrote_them(vllm_server, smollm2_dir,
                                                                                     tmp_path):
    res = proxy_trial(vllm_server.base_url, smollm2_dir, tmp_path, seed=0)
    assert res.deterministic, "two runs without the proxy differ: the server is not deterministic here"
    assert res.identical, f"through the proxy these tables differ from the clean run's: {res.differ}"
    assert all(res.injected.get(kind, 0) >= 1 for kind in KINDS), res.injected
    assert res.injected["reset"] == 1
    assert res.forwarded == res.requests - res.injected["5xx"] - res.injected["timeout"]  # those never reached it
