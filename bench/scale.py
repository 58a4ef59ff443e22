"""Orchestration, I/O and memory of an evolve at 10k, 100k, 1M unlabeled rows, with a fake model.

    .venv/bin/python bench/scale.py --sizes 10000,100000        # one subprocess per size
    .venv/bin/python bench/scale.py --sizes 1000000 --merge     # add a size to the committed JSON

What is measured is everything but the model: the evolve flow (Prefect, the in-process runner)
walks the steps up to selection (prepare, warm training of a tiny random Llama on 64 labeled rows,
embedding, retrieval, the shard plan, generation, collect, vote, justification, selection) over a
synthetic unlabeled table. The backend answers every option-letter question with deterministic
log-probs from a hash of the prompt (FakeBackend), and the embedder gives a deterministic 384-d
vector per question (FakeEmbedder, MiniLM's width), so the time is the product's own.

Per size, in a fresh process (its synthetic table built beforehand, in another): wall time, peak
RSS (ru_maxrss of the flow's process; Prefect's temporary server is another process), the Prefect
task runs the flow made (one per step, one per shard of a fan-out), bytes written under the run
directory, and per step its wall time and the highest RSS sampled while it ran (every 0.2 s). Writes bench/results/scale.{json,md}.

Issue 13's bars: peak RSS at 1M <= 1.5x at 10k; time per row flat within +-30%; task runs at 1M
<= 500.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
OUT_JSON = HERE / "results" / "scale.json"
RUNS = HERE / "runs" / "scale"
DIM = 384  # all-MiniLM-L6-v2's width


# ------------------------------------------------------------------------------ the fake model
def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


def make_fakes():
    """FakeBackend and FakeEmbedder (built lazily: the parent process never imports numpy/torch)."""
    import numpy as np

    from semievol_core.backends.base import Backend, Generation

    class FakeBackend(Backend):
        """Option-letter log-probs from a hash of the prompt: deterministic, no model."""

        name = "fake"

        def choice_logprobs(self, chats, letters, adapter=None):
            out = np.empty((len(chats), len(letters)), dtype=np.float32)
            for i, chat in enumerate(chats):
                z = np.random.default_rng(_seed(chat[-1]["content"] + str(adapter))).normal(size=len(letters))
                out[i] = z - np.log(np.exp(z).sum())
            return out

        def generate(self, chats, sampling, adapter=None):
            return [[Generation("Answer: A", [-0.1, -0.2, -0.3])] * sampling.n for _ in chats]

        def unload(self):
            pass

    class FakeEmbedder:
        progress = False

        def embed(self, texts):
            v = np.stack([np.random.default_rng(_seed(t)).normal(size=DIM).astype(np.float32) for t in texts]) \
                if texts else np.zeros((0, DIM), np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        def unload(self):
            pass

    return FakeBackend(), FakeEmbedder()


# ------------------------------------------------------------------------------ data
def write_dataset(d: Path, n_unlabeled: int) -> Path:
    """64 labeled, n_unlabeled unlabeled (one part), 50 test rows of a 3-class sentiment task."""
    import pandas as pd

    from conftest import sentiment_rows
    from semievol_core.data import split_oracle, write_table

    if (d / "test.parquet").exists():
        return d
    write_table(pd.DataFrame(sentiment_rows(64)), d / "labeled.parquet", "labeled")
    unl, _ = split_oracle(pd.DataFrame(sentiment_rows(n_unlabeled, offset=10_000)))
    write_table(unl, d / "unlabeled" / "part-00000.parquet", "unlabeled")
    write_table(pd.DataFrame(sentiment_rows(50, offset=5_000)), d / "test.parquet", "test")
    return d


# ------------------------------------------------------------------------------ one size
def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_size(n: int) -> dict:
    """The flow over n unlabeled rows, in this process; returns the measurements."""
    os.environ["PREFECT_HOME"] = str(RUNS / "prefect-home")
    os.environ.pop("PREFECT_API_URL", None)
    from prefect import flow, get_run_logger

    from conftest import build_tiny_llama
    from flows.common import StepRunner
    from semievol_core import graph, steps
    from semievol_core.config import SemiEvolConfig
    from tasks.common import content_digest, ensure_gpu_limit

    backend, embedder = make_fakes()
    steps.get_backend = lambda cfg, teacher=False: backend
    steps.get_embedder = lambda cfg: embedder
    model = RUNS / "tiny-llama"
    if not (model / "config.json").exists():
        build_tiny_llama(model)
    data = write_dataset(RUNS / f"data-{n}", n)  # built by main() beforehand, in another process
    out = RUNS / f"run-{n}"
    if out.exists():  # a measurement starts cold: a run directory left from before would be all cache hits
        shutil.rmtree(out)
    cfg = SemiEvolConfig(model=str(model), collaboration={"mode": "choice_logprobs"},
                         train={"epochs": 1, "val_fraction": 0, "early_stopping_patience": None},
                         execution={"progress": False})

    current, peaks, stop = ["-"], {}, threading.Event()

    def sample():
        while not stop.wait(0.2):
            peaks[current[0]] = max(peaks.get(current[0], 0.0), _rss_mb())

    class Sampled(StepRunner):
        def __call__(self, step, *a):
            current[0] = step.name
            return super().__call__(step, *a)

        def many(self, step, elements):
            current[0] = step.name
            return super().many(step, elements)

    @flow(name="scale")
    def scale(data_dir: str, out_dir: str) -> dict:
        log = get_run_logger()
        ensure_gpu_limit(log)
        runner, timings = Sampled(cfg, out_dir, log), {}
        graph.execute(graph.plan([], pseudo_labels=True), graph.sources(data_dir, steps.Limits(), None), runner,
                      cfg, out_dir, timings, digest=content_digest)
        return {"timings": timings, "task_runs": len(runner.cached) + len(runner.executed),
                "executed": len(runner.executed)}

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    res = scale(str(data), str(out.resolve()))
    wall = time.perf_counter() - t0
    stop.set()
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and not f.is_symlink())
    return {"rows": n, "wall_seconds": round(wall, 1), "seconds_per_1k_rows": round(1000 * wall / n, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "task_runs": res["task_runs"], "executed": res["executed"], "bytes_written": written,
            "steps": {name: {"seconds": s, "peak_rss_mb": round(peaks.get(name, float("nan")), 1)}
                      for name, s in res["timings"].items()}}


# ------------------------------------------------------------------------------ report
def report(records: list[dict]) -> str:
    base = records[0]
    lines = ["| rows | wall s | s / 1k rows | vs smallest | peak RSS MB | vs smallest | task runs | MB written |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['rows']:,} | {r['wall_seconds']} | {r['seconds_per_1k_rows']} | "
                     f"{r['seconds_per_1k_rows'] / base['seconds_per_1k_rows']:.2f}x | {r['peak_rss_mb']} | "
                     f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x | {r['task_runs']} | "
                     f"{r['bytes_written'] / 1e6:.0f} |")
    names = list(records[-1]["steps"])
    lines += ["", "Per step, largest size: seconds and the highest RSS sampled while it ran (MB)", "",
              "| step | " + " | ".join(f"{r['rows']:,} s | RSS" for r in records) + " |",
              "|---|" + "---:|---:|" * len(records)]
    for name in names:
        cells = [f"{r['steps'].get(name, {}).get('seconds', '—')} | {r['steps'].get(name, {}).get('peak_rss_mb', '—')}"
                 for r in records]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one size
    ap.add_argument("--data", type=int, help=argparse.SUPPRESS)  # a child process: one size's dataset
    ap.add_argument("--merge", action="store_true", help="keep the committed JSON's other sizes")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one)))
        return
    if args.data:
        write_dataset(RUNS / f"data-{args.data}", args.data)
        return
    RUNS.mkdir(parents=True, exist_ok=True)
    records = json.loads(OUT_JSON.read_text())["records"] if args.merge and OUT_JSON.exists() else []
    for n in (int(x) for x in args.sizes.split(",")):
        # The synthetic table is built in a process of its own: building a million rows in pandas
        # would otherwise set the measured process's peak RSS.
        t_data = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--data", str(n)], check=True)
        data_s = time.perf_counter() - t_data
        proc = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                   # a fresh Prefect home migrates its database first (slow on 2 busy cores)
                                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        if proc.returncode:
            sys.exit(f"size {n} failed:\n{proc.stderr[-3000:]}")
        rec = {**json.loads(proc.stdout.strip().splitlines()[-1]), "dataset_write_seconds": round(data_s, 1)}
        records = sorted([r for r in records if r["rows"] != n] + [rec], key=lambda r: r["rows"])
        OUT_JSON.write_text(json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count(),
                                        "records": records}, indent=2) + "\n")
        (OUT_JSON.with_suffix(".md")).write_text(report(records))
        print(report(records), flush=True)


if __name__ == "__main__":
    main()
