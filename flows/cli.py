"""`semievol` command line: run the SemiEvol flows through Prefect, import the paper's CSVs.

    semievol evolve --data data/fpb --out runs/fpb --preset fpb-small
    semievol evolve --data data/fpb --out runs/fpb --config run.yaml --theta 0.3 --limit-labeled 64
    semievol evolve --data data/fpb --out runs/fpb --preset fpb-small --set train.epochs=3 --set execution.batch_size=8
    semievol evaluate --test data/fpb --out runs/eval --adapter runs/fpb/semievol_adapter
    semievol ingest inbox/ --into data/fpb --map question=prompt,options=choices
    semievol import-csv /work/shared/datasets/semievol/fpb --out data/fpb
  semievol registry list --registry data/fpb/registry

Built with typer: one function per command, its options declared by its signature. Every config
field is reachable from evolve and evaluate: `--set KEY=VALUE` (repeatable; dotted keys for nested
fields, YAML values) on top of --preset/--config; --model and --theta are shortcuts for `model` and
`selection.theta`. A config with the flat keys of old (`theta: 0.3`) still loads, with a note.
Flows run against the Prefect server in PREFECT_API_URL when it is set, otherwise in a temporary
local (ephemeral) server. import-csv is a plain local conversion and does not start Prefect.
User errors (bad options, data, config, missing files) print one line `semievol: error: ...` and
exit with 2; a run that fails otherwise exits with 1 (Prefect's log above says where). `--debug`
re-raises with the full traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal, Sequence

import typer
from typer.core import TyperGroup

from semievol_core.atomic import LockHeld
from semievol_core.steps import SYSTEMS, check_model_name, run_dir_lock

CONFIG_DIR = Path(__file__).resolve().parents[1] / "deployments" / "configs"


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
PresetName = Literal[tuple(PRESETS)]  # typer offers (and checks) exactly these names

# Help epilogs: "\b" keeps click from re-flowing the example lines into one paragraph.
EXAMPLES = """\b
examples:
  semievol import-csv /work/shared/datasets/semievol/fpb --out data/fpb
  semievol evolve --data data/fpb --out runs/fpb-small --preset fpb-small
  semievol evolve --data data/fpb --out runs/fpb --config deployments/configs/recommended.yaml --theta 0.3
  semievol evolve --data data/fpb --out runs/fpb --preset fpb-small --set train.epochs=3
  semievol evaluate --test data/fpb --out runs/eval --adapter runs/fpb-small/semievol_adapter --limit 200
  semievol ingest inbox/ --into data/fpb --map question=prompt,options=choices

