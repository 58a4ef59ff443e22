"""Deployment helpers: example run configs in deployments/configs/, and `python -m deployments.serve`,
which serves the deployments of prefect.yaml (the project root; work-pool setup there) from one
process.
"""
