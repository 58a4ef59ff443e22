"""`semievol` command line: run the SemiEvol flows through Prefect, import the paper's CSVs.

    semievol evolve --data data/fpb --out runs/fpb --preset fpb-small
    semievol evolve --data data/fpb --out runs/fpb --config run.yaml --theta 0.3 --limit-labeled 64
    semievol evaluate --test data/fpb --out runs/eval --adapter runs/fpb/semievol_adapter
    semievol ingest inbox/ --into data/fpb --map question=prompt,options=choices
    semievol import-csv /work/shared/datasets/semievol/fpb --out data/fpb

Flows run against the Prefect server in PREFECT_API_URL when it is set, otherwise in a temporary
local (ephemeral) server. import-csv is a plain local conversion and does not start Prefect.
User errors (bad data, bad config, missing files) print one line `semievol: error: ...` and exit
with 2; a run that fails otherwise exits with 1 (Prefect's log above says where). `--debug`
re-raises with the full traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

CONFIG_DIR = Path(__file__).resolve().parents[1] / "deployments" / "configs"
SYSTEMS = ("vanilla", "rag_knn", "knn_vote", "sft", "semievol")  # = semievol_core.steps.SYSTEMS


@dataclass(frozen=True)
class Preset:
    config: str  # file in deployments/configs
    labeled: int | None
    unlabeled: int | None
    test: int | None
    help: str


PRESETS = {
    "fpb-small": Preset("recommended.yaml", 64, 256, 200,
                        "README demo: SmolLM2-135M on FPB, 64 labeled / 256 unlabeled / 200 test"),
    "fpb-tiny": Preset("recommended.yaml", 32, 32, 50, "smoke run: 32 labeled / 32 unlabeled / 50 test"),
}

EXAMPLES = """examples:
  semievol import-csv /work/shared/datasets/semievol/fpb --out data/fpb
  semievol evolve --data data/fpb --out runs/fpb-small --preset fpb-small
  semievol evolve --data data/fpb --out runs/fpb --config deployments/configs/recommended.yaml --theta 0.3
  semievol evaluate --test data/fpb --out runs/eval --adapter runs/fpb-small/semievol_adapter --limit 200
  semievol ingest inbox/ --into data/fpb --map question=prompt,options=choices

