"""Prefect flows: `evolve` (the whole method), `evaluate` (one model on a test table), `ingest` (new
unlabeled logs), and the `semievol` command line (cli.py).

    from flows.evolve import evolve
    evolve("data/fpb", "runs/fpb")
"""
