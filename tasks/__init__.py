"""Prefect tasks wrapping the SemiEvol steps (method.py), inbox ingestion (ingest.py) and their shared
cache policy, retry rule and `gpu` slot (common.py).

    from tasks.method import train, generate
    from tasks.ingest import ingest_file
"""
