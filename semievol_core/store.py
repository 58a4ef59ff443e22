"""Content-addressed step outputs: each step writes under `<run>/<step>/<key>/`, named by its cache key.

    d = key_dir(run, "select", key)                 # runs/fpb/select/3f2a9c0d41b7e5a6
    done = load_done(d, run)                          # (outputs, seconds it took), or None if it never finished
    save_done(outputs, seconds, d, run)               # written last: the directory is complete
    link_latest(run, d, outputs)                      # runs/fpb/pseudo_labels.parquet -> select/3f2a.../...

A key directory is written once and never rewritten: another θ writes another directory, so an
output a cache entry names cannot change under it, and going back to an earlier θ finds its
directory complete. `values.json` (the step's outputs, paths relative to the run directory) is
written last, atomically, so its presence is what "this step finished" means, for both executors.
The stable names users and servers read (`warm_adapter`, `pseudo_labels.parquet`,
`predictions/sft.parquet`, ...) are relative symbolic links to the latest run's outputs, moved in
one rename each. A key directory a crash left without `values.json` is written again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .atomic import atomic_path, atomic_symlink

VALUES = "values.json"
KEY_CHARS = 16  # of the sha256 hex key: 64 bits, no collision among a run's few thousand steps
LEGACY = "legacy"  # where a real file or directory found at a stable name is moved (older layouts)


def key_dir(run_dir: str | Path, step: str, key: str) -> Path:
    return Path(run_dir).resolve() / step / key[:KEY_CHARS]


def portable(outputs: dict[str, Any], run_dir: str | Path) -> dict:
    """Outputs with the paths inside the run directory made relative to it (a run directory can be
    moved or copied), and the names of those outputs."""
    run_dir = Path(run_dir).resolve()
    values, paths = {}, []
    for name, value in outputs.items():
        if isinstance(value, str) and Path(value).is_absolute() and run_dir in Path(value).parents:
            values[name], paths = str(Path(value).relative_to(run_dir)), paths + [name]
        else:
            values[name] = value
    return {"values": values, "paths": paths}


def restore(doc: dict, run_dir: str | Path) -> dict[str, Any]:
    """`portable`'s inverse: absolute paths under this run directory."""
    run_dir = Path(run_dir).resolve()
    return {name: str(run_dir / value) if name in doc["paths"] else value for name, value in doc["values"].items()}


def load_done(d: Path, run_dir: str | Path) -> tuple[dict[str, Any], float] | None:
    """(outputs, seconds the step took) of a finished step, from its values.json; None when it
    never finished."""
    path = d / VALUES
    if not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    return restore(doc, run_dir), doc["seconds"]


def save_done(outputs: dict[str, Any], seconds: float, d: Path, run_dir: str | Path) -> None:
    with atomic_path(d / VALUES) as tmp:
        doc = {**portable(outputs, run_dir), "seconds": round(seconds, 3)}
        tmp.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")


def link_latest(run_dir: str | Path, d: Path, outputs: dict[str, Any]) -> None:
    """Point each output's stable name (its path inside the key directory, taken from the run
    directory) at it: `<run>/<step>/<key>/predictions/sft.parquet` -> `<run>/predictions/sft.parquet`."""
    run_dir, d = Path(run_dir).resolve(), d.resolve()
    for value in outputs.values():
        if not (isinstance(value, str) and d in Path(value).parents):
            continue
        rel = Path(value).relative_to(d)
        link = run_dir / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() and not link.is_symlink():  # a real file or directory: an older layout's output
            moved = run_dir / LEGACY / rel
            moved.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(link), str(moved))
        target = Path(value).relative_to(run_dir)
        atomic_symlink(Path(*[".."] * (len(rel.parts) - 1), target), link)
