"""Deployment helpers: `python -m deployments.serve` serves every flow from one process; example run
configs in deployments/configs/. Work-pool deployments live in prefect.yaml at the project root.
"""