Runs go to the Prefect server in PREFECT_API_URL, else to a temporary local one.
"""
SET_HELP = ("override a config field, e.g. train.epochs=3 or execution.batch_size=8 (dotted KEY for "
            "nested fields, YAML VALUE); repeatable, applied after --preset/--config and the shortcuts")


class UserError(Exception):
    """A problem the user can fix (reported as one line, exit code 2)."""


# Data, config and file problems are the user's to fix: one line, exit 2. ValueError covers
# DataError, pydantic's ValidationError and the core's own checks; LockHeld, an --out in use.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
               LockHeld)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _Commands(TyperGroup):
    """Where a command's exception becomes an exit code, for `main` and for typer's CliRunner alike.
    Usage errors (bad options) are not seen here: they are raised while parsing, before invoke."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own: exit codes, usage errors
            raise
        except KeyboardInterrupt:
            print("semievol: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except Exception as exc:
            if ctx.params["debug"]:
                raise
            if isinstance(exc, USER_ERRORS):
                print(f"semievol: error: {_one_line(exc)}", file=sys.stderr)
                raise typer.Exit(2) from None
            print(f"semievol: {ctx.invoked_subcommand} failed: {type(exc).__name__}: {_one_line(exc)} "
                  "(see the log above; --debug for the traceback)", file=sys.stderr)
            raise typer.Exit(1) from None


# rich_markup_mode=None: plain help text, examples kept line by line (no boxes to copy around).
app = typer.Typer(cls=_Commands, help=__doc__.split("\n")[0], epilog=EXAMPLES, add_completion=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks")] = False) -> None:
    pass  # --debug is read from the context: _Commands.invoke and _debug


def _debug(ctx: typer.Context) -> bool:
    return ctx.find_root().params["debug"]


# ------------------------------------------------------------------------------ config
def _load_config(path: str | Path | None, preset: Preset | None, shortcuts: dict, sets: Sequence[str] = ()):
    """SemiEvolConfig from a file (or the preset's), then the shortcut options that were given
    (by field, e.g. {"selection.theta": 0.3}; None = not given), then `--set` pairs; validated once."""
    from semievol_core.config import SemiEvolConfig, apply_overrides, load_yaml_mapping

    source = Path(path) if path else (CONFIG_DIR / preset.config if preset else None)
    data: dict = {}
    if source is not None:
        if not source.is_file():
            raise UserError(f"{source}: config file not found")
        try:
            data = load_yaml_mapping(source)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    given = {field: value for field, value in shortcuts.items() if value is not None}
    try:
        apply_overrides(data, sets, given, source=str(source or "config"))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        return SemiEvolConfig.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError: one line per config, not a traceback
        options = [f"--{field.rpartition('.')[2]}" for field in given]  # an option: its field's last name
        where = " + ".join([str(source)] * bool(source) + options + ["--set"] * bool(sets)) or "config"
        raise UserError(f"{where}: {_validation_line(exc)}") from None


def _validation_line(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return " ".join(str(exc).split())
    parts = []
    for e in errors():
        loc = ".".join(str(x) for x in e.get("loc", ())) or "config"
        # Only a plain value is echoed, never an api_key's (it may be a pasted key) nor a mapping,
        # which might hold one.
        shown = ("input" in e and isinstance(e["input"], (str, int, float, bool, type(None)))
                 and tuple(e.get("loc", ()))[-1:] != ("api_key",))
        parts.append(f"{loc}: {e.get('msg')} (got {e.get('input')!r})" if shown else f"{loc}: {e.get('msg')}")
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


# ------------------------------------------------------------------------------ options
# The same option means the same thing in every command: declared once here.
Out = Annotated[Path, typer.Option(metavar="DIR", help="run directory (outputs, report.json, report.md)")]
ConfigFile = Annotated[Path | None, typer.Option("--config", metavar="FILE",
                                                  help="YAML run config (SemiEvolConfig fields)")]
Model = Annotated[str | None, typer.Option(metavar="NAME",
                                           help="base model (name or HF directory); shortcut for --set model=...")]
Sets = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=SET_HELP)]


class Engine(str, Enum):
    """The engine of --workers and --cluster (execution.engine)."""

    dask = "dask"
    ray = "ray"


Limit = Annotated[int | None, typer.Option(min=1, metavar="N")]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="no progress bars")]


def _no_progress(cfg, flag: bool):
    if flag:
        cfg.execution.progress = False
    return cfg


