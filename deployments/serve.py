"""Serve the deployments of prefect.yaml from this one process: schedules and UI-triggered runs,
no work pool.

    prefect server start &                                  # or PREFECT_API_URL of a running server
    python -m deployments.serve [--data data/fpb] [--inbox inbox] [--runs runs] [--limit 1]

Every deployment in prefect.yaml is served as declared there (entrypoint, name, description, tags,
schedules, concurrency limit, parameters), so the two cannot drift apart; only the executor
differs: this process (`prefect.serve`) instead of a worker of the work pool, the simplest setup
for one machine. Run it from the project root, like `prefect deploy`: paths in the parameters are
relative to it. The work pool's environment (job_variables.env, e.g. HF_HUB_OFFLINE) is set for
the flow runs unless this shell sets it already.

The flags override the parameters that name those paths: --data the dataset (`data_dir`, and
evaluate's `test`), --inbox the inbox (`inbox`), --runs where run directories go (each `out_dir`
keeps its own name: runs/nightly -> <runs>/nightly), --config the run config (`config`, a YAML
SemiEvolConfig; each deployment keeps its own `rounds` section, so the nightly rounds and the
weekly refresh stay what they are). At most `--limit` flow runs execute at once (default 1: they share one machine,
and the `gpu` concurrency limit serializes the model steps anyway). Stop with Ctrl-C; the
schedules pause until it serves again.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Schedule

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
# flag -> the flow parameters holding that path (a deployment without such a parameter is left as is)
PATH_PARAMETERS = {"data": ("data_dir", "test"), "inbox": ("inbox",)}


def load_flow(entrypoint: str):
    """'flows/evolve.py:evolve' -> the flow object, imported as the module flows.evolve (the same
    module the flows' own imports use, not a second copy loaded from the file path)."""
    path, name = entrypoint.rsplit(":", 1)
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def schedule(entry: dict[str, Any]) -> Schedule:
    """One prefect.yaml `schedules` entry (cron, interval in seconds or rrule; timezone,
    anchor_date, day_or, active, parameters, slug) as a prefect.schedules.Schedule."""
    fields = dict(entry)
    if isinstance(fields.get("interval"), (int, float)):
        fields["interval"] = datetime.timedelta(seconds=fields["interval"])
    if isinstance(fields.get("anchor_date"), str):
        fields["anchor_date"] = datetime.datetime.fromisoformat(fields["anchor_date"])
    return Schedule(**fields)


def concurrency(value: int | dict | None) -> int | ConcurrencyLimitConfig | None:
    """prefect.yaml's concurrency_limit: a number, or {limit, collision_strategy, ...}."""
    return ConcurrencyLimitConfig(**value) if isinstance(value, dict) else value


def parameters(declared: dict[str, Any], data: str | None = None, inbox: str | None = None,
               runs: str | None = None, config: dict | None = None) -> dict[str, Any]:
    """A deployment's parameters with the overrides given (None keeps prefect.yaml's value)."""
    params = dict(declared)
    for flag, value in (("data", data), ("inbox", inbox)):
        for name in PATH_PARAMETERS[flag]:
            if value is not None and name in params:
                params[name] = value
    if runs is not None and params.get("out_dir"):
        name = Path(params["out_dir"]).name
        if name in ("", ".."):  # "runs/.." or "/": no name of its own, and <runs>/.. would leave --runs
            raise ValueError(f"out_dir {params['out_dir']!r}: give the run directory a name to keep under --runs")
        params["out_dir"] = str(Path(runs) / name)
    if config is not None and "config" in params:
        # The deployment's own `rounds` section stays: it is what makes evolve-nightly a round and
        # evolve-refresh a refresh, and one --config file for all would make them the same run.
        declared_rounds = (params["config"] or {}).get("rounds") if isinstance(params["config"], dict) else None
        params["config"] = {**config, "rounds": declared_rounds} if declared_rounds is not None else config
    return params


def deployments(spec: dict[str, Any], **overrides: Any) -> list[RunnerDeployment]:
    """The `deployments` of a loaded prefect.yaml, ready for prefect.serve (overrides: parameters)."""
    out = []
    for dep in spec["deployments"]:
        out.append(load_flow(dep["entrypoint"]).to_deployment(
            name=dep["name"],
            description=dep.get("description"),
            tags=dep.get("tags"),
            schedules=[schedule(s) for s in dep.get("schedules") or []],
            concurrency_limit=concurrency(dep.get("concurrency_limit")),
            parameters=parameters(dep.get("parameters") or {}, **overrides),
        ))
    return out


def pool_env(spec: dict[str, Any]) -> dict[str, str]:
    """The environment prefect.yaml gives the work pool's flow runs (every deployment's)."""
    env: dict[str, str] = {}
    for dep in spec["deployments"]:
        pool = dep.get("work_pool") or {}
        env.update({k: str(v) for k, v in ((pool.get("job_variables") or {}).get("env") or {}).items()})
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="dataset directory (default: prefect.yaml's)")
    p.add_argument("--inbox", help="inbox of new unlabeled files (default: prefect.yaml's)")
    p.add_argument("--runs", help="where run directories go (default: prefect.yaml's, runs/)")
    p.add_argument("--config", help="YAML run config (default: prefect.yaml's)")
    p.add_argument("--limit", type=int, default=1, help="flow runs at once (default: 1)")
    args = p.parse_args()
    spec = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    config = None
    if args.config:
        config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    for key, value in pool_env(spec).items():
        os.environ.setdefault(key, value)  # flow runs are subprocesses of this one: they inherit it
    serve(*deployments(spec, data=args.data, inbox=args.inbox, runs=args.runs, config=config),
          limit=args.limit)


if __name__ == "__main__":
    main()