Runs go to the Prefect server in PREFECT_API_URL, else to a temporary local one.
"""


class UserError(Exception):
    """A problem the user can fix (reported as one line, exit code 2)."""


# ------------------------------------------------------------------------------ argument parsing
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _mapping(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            raise argparse.ArgumentTypeError(f"expected FIELD=COLUMN pairs, got {item!r}")
        out[field.strip()] = column.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semievol", description=__doc__.split("\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ev = sub.add_parser("evolve", help="run the whole SemiEvol method on a dataset",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  semievol evolve --data data/fpb --out runs/fpb-small --preset fpb-small\n"
                               "  semievol evolve --data data/fpb --out runs/x --config run.yaml --model "
                               "smollm2-135m-instruct --theta 0.3\n\npresets:\n" + "\n".join(
                                   f"  {k}: {v.help}" for k, v in PRESETS.items()))
    ev.add_argument("--data", required=True, help="dataset directory (labeled.parquet, unlabeled/, test.parquet)")
    ev.add_argument("--out", required=True, help="run directory (outputs, report.json, report.md)")
    ev.add_argument("--preset", choices=sorted(PRESETS), help="a named config + limits (flags below override it)")
    ev.add_argument("--config", help="YAML run config (SemiEvolConfig fields)")
    ev.add_argument("--model", help="base model (name or HF directory); overrides the config")
    ev.add_argument("--theta", type=float, help="selection quantile θ in (0, 1]; overrides the config")
    ev.add_argument("--limit-labeled", type=_positive, metavar="N")
    ev.add_argument("--limit-unlabeled", type=_positive, metavar="N")
    ev.add_argument("--limit-test", type=_positive, metavar="N")
    ev.add_argument("--systems", help=f"comma-separated systems to evaluate (default: {','.join(SYSTEMS)})")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")

    ea = sub.add_parser("evaluate", help="accuracy of one model (+ adapter) on a test table",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  semievol evaluate --test data/fpb --out runs/eval "
                               "--adapter runs/fpb/semievol_adapter --limit 200")
    ea.add_argument("--test", required=True, help="test table (.parquet) or dataset directory")
    ea.add_argument("--out", required=True, help="output directory")
    ea.add_argument("--config", help="YAML run config")
    ea.add_argument("--model", help="base model; overrides the config")
    ea.add_argument("--adapter", help="LoRA adapter directory")
    ea.add_argument("--name", default="model", help="name for the predictions and the report (default: model)")
    ea.add_argument("--limit", type=_positive, metavar="N", help="evaluate a seeded sample of N questions")
    ea.add_argument("--no-progress", action="store_true", help="no progress bars")

    ig = sub.add_parser("ingest", help="add unlabeled log files from an inbox to a dataset",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  semievol ingest inbox/ --into data/fpb --map question=prompt,options=choices\n\n"
                               "Files: .jsonl, .csv, .parquet. Processed files move to INBOX/processed/; other\n"
                               "files, and files with no usable row, to INBOX/rejected/ with a reason (exit 2).\n"
                               "Bad rows go to DIR/quarantine/ with their reasons; test questions and\n"
                               "answer-revealing columns are kept out (a note says so).")
    ig.add_argument("inbox", help="directory of new files")
    ig.add_argument("--into", required=True, metavar="DIR", help="dataset directory (with labeled.parquet)")
    ig.add_argument("--map", type=_mapping, default=None, metavar="FIELD=COLUMN,...",
                    help="our field (id, question, options) = the files' column")

    ic = sub.add_parser("import-csv", help="import the paper's labeled/unlabeled/test CSVs as a dataset",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  semievol import-csv /work/shared/datasets/semievol/fpb --out data/fpb")
    ic.add_argument("src", help="directory with labeled.csv, unlabeled.csv (optional), test.csv")
    ic.add_argument("--out", required=True, help="dataset directory to create")
    ic.add_argument("--skip-bad-rows", action="store_true", help="quarantine bad rows instead of stopping")
    ic.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


# ------------------------------------------------------------------------------ config
def _load_config(path: str | None, preset: Preset | None, overrides: dict):
    """SemiEvolConfig from a file (or the preset's), with command-line overrides, validated once."""
    from semievol_core.config import SemiEvolConfig, load_yaml_mapping

    source = Path(path) if path else (CONFIG_DIR / preset.config if preset else None)
    data: dict = {}
    if source is not None:
        if not source.is_file():
            raise UserError(f"{source}: config file not found")
        try:
            data = load_yaml_mapping(source)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    try:
        return SemiEvolConfig.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError: one line per config, not a traceback
        raise UserError(f"{source or 'config'}: {_validation_line(exc)}") from None


def _validation_line(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return " ".join(str(exc).split())
    parts = []
    for e in errors():
        loc = ".".join(str(x) for x in e.get("loc", ())) or "config"
        parts.append(f"{loc}: {e.get('msg')} (got {e.get('input')!r})" if "input" in e else f"{loc}: {e.get('msg')}")
    return "; ".join(parts)


def _validate_dataset(data: Path) -> None:
    """Check every table row by row before starting Prefect: a bad file is then one line naming
    the user's file, row and column, not a failed flow run quoting the run directory's copy."""
    from semievol_core.data import check_forms, load_dataset, read_table, validate_table

    ds = load_dataset(data)  # schemas, readable files, unique ids
    if len(ds.labeled) == 0:
        raise UserError(f"{data}: the labeled table is empty; the method needs labeled examples")
    tables = [(data / "labeled.parquet", "labeled"), (data / "test.parquet", "test")]
    tables += [(p, "unlabeled") for p in sorted((data / "unlabeled").glob("part-*.parquet"))]
    if (data / "oracle.parquet").exists():
        tables.append((data / "oracle.parquet", "oracle"))
    for path, kind in tables:
        validate_table(read_table(path, kind), kind, path)
    check_forms(data)  # e.g. an ingested row without options in a multiple-choice dataset


USER_ERRORS = (UserError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


class _NoUserTracebacks(logging.Filter):
    """On the console only: Prefect logs a failed run's exception with its traceback; for a user
    error (bad data or config: DataError and pydantic's ValidationError are ValueErrors) the
    message says it all. The API handler runs before this one and keeps the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, USER_ERRORS):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_console(debug: bool) -> None:
    if debug:  # --debug: keep every traceback
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _NoUserTracebacks) for f in handler.filters):
            handler.addFilter(_NoUserTracebacks())


def _no_progress(cfg, flag: bool):
    if flag:
        cfg.execution.progress = False
    return cfg


# ------------------------------------------------------------------------------ commands
def cmd_evolve(args) -> int:
    from semievol_core.report import systems_table

    preset = PRESETS.get(args.preset) if args.preset else None
    cfg = _no_progress(_load_config(args.config, preset, {"model": args.model, "theta": args.theta}),
                       args.no_progress)
    limits = {"labeled": args.limit_labeled or (preset.labeled if preset else None),
              "unlabeled": args.limit_unlabeled or (preset.unlabeled if preset else None),
              "test": args.limit_test or (preset.test if preset else None)}
    systems = [s.strip() for s in args.systems.split(",") if s.strip()] if args.systems else list(SYSTEMS)
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        raise UserError(f"--systems: unknown {bad}; choose from {','.join(SYSTEMS)}")
    data = Path(args.data)
    if not data.is_dir():
        raise UserError(f"{data}: dataset directory not found")
    _validate_dataset(data)

    from flows.common import RunLimits
    from flows.evolve import evolve

    _quiet_console(args.debug)

    report = evolve(data_dir=str(data), out_dir=args.out, config=cfg, limits=RunLimits(**limits), systems=systems)
    print(systems_table(report["systems"]))
    sel = report["selection"]
    print(f"\nselected {sel['n_selected']} of {sel['n_unlabeled']} pseudo-labels; "
          f"report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_evaluate(args) -> int:
    from semievol_core.report import systems_table

    cfg = _no_progress(_load_config(args.config, None, {"model": args.model}), args.no_progress)
    test = Path(args.test)
    if not (test / "test.parquet" if test.is_dir() else test).exists():
        raise UserError(f"{test}: no test table found")
    if args.adapter and not Path(args.adapter).is_dir():
        raise UserError(f"{args.adapter}: adapter directory not found")
    if args.name in ("rag_knn", "knn_vote"):
        raise UserError(f"--name {args.name!r} is reserved for evolve's neighbour-based systems")

    from flows.evaluate import evaluate

    _quiet_console(args.debug)

    res = evaluate(test=str(test), out_dir=args.out, adapter=args.adapter, config=cfg, name=args.name,
                   limit=args.limit)
    print(systems_table({args.name: res["metrics"]}))
    print(f"\npredictions: {res['predictions']}")
    return 0


def cmd_ingest(args) -> int:
    """Exit 2 when a file was rejected (one `semievol: error:` line per file): a file nothing could
    be taken from is the user's to fix, even though the others went in."""
    from semievol_core.ingest import require_dataset

    if not Path(args.inbox).is_dir():
        raise UserError(f"{args.inbox}: inbox directory not found")
    require_dataset(args.into)  # before Prefect starts: nothing is created in a wrong --into

    from flows.ingest import ingest

    _quiet_console(args.debug)

    summary = ingest(inbox=args.inbox, data_dir=args.into, mapping=args.map)
    for r in summary["files"]:
        print(f"{r['file']}: {r['status']}, {r['added']} added, {r['already_present']} already present, "
              f"{r['overlaps_test']} in the test set, {r['quarantined']} quarantined")
        for note in r["notes"]:
            print(f"  note: {note}")
    print(f"{summary['added']} row(s) added to {Path(args.into) / 'unlabeled'}")
    rejected = [r for r in summary["files"] if r["status"] == "rejected"]
    for r in rejected:
        print(f"semievol: error: {r['file']} rejected (moved to {r['moved_to']}): {r['error']}", file=sys.stderr)
    return 2 if rejected else 0


def cmd_import_csv(args) -> int:
    from semievol_core.data import import_csv_dir

    summary = import_csv_dir(args.src, args.out, skip_bad_rows=args.skip_bad_rows, overwrite=args.overwrite)
    print(summary)
    return 0


COMMANDS = {"evolve": cmd_evolve, "evaluate": cmd_evaluate, "ingest": cmd_ingest, "import-csv": cmd_import_csv}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The temporary local server starts in a subprocess; on a machine busy loading models the
    # default 20 s can run out. Set before Prefect is imported (it reads settings then).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # The temporary server's telemetry cannot reach the internet on offline machines and logs an
    # ERROR line a new user reads as a failure; a lasting server keeps the user's own setting.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("semievol: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        # Data, config and file problems are the user's to fix: one line, exit 2. ValueError
        # covers DataError, pydantic's ValidationError and the core's own checks.
        if isinstance(exc, USER_ERRORS):
            print(f"semievol: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        print(f"semievol: {args.command} failed: {type(exc).__name__}: {_one_line(exc)} "
              "(see the log above; --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