def _mapping(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            raise typer.BadParameter(f"expected FIELD=COLUMN pairs, got {item!r}")
        out[field.strip()] = column.strip()
    return out


# ------------------------------------------------------------------------------ commands
@app.command(epilog="\b\nexamples:\n  semievol evolve --data data/fpb --out runs/fpb-small --preset fpb-small\n"
                    "  semievol evolve --data data/fpb --out runs/x --config run.yaml --model "
                    "smollm2-135m-instruct --theta 0.3\n"
                    "  semievol evolve --data data/fpb --out runs/x --preset fpb-small --set train.epochs=3 "
                    "--set execution.batch_size=8\n\n\b\npresets:\n"
                    + "\n".join(f"  {k}: {v.help}" for k, v in PRESETS.items()))
def evolve(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(metavar="DIR",
                                       help="dataset directory (labeled.parquet, unlabeled/, test.parquet)")],
    out: Out,
    preset: Annotated[PresetName | None, typer.Option(
        help="a named config + limits (options below override it)")] = None,
    config: ConfigFile = None,
    model: Model = None,
    theta: Annotated[float | None, typer.Option(
        help="selection quantile θ in (0, 1]; shortcut for --set selection.theta=...")] = None,
    set_: Sets = None,
    limit_labeled: Limit = None,
    limit_unlabeled: Limit = None,
    limit_test: Limit = None,
    systems: Annotated[str | None, typer.Option(
        help=f"comma-separated systems to evaluate (default: {','.join(SYSTEMS)})")] = None,
    no_progress: NoProgress = False,
    registry: Annotated[Path | None, typer.Option(
        metavar="DIR", help="adapter registry (default: DATA/registry)")] = None,
    no_gate: Annotated[bool, typer.Option(
        "--no-gate", help="do not register the adapter or run the promotion gate")] = False,
    workers: Annotated[int | None, typer.Option(
        min=0, help="run the embedding, generation, justification and evaluation shards on a Dask (or --engine ray) cluster of this "
        "many processes on this machine; shortcut for --set execution.workers=N")] = None,
    cluster: Annotated[str | None, typer.Option(
        metavar="ADDRESS", help="run them on the running cluster at ADDRESS (Dask: tcp://host:8786, "
        "Ray: ray://head:10001); shortcut for --set execution.cluster=ADDRESS")] = None,
    engine: Annotated[Engine | None, typer.Option(
        help="the engine of --workers and --cluster (default dask); shortcut for --set execution.engine=...")] = None,
) -> None:
    """run the whole SemiEvol method on a dataset; promote its adapter only if it is better"""
    from semievol_core.report import systems_table

    chosen = PRESETS[preset] if preset else None
    cfg = _no_progress(_load_config(config, chosen, {"model": model, "selection.theta": theta,
                                                     "execution.workers": workers, "execution.cluster": cluster,
                                                     "execution.engine": engine.value if engine else None},
                                    set_ or []), no_progress)
    limits = {"labeled": limit_labeled or (chosen.labeled if chosen else None),
              "unlabeled": limit_unlabeled or (chosen.unlabeled if chosen else None),
              "test": limit_test or (chosen.test if chosen else None)}
    names = [s.strip() for s in systems.split(",") if s.strip()] if systems else list(SYSTEMS)
    bad = [s for s in names if s not in SYSTEMS]
    if bad:
        raise UserError(f"--systems: unknown {bad}; choose from {','.join(SYSTEMS)}")
    if not data.is_dir():
        raise UserError(f"{data}: dataset directory not found")
    _validate_dataset(data)
    with run_dir_lock(out):  # another run on --out: say so now, before Prefect starts (the flow locks too)
        pass

    from semievol_core.steps import Limits
    from flows.evolve import evolve as evolve_flow

    _quiet_console(_debug(ctx))

    report = evolve_flow(data_dir=str(data), out_dir=str(out), config=cfg, limits=Limits(**limits), systems=names,
                         gate=not no_gate, registry=str(registry) if registry else None)
    print(systems_table(report["systems"]))
    sel = report["selection"]
    if sel:
        print(f"\nselected {sel['n_selected']} of {sel['n_unlabeled']} pseudo-labels")
    if "gate" in report:
        print(f"promotion gate: {report['gate']['reason']}")
    if report.get("registry"):
        print(f"champion: {report['registry']['champion'] or 'none'} ({report['registry']['path']}/champion)")
    print(f"report: {out / 'report.md'}")


@app.command(epilog="\b\nexample:\n  semievol evaluate --test data/fpb --out runs/eval "
                    "--adapter runs/fpb/semievol_adapter --limit 200")
def evaluate(
    ctx: typer.Context,
    test: Annotated[Path, typer.Option(metavar="PATH", help="test table (.parquet) or dataset directory")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="output directory")],
    config: ConfigFile = None,
    model: Model = None,
    set_: Sets = None,
    adapter: Annotated[Path | None, typer.Option(metavar="DIR", help="LoRA adapter directory")] = None,
    name: Annotated[str, typer.Option(help="name for the predictions and the report")] = "model",
    limit: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="evaluate a seeded sample of N questions")] = None,
    no_progress: NoProgress = False,
) -> None:
    """accuracy of one model (+ adapter) on a test table"""
    from semievol_core.report import systems_table

    cfg = _no_progress(_load_config(config, None, {"model": model}, set_ or []), no_progress)
    if not (test / "test.parquet" if test.is_dir() else test).exists():
        raise UserError(f"{test}: no test table found")
    if adapter and not adapter.is_dir():
        raise UserError(f"{adapter}: adapter directory not found")
    check_model_name(name)
    with run_dir_lock(out):  # another run on --out: say so now, before Prefect starts (the flow locks too)
        pass

    from flows.evaluate import evaluate as evaluate_flow

    _quiet_console(_debug(ctx))

    res = evaluate_flow(test=str(test), out_dir=str(out), adapter=str(adapter) if adapter else None, config=cfg,
                        name=name, limit=limit)
    print(systems_table({name: res["metrics"]}))
    print(f"\npredictions: {res['predictions']}")


