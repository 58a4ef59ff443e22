"""Prefect tasks wrapping the SemiEvol graph steps (step.py) and inbox ingestion (ingest.py), and what
they share: content digests, API keys from Prefect Secret blocks, the `gpu` slot (common.py).

    from tasks.step import step_task
    from tasks.ingest import ingest_file
"""
