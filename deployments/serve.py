"""Serve all SemiEvol flows from this one process: schedules and UI-triggered runs, no work pool.

    prefect server start &                                  # or PREFECT_API_URL of a running server
    python -m deployments.serve [--data data/fpb] [--inbox inbox] [--runs runs]

The same three deployments as prefect.yaml (nightly evolve, ingest every 15 min, ad-hoc evaluate),
with the same parameters, but executed by this process (`prefect.serve`) instead of a worker: the
simplest setup for one machine. Stop with Ctrl-C; the schedules pause until it serves again.
At most `--limit` flow runs execute at once (default 1: they share one machine, and the `gpu`
concurrency limit serializes the model steps anyway).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from prefect import serve

from flows.evaluate import evaluate
from flows.evolve import evolve
from flows.ingest import ingest

CONFIG = Path(__file__).resolve().parent / "configs" / "recommended.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/fpb", help="dataset directory (default: data/fpb)")
    p.add_argument("--inbox", default="inbox", help="inbox of new unlabeled files (default: inbox)")
    p.add_argument("--runs", default="runs", help="where run directories go (default: runs)")
    p.add_argument("--config", default=str(CONFIG), help="YAML run config (default: recommended)")
    p.add_argument("--limit", type=int, default=1, help="flow runs at once (default: 1)")
    args = p.parse_args()
    config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    runs = Path(args.runs)
    serve(
        evolve.to_deployment(name="evolve-nightly", cron="0 2 * * *", tags=["semievol"],
                             concurrency_limit=1,
                             parameters={"data_dir": args.data, "out_dir": str(runs / "nightly"), "config": config}),
        ingest.to_deployment(name="ingest-inbox", interval=900, tags=["semievol"],
                             parameters={"inbox": args.inbox, "data_dir": args.data}),
        evaluate.to_deployment(name="evaluate-adhoc", tags=["semievol"],
                               parameters={"test": args.data, "out_dir": str(runs / "evaluate"),
                                           "adapter": None, "config": config}),
        limit=args.limit,
    )


if __name__ == "__main__":
    main()