@app.command(epilog="\b\nexamples:\n  semievol train --labeled runs/fpb/data/labeled.parquet --out runs/sft\n"
                    "  torchrun --nproc_per_node 4 -m flows.cli train --labeled runs/fpb/data/labeled.parquet "
                    "--pseudo-labels runs/fpb/pseudo_labels.parquet --unlabeled runs/fpb/data/unlabeled.parquet "
                    "--out runs/final")
def train(
    labeled: Annotated[Path, typer.Option(metavar="FILE", help="labeled table (.parquet)")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="adapter directory to write")],
    config: ConfigFile = None,
    model: Model = None,
    set_: Sets = None,
    pseudo_labels: Annotated[Path | None, typer.Option(
        metavar="FILE", help="a run's pseudo_labels.parquet: its selected rows join the labeled ones")] = None,
    unlabeled: Annotated[Path | None, typer.Option(
        metavar="FILE", help="the unlabeled table the pseudo-labels answer (with --pseudo-labels)")] = None,
    init_adapter: Annotated[Path | None, typer.Option(
        metavar="DIR", help="continue this adapter instead of starting from the base model")] = None,
    no_progress: NoProgress = False,
) -> None:
    """LoRA fine-tune on a labeled table (+ selected pseudo-labels), as evolve's train steps do;
    data-parallel on several GPUs (or CPU processes) under torchrun or accelerate launch"""
    from semievol_core.steps import train_adapter

    cfg = _no_progress(_load_config(config, None, {"model": model}, set_ or []), no_progress)
    for path in (labeled, pseudo_labels, unlabeled):
        if path is not None and not path.is_file():
            raise UserError(f"{path}: table not found")
    if (pseudo_labels is None) != (unlabeled is None):
        raise UserError("--pseudo-labels and --unlabeled go together (the pseudo-labels answer its questions)")
    if init_adapter is not None and not init_adapter.is_dir():
        raise UserError(f"{init_adapter}: adapter directory not found")
    adapter = train_adapter(cfg, [(labeled, "labeled")], out, init_adapter=init_adapter,
                            pseudo_labels=pseudo_labels, unlabeled=unlabeled)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every process gets here; one line
        print(f"adapter: {adapter}")


@app.command(epilog="\b\nexample:\n  semievol ingest inbox/ --into data/fpb --map question=prompt,options=choices\n\n"
                    "\b\nFiles: .jsonl, .csv, .parquet. Processed files move to INBOX/processed/; other\n"
                    "files, and files with no usable row, to INBOX/rejected/ with a reason (exit 2).\n"
                    "Bad rows go to DIR/quarantine/ with their reasons; test questions and\n"
                    "answer-revealing columns are kept out (a note says so).")
def ingest(
    ctx: typer.Context,
    inbox: Annotated[Path, typer.Argument(metavar="INBOX", help="directory of new files")],
    into: Annotated[Path, typer.Option(metavar="DIR", help="dataset directory (with labeled.parquet)")],
    map_: Annotated[dict | None, typer.Option("--map", parser=_mapping, metavar="FIELD=COLUMN,...",
                                              help="our field (id, question, options) = the files' column")] = None,
) -> None:
    """add unlabeled log files from an inbox to a dataset"""
    from semievol_core.ingest import require_dataset

    if not inbox.is_dir():
        raise UserError(f"{inbox}: inbox directory not found")
    require_dataset(into)  # before Prefect starts: nothing is created in a wrong --into

    from flows.ingest import ingest as ingest_flow

    _quiet_console(_debug(ctx))

    summary = ingest_flow(inbox=str(inbox), data_dir=str(into), mapping=map_)
    for r in summary["files"]:
        print(f"{r['file']}: {r['status']}, {r['added']} added, {r['already_present']} already present, "
              f"{r['overlaps_test']} in the test set, {r['duplicates_in_file']} duplicate(s) in the file, "
              f"{r['quarantined']} quarantined")
        for note in r["notes"]:
            print(f"  note: {note}")
    print(f"{summary['added']} row(s) added to {into / 'unlabeled'}")
    rejected = [r for r in summary["files"] if r["status"] == "rejected"]
    for r in rejected:
        print(f"semievol: error: {r['file']} rejected (moved to {r['moved_to']}): {r['error']}", file=sys.stderr)
    if rejected:  # a file nothing could be taken from is the user's to fix, though the others went in
        raise typer.Exit(2)


@app.command(epilog="\b\nexample:\n  semievol import-csv /work/shared/datasets/semievol/fpb --out data/fpb")
def import_csv(
    src: Annotated[Path, typer.Argument(
        metavar="SRC", help="directory with labeled.csv, unlabeled.csv (optional), test.csv")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="dataset directory to create")],
    skip_bad_rows: Annotated[bool, typer.Option(
        "--skip-bad-rows", help="quarantine bad rows instead of stopping")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out")] = False,
) -> None:
    """import the paper's labeled/unlabeled/test CSVs as a dataset"""
    from semievol_core.paper_csv import import_csv_dir
    from semievol_core.schema import BadRowError, DataError

    try:
        print(import_csv_dir(src, out, skip_bad_rows=skip_bad_rows, overwrite=overwrite))
    except DataError as exc:  # a bad row stops the import: say whether it could have been set aside
        if exc.row is None:
            raise
        hint = ("--skip-bad-rows quarantines such rows and imports the rest" if isinstance(exc, BadRowError)
                else "--skip-bad-rows cannot skip it: the file cannot be read past this row")
        raise UserError(f"{exc} ({hint})") from None


# ------------------------------------------------------------------------------ registry
registry_app = typer.Typer(help="the adapter registry: list, show, promote, roll back", no_args_is_help=True,
                           rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(registry_app, name="registry")
RegistryDir = Annotated[Path, typer.Option("--registry", metavar="DIR",
                                           help="registry directory (evolve's default: DATA/registry)")]


def _open_registry(path: Path):
    from semievol_core.registry import Registry

    if not (path / "events.jsonl").exists():
        raise UserError(f"{path}: no registry here (evolve creates one in DATA/registry)")
    return Registry(path)


@registry_app.command("list")
def registry_list(registry: RegistryDir) -> None:
    """every registered adapter, oldest first; * marks the champion"""
    for r in _open_registry(registry).records():
        m, d = r.get("metrics") or {}, r.get("decision") or {}
        acc = f"{100 * m['accuracy']:.1f}%" if m.get("accuracy") is not None else "—"
        gate = (f"{100 * d['difference']:+.1f} vs {d['against']}, p={d['mcnemar_p']:.3g}"
                if d.get("difference") is not None else "")
        print(f"{'*' if r['champion'] else ' '} {r['id']}  round {r.get('round')}  accuracy {acc}  {gate}")


@registry_app.command("show")
def registry_show(registry: RegistryDir,
                  adapter_id: Annotated[str | None, typer.Argument(
                      metavar="ID", help="adapter id (default: the champion)")] = None) -> None:
    """one adapter's record: lineage, table digests, config, metrics, gate decision"""
    import json

    reg = _open_registry(registry)
    rec = reg.record(adapter_id) if adapter_id else reg.champion()
    if rec is None:
        raise UserError(f"{registry}: no champion yet")
    print(json.dumps(rec, indent=2))


@registry_app.command("promote")
def registry_promote(registry: RegistryDir,
                     adapter_id: Annotated[str, typer.Argument(metavar="ID", help="adapter id")]) -> None:
    """make an adapter the champion by hand (the gate is skipped)"""
    changed = _open_registry(registry).promote(adapter_id, {"by": "hand"})
    print(f"champion: {adapter_id}" + ("" if changed else " (already)"))


@registry_app.command("rollback")
def registry_rollback(registry: RegistryDir) -> None:
    """make the previous champion the champion again"""
    print(f"champion: {_open_registry(registry).rollback()}")


# ------------------------------------------------------------------------------ entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    # The temporary local server starts in a subprocess; on a machine busy loading models the
    # default 20 s can run out. Set before Prefect is imported (it reads settings then).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # The temporary server's telemetry cannot reach the internet on offline machines and logs an
    # ERROR line a new user reads as a failure; a lasting server keeps the user's own setting.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        # standalone_mode=False: typer returns exit codes and raises usage errors instead of
        # printing them in its own multi-line format and exiting.
        return typer.main.get_command(app).main(args=argv, prog_name="semievol", standalone_mode=False) or 0
    except typer.TyperException as exc:  # a usage error: unknown or missing option, bad option value
        command = getattr(getattr(exc, "ctx", None), "command_path", "semievol")
        print(f"semievol: error: {' '.join(exc.format_message().split())} (see '{command} --help')", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
