"""The method's steps at file level: read Parquet inputs, call the pure step, write Parquet outputs.

Both runners call these: `pipeline.run_semievol` (plain Python, in order) and the Prefect tasks in
`tasks/` (cached, sharded; not retried: the OpenAI backend retries each request). Each step writes
its output atomically under the run directory and returns its path, so a step's result survives
the process and is what a cache hit hands back.

    ds_dir = prepare_data("data/fpb", "runs/1/data", limits=Limits(labeled=64), seed=0)
    warm = train_adapter(cfg, [ds_dir / "labeled.parquet"], "runs/1/warm_adapter")
    ...

Run directory layout (`out/`):
    data/{labeled,unlabeled,test}.parquet   the (possibly sampled) tables the run used
    embeddings/{labeled,test}.npy, embeddings/unlabeled/shard-<key>.npy (one per embedding shard)
    neighbors.parquet, test_neighbors.parquet
    warm_adapter/, semievol_adapter/        peft LoRA adapters (+ loss_curve.json)
    responses/shard-<key>.parquet           one file per generation shard (resumable)
    responses.parquet, votes.parquet, justified.parquet, pseudo_labels.parquet
    predictions/<system>/shard-<key>.parquet one file per evaluation shard
    predictions/<system>.parquet, report.json, report.md, config.yaml
    .run.lock                               held by the run using the directory (run_dir_lock)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from .answers import infer_answer_type
from .atomic import atomic_path, exclusive_lock, remove_leftover_temps
from .backends import Backend, make_backend
from .collaboration import RESPONSE_SCHEMA, generate_responses, knn_responses, plan_collaborators
from .config import OpenAIConfig, SemiEvolConfig, VLLMConfig, resolve_api_key
from .data import atomic_write_parquet, copy_parts, empty_frame, option_cells, read_table, table_parts, write_table
from .evaluation import metrics, predict
from .justification import justify
from .propagation import NEIGHBOR_SCHEMA, knn_label_vote, retrieve_neighbors
from .prompts import Demo
from .selection import candidates, check_selection, class_mix, class_mix_warning, cut, removal_counts
from .voting import VOTE_SCHEMA, vote

if TYPE_CHECKING:
    from .embed import Embedder

CODE_VERSION = "1"  # bump when a step's output for the same inputs changes


# ---------------------------------------------------------------------------- small file helpers
def save_frame(df: pd.DataFrame, path: str | Path) -> Path:
    """Write any DataFrame to Parquet atomically (temp file + rename)."""
    path = Path(path)
    atomic_write_parquet(pa.Table.from_pandas(df, preserve_index=False), path)
    return path


def table_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as a DataFrame with plain Python lists in list columns (to_pandas would
    give numpy arrays)."""
    return pd.DataFrame({n: table.column(n).to_pylist() for n in table.column_names})


def load_frame(path: str | Path) -> pd.DataFrame:
    return table_frame(pq.read_table(path))


def write_groups(frames: Iterable[pd.DataFrame], path: str | Path, schema: pa.Schema) -> Path:
    """Stream frames into one Parquet file, atomically, each (non-empty) frame one row group, so
    a reader takes back the same chunks (iter_groups) and memory stays one frame."""
    with atomic_path(Path(path)) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for df in frames:
            if len(df):
                writer.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False),
                                   row_group_size=len(df))
    return Path(path)


def iter_groups(path: str | Path, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
    """A Parquet file's row groups one at a time, as load_frame gives them."""
    f = pq.ParquetFile(path)
    for g in range(f.metadata.num_row_groups):
        table = f.read_row_group(g, columns=columns)
        yield table_frame(table)


def save_json(obj, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str), encoding="utf-8")
    return path


def save_text(text: str, path: str | Path) -> Path:
    """Write a text file (UTF-8) atomically: a full disk leaves the old file, never half a new one."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


DIGEST_BLOCK = 1 << 23  # bytes hashed at a time (8 MiB): memory stays a block, whatever the file


def file_digest(*paths: str | Path) -> str:
    """sha256 of files' bytes (a directory: its files, sorted by relative name)."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            if f.name.startswith(".") or f.name in ("loss_curve.json", "train_result.json", "train_config.json"):
                continue  # run metadata (timings, paths as given), not the weights
            h.update(f.relative_to(p).as_posix().encode() if p.is_dir() else b"")
            with open(f, "rb") as fh:  # by blocks: a million rows' vectors are 1.5 GB
                for block in iter(lambda: fh.read(DIGEST_BLOCK), b""):
                    h.update(block)
    return h.hexdigest()


_DIGESTS: dict[tuple, str] = {}
_DIGEST_LOCK = threading.Lock()


def _stamp(path: Path) -> tuple:
    """What identifies a file's (or directory's) bytes without reading them."""
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        return (str(path.resolve()), "dir",
                tuple((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def content_digest(path: str | Path) -> str:
    """file_digest memoised per size+mtime: cache keys hash a big table or an adapter once per
    process, not once per shard that reads it (the flows' `digest`, warm_key)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: input is missing")
    stamp = _stamp(path)
    with _DIGEST_LOCK:
        hit = _DIGESTS.get(stamp)
    if hit is None:
        hit = file_digest(path)
        with _DIGEST_LOCK:
            if len(_DIGESTS) > 4096:  # a long-lived worker: keep the memo bounded
                _DIGESTS.clear()
            _DIGESTS[stamp] = hit
    return hit


RUN_LOCK = ".run.lock"


@contextmanager
def run_dir_lock(out_dir: str | Path) -> Iterator[None]:
    """Held for a whole run by both executors (pipeline.run_semievol, the Prefect flows): a second
    run on the same directory fails at once with atomic.LockHeld, naming the directory and the
    first run's pid, instead of interleaving its writes with the first one's. Once it is held, the
    temps of atomic writes a killed run left in the directory are removed (only a run holding
    this lock writes there)."""
    with exclusive_lock(Path(out_dir) / RUN_LOCK, wait=False):
        remove_leftover_temps(out_dir)
        yield


# ---------------------------------------------------------------------------- backends (one per process)
_BACKENDS: dict[tuple, Backend] = {}
# Backends this process has built since it started: a worker of a Dask cluster that answers many
# shards should build one per model (tasks/step.py reports it with every task's result).
BACKENDS_BUILT = [0]


def get_backend(cfg: SemiEvolConfig, teacher: bool = False) -> Backend:
    """The process's backend for this model (`teacher`: for collaboration.teacher): loaded once,
    adapters switched, never reloaded per step."""
    model, opts = backend_options(cfg, teacher)
    name = (cfg.execution.teacher_backend if teacher else cfg.execution.backend).name
    # json.dumps sees only the key's mask; the SecretStr itself (hashed by its value) tells a
    # rotated key apart.
    key = (name, model, json.dumps(opts, sort_keys=True, default=str), opts.get("api_key"))
    if key not in _BACKENDS:
        _BACKENDS[key] = make_backend(name, model, **opts)
        BACKENDS_BUILT[0] += 1
    return _BACKENDS[key]


def backend_options(cfg: SemiEvolConfig, teacher: bool = False) -> tuple[str, dict]:
    """(the model name the backend is given, its options) for the configured backend, or for the
    teacher's (`teacher`: collaboration.teacher on execution.teacher_backend)."""
    ex = cfg.execution
    backend, model = (ex.teacher_backend, cfg.collaboration.teacher) if teacher else (ex.backend, cfg.model)
    if model is None:
        raise ValueError("no collaboration.teacher is configured")
    if isinstance(backend, OpenAIConfig):
        # The key is read here, where it is used; the config only says where it is.
        return backend.served_model or model, dict(
            base_url=backend.base_url, concurrency=ex.concurrency,
            api_key=resolve_api_key(backend.api_key, f"execution.{'teacher_backend' if teacher else 'backend'}.api_key"),
            timeout=backend.request_timeout_seconds, deadline=backend.request_deadline_seconds,
            call_deadline=backend.call_deadline_seconds,
            # the model's tokenizer (served_model is only the server's name for the same model):
            # choice_logprobs renders prompts with it
            tokenizer=model)
    if isinstance(backend, VLLMConfig):
        return model, dict(max_lora_rank=backend.max_lora_rank)
    return model, dict(batch_size=ex.batch_size, token_budget=ex.token_budget, threads=ex.threads,
                           progress=ex.progress)


_EMBEDDERS: dict[str, "Embedder"] = {}


def get_embedder(cfg: SemiEvolConfig) -> "Embedder":
    """The process's sentence embedder: loaded once for the labeled, unlabeled and test tables."""
    from .embed import Embedder

    name = cfg.propagation.embedder
    if name not in _EMBEDDERS:
        _EMBEDDERS[name] = Embedder(name)
    emb = _EMBEDDERS[name]
    emb.progress = cfg.execution.progress
    return emb


def unload_backends() -> None:
    """Free every loaded inference model (backends and embedders) of this process."""
    for b in _BACKENDS.values():
        b.unload()
    _BACKENDS.clear()
    for e in _EMBEDDERS.values():
        e.unload()
    _EMBEDDERS.clear()


# ---------------------------------------------------------------------------- data
class Limits(BaseModel):
    """Seeded samples for quick runs (None = every row). A pydantic model, so a flow parameter of
    this type gets a validated form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    labeled: int | None = Field(default=None, ge=1)
    unlabeled: int | None = Field(default=None, ge=1)
    test: int | None = Field(default=None, ge=1)


def _sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    return df.sample(n=n, random_state=seed).sort_index().reset_index(drop=True)


def prepare_data(data_dir: str | Path, out_dir: str | Path, limits: Limits = Limits(), seed: int = 0) -> Path:
    """Copy (a seeded sample of) the dataset into the run: labeled, unlabeled, test, oracle.
    A row of another form than the labeled rows' (no options in a multiple-choice dataset) is a
    DataError naming its part file and row here, before any training rather than after it. The
    whole unlabeled table is copied a row group at a time (data.copy_parts); only a sample of it
    (limits.unlabeled) is read whole."""
    from .data import check_forms

    d, out = Path(data_dir), Path(out_dir)
    labeled = read_table(d / "labeled.parquet", "labeled")
    if len(labeled) == 0:
        raise ValueError(f"{data_dir}: the labeled table is empty; the method needs labeled examples")
    test = read_table(d / "test.parquet", "test")
    oracle = read_table(d / "oracle.parquet", "oracle") if (d / "oracle.parquet").exists() else None
    check_forms(data_dir)
    write_table(_sample(labeled, limits.labeled, seed), out / "labeled.parquet", "labeled")
    unlabeled_dir = d / "unlabeled"
    if limits.unlabeled is None:  # part by part: shards stay within a part
        copy_parts(table_parts(unlabeled_dir) if unlabeled_dir.exists() else [], out / "unlabeled.parquet",
                   "unlabeled")
    else:
        unlabeled = read_table(unlabeled_dir, "unlabeled") if unlabeled_dir.exists() else empty_frame("unlabeled")
        write_table(_sample(unlabeled, limits.unlabeled, seed), out / "unlabeled.parquet", "unlabeled")
    write_table(_sample(test, limits.test, seed), out / "test.parquet", "test")
    if oracle is not None:
        write_table(oracle, out / "oracle.parquet", "oracle")
    elif (out / "oracle.parquet").exists():
        (out / "oracle.parquet").unlink()
    return out


def dataset_fingerprint(data_dir: str | Path) -> str:
    """A dataset's tables by content (not the directory: quarantined rows, locks and the like do
    not change what a run reads)."""
    from .data import table_fingerprint

    d = Path(data_dir)
    return ";".join(f"{name}={table_fingerprint(d / name) if (d / name).exists() else '-'}"
                    for name in ("labeled.parquet", "unlabeled", "test.parquet", "oracle.parquet"))


def answer_type_of(labeled: pd.DataFrame, cfg: SemiEvolConfig) -> str:
    if cfg.answer_type != "auto":
        return cfg.answer_type
    kinds = {infer_answer_type(o, a) for o, a in zip(labeled["options"], labeled["answer"])}
    if len(kinds) != 1:
        raise ValueError(f"labeled answers mix types {sorted(kinds)}: set answer_type in the config")
    return kinds.pop()


# ---------------------------------------------------------------------------- 1 / 6. training
def training_examples(tables: Sequence[tuple[str | Path, str]], pseudo_labels: str | Path | None = None,
                      unlabeled: str | Path | None = None) -> pd.DataFrame:
    """question/options/answer/gold rows: the given labeled-kind tables (gold True), then the
    selected pseudo-labels joined to their questions (gold False)."""
    frames = [read_table(p, kind)[["question", "options", "answer"]].assign(gold=True) for p, kind in tables]
    if pseudo_labels is not None:
        pl = load_frame(pseudo_labels)
        pl = pl[pl["selected"]]
        wanted = set(pl["unlabeled_id"])  # the selected questions alone, a row group at a time
        qs = pd.concat([g[g["id"].isin(wanted)] for g in iter_groups(unlabeled, ["id", "question", "options"])]
                       or [empty_frame("unlabeled")], ignore_index=True).set_index("id")
        joined = qs.loc[pl["unlabeled_id"], ["question", "options"]].reset_index(drop=True)
        joined["answer"] = pl["answer"].to_list()
        frames.append(joined.assign(gold=False))
    if not frames:
        return pd.DataFrame(columns=["question", "options", "answer", "gold"])
    return pd.concat(frames, ignore_index=True)


def train_adapter(cfg: SemiEvolConfig, tables: Sequence[tuple[str | Path, str]], out_dir: str | Path,
                  init_adapter: str | Path | None = None, pseudo_labels: str | Path | None = None,
                  unlabeled: str | Path | None = None, on_progress: Callable[[float], None] | None = None) -> Path:
    """LoRA SFT on the given labeled-kind tables (+ selected pseudo-labels joined to their questions).
    on_progress(fraction of the optimizer updates done) is called as training goes.
    With pseudo-labels, early stopping validates on the gold (table) rows only and a pseudo-label's
    loss is weighted cfg.final.pseudo_weight. Whether it needs training at all is the caller's business:
    a graph step runs only when its key directory is incomplete (semievol_core/store.py)."""
    from .training import train_lora

    examples = training_examples(tables, pseudo_labels, unlabeled)
    if examples.empty:
        raise ValueError("nothing to train on: no labeled rows and no selected pseudo-labels")
    # every row gold: the plain split, no weights (the warm adapter); gold rows come first
    n_gold = int(examples["gold"].sum()) if pseudo_labels is not None else None
    unload_backends()  # the training copy of the model need not share RAM with the inference copy
    result = train_lora(cfg.model, examples, Path(out_dir), cfg.train,
                        init_adapter=str(init_adapter) if init_adapter else None,
                        progress=cfg.execution.progress, threads=cfg.execution.threads,
                        gradient_checkpointing=cfg.execution.gradient_checkpointing,
                        memory_budget_bytes=int(cfg.execution.memory_gb * 2**30) if cfg.execution.memory_gb else None,
                        n_gold=n_gold, pseudo_weight=cfg.final.pseudo_weight, on_progress=on_progress)
    return Path(result.adapter_dir)


# ---------------------------------------------------------------------------- 2. in-context propagation
EMBED_CHUNK = 8192  # questions embedded (and searched) at a time: memory is a chunk, not the table
CHUNK_KEY = b"semievol.chunk_queries"  # neighbours file metadata: queries per row group (read_neighbors)


def _write_vectors(cfg: SemiEvolConfig, chunks: Iterable[list[str]], n: int, out: str | Path) -> Path:
    """The vectors of `n` questions, given a chunk of question texts at a time, as one .npy (the
    bytes np.save writes), appended with plain writes: memory is a chunk, and no memory map's
    written pages count in the process's RSS."""
    from numpy.lib import format as npy

    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        started = False
        for questions in chunks:
            chunk = get_embedder(cfg).embed(questions)
            if not started:
                npy.write_array_header_1_0(fh, {"descr": npy.dtype_to_descr(chunk.dtype), "fortran_order": False,
                                                "shape": (n, chunk.shape[1])})
                started = True
            fh.write(np.ascontiguousarray(chunk).tobytes())
        if not started:  # no rows: an empty (0, 0) array, as embedding nothing gave before
            np.save(fh, np.zeros((0, 0), dtype=np.float32))
    return out


def embed_table(cfg: SemiEvolConfig, table: str | Path, kind: str, out: str | Path) -> Path:
    """The table's question vectors as one .npy, embedded EMBED_CHUNK questions at a time: a
    million questions are 1.5 GB on disk and a chunk in memory."""
    from .data import read_rows, table_parts

    parts = table_parts(Path(table))
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in parts]
    chunks = (read_rows(part, kind, i, min(i + EMBED_CHUNK, rows))["question"].tolist()
              for part, rows in zip(parts, sizes) for i in range(0, rows, EMBED_CHUNK))
    return _write_vectors(cfg, chunks, sum(sizes), out)


def embed_shard(cfg: SemiEvolConfig, table: str | Path, kind: str, rows: Sequence[int], out: str | Path) -> Path:
    """The vectors of the (one-file) table's rows [start, stop), an embedding shard, as one .npy,
    embedded EMBED_CHUNK questions at a time: the unlabeled table is embedded a shard at a time,
    each its own cached task run, so the shards spread over the workers and rows appended later
    are embedded alone (graph: embed-unlabeled)."""
    from .data import read_rows

    start, stop = rows
    chunks = (read_rows(table, kind, i, min(i + EMBED_CHUNK, stop))["question"].tolist()
              for i in range(start, stop, EMBED_CHUNK))
    return _write_vectors(cfg, chunks, stop - start, out)


def embedding_key(table: str | Path, kind: str, rows: Sequence[int]) -> str:
    """What a shard's vectors depend on besides the embedder: its questions' text, in order."""
    from .data import read_rows

    h = hashlib.sha256()
    for q in read_rows(table, kind, *rows)["question"]:
        h.update(json.dumps(q).encode())
    return h.hexdigest()


def _npy_header(fh) -> tuple[tuple, np.dtype]:
    from numpy.lib import format as npy

    version = npy.read_magic(fh)
    shape, _, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(fh)
    return shape, dtype


def read_vectors(path: str | Path | Sequence[str | Path], start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a 2-d .npy (embed_table's), or of the files of a list taken one after
    another (embed_shard's, in row order), read from the files alone: the rest is never read, and,
    unlike a memory map, nothing stays counted in the process's RSS."""
    if not isinstance(path, (str, Path)):
        pieces, offset = [], 0
        for p in path:
            with open(p, "rb") as fh:
                rows = _npy_header(fh)[0][0]
            if offset < stop and offset + rows > start:
                pieces.append(read_vectors(p, max(start - offset, 0), min(stop - offset, rows)))
            offset += rows
        pieces = [v for v in pieces if v.size] or pieces[:1]
        return np.concatenate(pieces) if pieces else np.zeros((0, 0), dtype=np.float32)
    with open(path, "rb") as fh:
        shape, dtype = _npy_header(fh)
        width = shape[1] if len(shape) == 2 else 0
        start, stop = min(start, shape[0]), min(stop, shape[0])
        if not width or stop <= start:
            return np.zeros((max(stop - start, 0), width), dtype=dtype)
        fh.seek(fh.tell() + start * width * dtype.itemsize)
        return np.fromfile(fh, dtype=dtype, count=(stop - start) * width).reshape(stop - start, width)


def find_neighbors(cfg: SemiEvolConfig, queries: str | Path, query_kind: str,
                   query_vecs: str | Path | Sequence[str | Path], labeled: str | Path, labeled_vecs: str | Path,
                   out: str | Path) -> Path:
    """The k labeled neighbours of every query row, searched EMBED_CHUNK queries at a time and
    written one row group per chunk (read_neighbors reads a shard's chunk alone). `query_vecs`:
    one .npy, or the shards' .npy files in row order (read_vectors)."""
    from .data import read_rows

    lab = read_table(labeled, "labeled")
    lab_vecs = np.load(labeled_vecs)
    n = pq.ParquetFile(queries).metadata.num_rows
    out = Path(out)
    schema = NEIGHBOR_SCHEMA.with_metadata({**(NEIGHBOR_SCHEMA.metadata or {}), CHUNK_KEY: str(EMBED_CHUNK).encode()})
    with atomic_path(out) as tmp:
        writer = None
        for i in range(0, max(n, 1), EMBED_CHUNK):
            q = read_rows(queries, query_kind, i, min(i + EMBED_CHUNK, n))
            nb = retrieve_neighbors(q["id"].tolist(), read_vectors(query_vecs, i, i + len(q)), lab["id"].tolist(), lab_vecs,
                                    k=cfg.propagation.k_demos, unlabeled_texts=q["question"].tolist(),
                                    labeled_texts=lab["question"].tolist())
            table = pa.Table.from_pandas(nb, schema=NEIGHBOR_SCHEMA, preserve_index=False).replace_schema_metadata(
                schema.metadata)
            if writer is None:
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table, row_group_size=max(1, len(table)))  # one row group per chunk, even empty
        writer.close()
    return out


def read_neighbors(neighbors: str | Path, start: int, stop: int, ids: Sequence[str]) -> pd.DataFrame:
    """The neighbour rows of the query rows [start, stop) (with these `ids`): only the row groups
    of the chunks of queries they fall in are read, by the chunk size find_neighbors wrote in the
    file's metadata (EMBED_CHUNK for a file without it)."""
    f = pq.ParquetFile(neighbors)
    chunk = int((f.schema_arrow.metadata or {}).get(CHUNK_KEY, EMBED_CHUNK))
    groups = list(range(start // chunk, min(-(-stop // chunk), f.metadata.num_row_groups)))
    table = f.read_row_groups(groups) if groups else f.schema_arrow.empty_table()
    nb = table_frame(table)
    return nb[nb["unlabeled_id"].isin(set(ids))].reset_index(drop=True)


def demos_by_id(neighbors: pd.DataFrame, labeled: pd.DataFrame) -> dict[str, list[Demo]]:
    lab = labeled.set_index("id")
    out: dict[str, list[Demo]] = {}
    for uid, lid in zip(neighbors["unlabeled_id"], neighbors["labeled_id"]):  # sorted by rank
        row = lab.loc[lid]
        out.setdefault(uid, []).append(Demo(row["question"], row["options"], row["answer"]))
    return out


# ---------------------------------------------------------------------------- 3. collaboration
def shard_plan(table: str | Path, shard_size: int, max_shards: int) -> list[list[int]]:
    """Row ranges [start, stop) of a run's table (the unlabeled rows' shards for embedding,
    generation and justification, the test rows' for evaluation), in table order. Read from the
    file's metadata alone (data.part_sizes). The plan is a function of the data and the config,
    never of the machine's speed, since it is part of every shard's cache key. Rows appended later
    never change a shard answered before, but for at most shard_size - 1 rows (below).

    - A part of at least shard_size rows gets its own shards, never across two parts: of
      shard_size rows, or rows / max_shards (a million-row part: 200 shards of 5,000), or
      start / (max_shards // GROWTH) rows (with start the rows before the part), whichever is
      most, the last shard holding what is left. So shards grow with the table: a million rows as
      100 nightly parts of 10,000 make ~380 shards, not 7,900. A part's shards depend only on its
      size and start, so appending parts leaves them as they were.
    - Smaller parts are packed with their neighbours into groups of at least shard_size rows.
      Appending parts leaves every closed group as it was; a trailing open group (fewer than
      shard_size rows) grows and is answered again. Packing stops there and does not grow with the
      table: a bigger open group would be answered again each night. So task runs follow the
      number of small parts: a million rows in parts of 100 make 5,000 shards (ingest makes a
      part of each file: combine small files first)."""
    from .data import part_sizes

    per = max(max_shards // GROWTH, 1)
    plan, start, group = [], 0, None  # group: [first row, stop] of small parts being packed
    for rows in part_sizes(table):
        if rows >= shard_size:
            if group:
                plan.append(group)
                group = None
            size = max(shard_size, -(-rows // max_shards), start // per)
            plan += [[i, min(i + size, start + rows)] for i in range(start, start + rows, size)]
        elif rows:
            group = group or [start, start]
            group[1] += rows
            if group[1] - group[0] >= shard_size:
                plan.append(group)
                group = None
        start += rows
    return plan + ([group] if group else [])


GROWTH = 4  # a part's shards hold at least 1/(max_shards // GROWTH) of the rows before it (shard_plan)


# The config a shard's responses depend on (collaboration.py reads it; graph: the generate step).
# Left out: knn_collaborator, as the kNN vote joins the responses after generation (collect), so
# turning it on regenerates nothing; the embedder, which reaches a shard as its demonstrations;
# `rounds`, which decides the warm model (warm_key), so the nightly rounds and the weekly refresh
# share shards.
# The teacher's name enters a shard's key only when a collaborator is the teacher (teacher_key): a
# teacher that only judges disputes (justification.model) changes no answer.
GENERATION_CONFIG = ("model", "seed", "system_prompt", "answer_type", "propagation.k_demos", "collaboration",
                     "-collaboration.knn_collaborator", "-collaboration.teacher")


def generation_key(cfg: SemiEvolConfig, warm_adapter: str | Path, questions: pd.DataFrame,
                   demos: dict[str, list[Demo]], answer_type: str) -> str:
    """Everything a shard's responses depend on: its questions and demos, the warm adapter's
    weights, the generation settings, the code version. Execution settings are left out."""
    h = hashlib.sha256()
    h.update(CODE_VERSION.encode())
    h.update(cfg.result_key(*GENERATION_CONFIG).encode())
    h.update(answer_type.encode())  # the resolved type ("auto" in the config decides nothing alone)
    h.update(warm_key(cfg, warm_adapter).encode())
    h.update(teacher_key(cfg).encode())
    for uid, q, o in zip(questions["id"], questions["question"], questions["options"]):
        h.update(json.dumps([uid, q, o, [(d.question, d.options, d.answer) for d in demos.get(uid, [])]]).encode())
    return h.hexdigest()


def teacher_key(cfg: SemiEvolConfig) -> str:
    """The teacher's part of a shard's key: its name when a collaborator is the teacher, else ""
    (the key of a run without one is what it was before teachers existed). The name is the
    teacher's identity: a server that starts serving another model must come with another name."""
    return f"teacher:{cfg.collaboration.teacher}" if answers_with_teacher(cfg) else ""


def answers_with_teacher(cfg: SemiEvolConfig) -> bool:
    """Whether a collaborator is collaboration.teacher (then generation needs its backend)."""
    return any(c.model == "teacher" for c in collaborators_of(cfg))


def warm_key(cfg: SemiEvolConfig, warm_adapter: str | Path) -> str:
    """The warm model's part of a shard's key: its weights, or, with rounds.reuse_pseudo_labels,
    nothing, so a shard answered once is kept whichever champion labels the next night's rows."""
    return "any warm model" if cfg.rounds.reuse_pseudo_labels else content_digest(warm_adapter)


def shard_inputs(rows: Sequence[int], unlabeled: str | Path, labeled: str | Path,
                 neighbors: str | Path) -> tuple[pd.DataFrame, dict[str, list[Demo]]]:
    """One shard's questions (rows [start, stop) of the run's unlabeled table) and their
    demonstrations, read without the rest of either table (data.read_rows, read_neighbors)."""
    from .data import read_rows

    start, stop = rows
    qs = read_rows(unlabeled, "unlabeled", start, stop)
    return qs, demos_by_id(read_neighbors(neighbors, start, stop, qs["id"].tolist()), read_table(labeled, "labeled"))


def shard_generation_key(cfg: SemiEvolConfig, rows: Sequence[int], unlabeled: str | Path, labeled: str | Path,
                         neighbors: str | Path, warm_adapter: str | Path, answer_type: str) -> str:
    """generation_key of one shard: rows appended to the tables later do not change it."""
    return generation_key(cfg, warm_adapter, *shard_inputs(rows, unlabeled, labeled, neighbors), answer_type)


def collaborators_of(cfg: SemiEvolConfig):
    collab = cfg.collaboration
    return collab.collaborators or plan_collaborators(collab.n_collaborators, cfg.propagation.k_demos, cfg.seed)


def generate_shard(cfg: SemiEvolConfig, rows: Sequence[int], unlabeled: str | Path, labeled: str | Path,
                   neighbors: str | Path, warm_adapter: str | Path, out: str | Path,
                   answer_type: str, on_progress: Callable[[float], None] | None = None) -> Path:
    """Responses of every collaborator for one shard of questions, as one file. on_progress(fraction
    of the shard done) is called as collaborator groups finish."""
    qs, demos = shard_inputs(rows, unlabeled, labeled, neighbors)
    teacher = get_backend(cfg, teacher=True) if answers_with_teacher(cfg) else None
    responses = generate_responses(get_backend(cfg), qs, demos, collaborators_of(cfg), str(warm_adapter),
                                   cfg, answer_type, on_progress=on_progress, teacher_backend=teacher)
    return save_frame(responses, out)


def collect_responses(cfg: SemiEvolConfig, shard_rows: Sequence[Sequence[int]], shard_files: Sequence[str | Path],
                      labeled: str | Path, neighbors: str | Path, out: str | Path) -> Path:
    """All shards in one table, one row group per shard holding every response to its questions
    (+ the kNN label vote as a collaborator when configured): vote and select then read it a
    shard at a time, and memory stays one shard whatever the number of rows."""
    knn = cfg.collaboration.knn_collaborator
    lab = read_table(labeled, "labeled") if knn else None
    answers = dict(zip(lab["id"], lab["answer"])) if knn else {}

    def shards() -> Iterator[pd.DataFrame]:
        for rows, file in zip(shard_rows, shard_files, strict=True):
            df = load_frame(file)
            if knn and len(df):
                votes = knn_label_vote(read_neighbors(neighbors, *rows, ids=df["unlabeled_id"].unique()), answers)
                if len(votes):
                    df = pd.concat([df, knn_responses(votes)], ignore_index=True)
            yield df
    return write_groups(shards(), out, RESPONSE_SCHEMA)


# ---------------------------------------------------------------------------- 4-5. vote, justify, select
def vote_step(responses: str | Path, out: str | Path) -> Path:
    """Votes a shard at a time (a responses row group holds all of its questions' responses)."""
    return write_groups(map(vote, iter_groups(responses)), out, VOTE_SCHEMA)


# The config self-justification reads (justification.py; graph: the justify step): the rest of
# `collaboration` reaches it through the responses, and `rounds` through warm_key.
JUSTIFICATION_CONFIG = ("model", "system_prompt", "seed", "collaboration.mode", "collaboration.teacher",
                        "justification")


def justification_inputs(rows: Sequence[int], votes: str | Path, responses: str | Path,
                         unlabeled: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One shard's votes, responses and questions: rows [start, stop) of the unlabeled table, the
    shard's own responses file (its generation output) and the votes read filtered to its
    questions, so no shard reads the whole responses table."""
    from .data import read_rows

    qs = read_rows(unlabeled, "unlabeled", *rows)
    ids = qs["id"].tolist()
    resp = load_frame(responses)
    return _rows_of(votes, ids), resp[resp["unlabeled_id"].isin(set(ids))], qs


def _rows_of(path: str | Path, ids: list[str]) -> pd.DataFrame:
    """The rows of a step's table whose unlabeled_id is in `ids`, in file order (a filtered scan:
    memory stays one row group, not the table)."""
    table = pq.read_table(path, filters=[("unlabeled_id", "in", ids)]) if ids else pq.read_schema(path).empty_table()
    return table_frame(table)


def justification_key(cfg: SemiEvolConfig, rows: Sequence[int], votes: str | Path, responses: str | Path,
                      unlabeled: str | Path, warm_adapter: str | Path, answer_type: str) -> str:
    """Everything one shard's justifications depend on: its questions, their votes and responses,
    the warm model (steps.warm_key), the settings, the code version. Other shards' rows do not
    enter, so an old question is not justified again when new rows arrive."""
    return _justification_key(cfg, *justification_inputs(rows, votes, responses, unlabeled), warm_adapter,
                              answer_type)


def _justification_key(cfg: SemiEvolConfig, vt: pd.DataFrame, resp: pd.DataFrame, qs: pd.DataFrame,
                       warm_adapter: str | Path, answer_type: str) -> str:
    h = hashlib.sha256()
    h.update(CODE_VERSION.encode())
    h.update(cfg.result_key(*JUSTIFICATION_CONFIG).encode())
    h.update(answer_type.encode())
    h.update(warm_key(cfg, warm_adapter).encode())
    for frame in (vt, resp[["unlabeled_id", "model", "answer", "text"]], qs[["id", "question", "options"]]):
        h.update(frame.to_json(orient="values").encode())
    return h.hexdigest()


def justify_shard(cfg: SemiEvolConfig, rows: Sequence[int], votes: str | Path, responses: str | Path,
                  unlabeled: str | Path, warm_adapter: str | Path, answer_type: str, out: str | Path) -> Path:
    """The warm model's (or, with justification.model: teacher, the teacher's) decisions on one
    shard's disputed questions, as one file."""
    vt, resp, qs = justification_inputs(rows, votes, responses, unlabeled)
    if cfg.justification.model == "teacher":
        backend, adapter = get_backend(cfg, teacher=True), None
    else:
        backend, adapter = get_backend(cfg), str(warm_adapter)
    return save_frame(justify(backend, vt, resp, qs, adapter, cfg, answer_type), out)


def collect_justified(shard_files: Sequence[str | Path], out: str | Path) -> Path:
    from .justification import JUSTIFIED_COLUMNS

    frames = [f for f in map(load_frame, shard_files) if len(f)]
    return save_frame(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=JUSTIFIED_COLUMNS),
                      out)


def _aligned_groups(votes: str | Path, responses: str | Path, columns: Sequence[str]):
    """The votes' and the responses' row groups side by side (vote_step writes one per responses
    row group); ValueError naming both files when their counts differ."""
    n_votes, n_resp = pq.ParquetFile(votes).num_row_groups, pq.ParquetFile(responses).num_row_groups
    if n_votes != n_resp:
        raise ValueError(f"{votes} has {n_votes} row groups and {responses} {n_resp}: both must come from "
                         f"collect and vote of the same run")
    return zip(iter_groups(votes), iter_groups(responses, columns))


def select_step(cfg: SemiEvolConfig, votes: str | Path, justified: str | Path, responses: str | Path,
                labeled: str | Path, out: str | Path) -> Path:
    """pseudo_labels.parquet (selection.PSEUDO_COLUMNS). `labeled` gives class_quota its prior.
    Rules 1-2 run a shard at a time (the votes' and responses' row groups are the same shards);
    only one compact row per question is held for the cut over the whole pool."""
    lab = read_table(labeled, "labeled")
    sel = cfg.selection
    if sel.class_quota == "prior" and lab["options"].isna().any():
        raise ValueError("class_quota 'prior' needs a multiple-choice task (options on every labeled "
                         "row): with free answers every distinct answer would be a class")
    check_selection(sel.theta, sel.scope, sel.class_balance, sel.source_balance, sel.agreement, sel.class_quota,
                    lab["answer"].tolist())
    columns = ["unlabeled_id", "answer", "H"]  # what a pseudo-label takes from a justification
    just = table_frame(pq.read_table(justified, columns=columns))
    chunks = []
    for group, (vt, resp) in enumerate(_aligned_groups(votes, responses, ["unlabeled_id", "model", "answer", "H"])):
        ids = set(vt["unlabeled_id"])
        if ids != set(resp["unlabeled_id"]):
            raise ValueError(f"{votes} row group {group} does not hold the questions of {responses} row group "
                             f"{group}: both must come from collect and vote of the same run")
        chunks.append(candidates(vt, just[just["unlabeled_id"].isin(ids)], resp, sel.agreement))
    if not chunks:  # no questions: the empty table, with its columns
        chunks = [candidates(pd.DataFrame(columns=VOTE_SCHEMA.names), just, pd.DataFrame(columns=RESPONSE_SCHEMA.names),
                             sel.agreement)]
    pool = pd.concat(chunks, ignore_index=True)
    del chunks, just  # the cut holds the one compact pool, not its chunks besides it
    df = cut(pool, sel.theta, sel.scope, sel.class_balance, sel.source_balance, sel.class_quota,
             lab["answer"].tolist())
    return save_frame(df, out)


def class_names(options: Iterable) -> dict[str, str]:
    """Option letter -> "A (negative)" when every question offers the same options (a labeling
    task such as sentiment), else letter -> letter: counts per letter then mean nothing more."""
    from .answers import LETTERS

    distinct = set()
    for o in options:
        if o is not None:
            distinct.add(tuple(o))
            if len(distinct) > 1:
                return {}
    if len(distinct) != 1:
        return {}
    return {LETTERS[i]: f"{LETTERS[i]} ({text})" for i, text in enumerate(next(iter(distinct)))}


def selection_stats(pseudo: str | Path, votes: str | Path, oracle: str | Path | None,
                    answer_type: str, unlabeled: str | Path | None = None, labeled: str | Path | None = None,
                    responses: str | Path | None = None, agreement: str = "none") -> dict:
    """What selection kept and why: counts, the labels each rule removed (`removed_unparsed`,
    `removed_by_agreement`, `removed_by_threshold`: H cut or class quota; with `responses` and the
    config's `agreement`), accuracy against the oracle when there is one, the selected classes
    by label name (`selected_class_counts`) and, for a choice task with `labeled`, `class_mix`
    {class: {"labeled": prior share, "selected": share}}. A class more than 15 points off its prior
    (or an empty selection) adds `class_mix_warning`, also logged as a warning. Of the votes and
    responses only the columns it counts are read (one row per question at most)."""
    from .answers import answers_equal

    pl = load_frame(pseudo)
    consensus = pq.read_table(votes, columns=["consensus"]).column(0)
    sel = pl[pl["selected"]]
    stats = {
        "n_unlabeled": len(consensus),
        "n_consensus": int(pc.sum(consensus).as_py() or 0),
        "n_justified": int((pl["source"] == "justified").sum()),
        "n_selected": int(len(sel)),
        "threshold": float(pl["threshold"].dropna().iloc[0]) if pl["threshold"].notna().any() else None,
        "pseudo_label_accuracy": None,
    }
    if responses is not None:
        columns = ["unlabeled_id", "model", "answer"]  # the kNN votes are all removal_counts reads
        knn = pq.read_table(responses, columns=columns, filters=[("model", "==", "knn")])
        stats.update(removal_counts(pl, table_frame(knn), agreement))
    if oracle is not None and Path(oracle).exists():
        truth = read_table(oracle, "oracle")
        gold = pd.Series(truth["answer"].values, index=truth["id"].values)
        def acc(frame):
            truth_of = frame["unlabeled_id"].map(gold)
            known = truth_of.notna()
            if not known.any():
                return None
            return float(np.mean([answers_equal(a, g, answer_type)
                                  for a, g in zip(frame["answer"][known], truth_of[known])]))
        stats["pseudo_label_accuracy"] = acc(sel)
        stats["pseudo_label_accuracy_all"] = acc(pl)
        stats["consensus_accuracy"] = acc(pl[pl["source"] == "consensus"])
    names = class_names(option_cells(unlabeled)) if unlabeled is not None else {}
    stats["selected_class_counts"] = {names.get(str(k), str(k)): int(v)
                                      for k, v in sel["answer"].value_counts().sort_index().items()}
    if labeled is not None and answer_type == "choice":  # free answers: a "class" per answer says nothing
        mix = class_mix(sel["answer"], read_table(labeled, "labeled")["answer"])
        stats["class_mix"] = {names.get(str(k), str(k)): v for k, v in mix.items()}
        warning = class_mix_warning(stats["class_mix"])
        if warning:
            stats["class_mix_warning"] = warning
            logging.getLogger(__name__).warning("pseudo-label selection: %s", warning)
    return stats


# ---------------------------------------------------------------------------- 7. evaluation
SYSTEMS = ("vanilla", "rag_knn", "knn_vote", "sft", "semievol")
NEIGHBOR_SYSTEMS = ("rag_knn", "knn_vote")  # systems that read the labeled neighbours of a test row
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # no "/", no leading ".": stays in predictions/


def check_model_name(name: str) -> str:
    """The evaluate flow's `name` (it writes predictions/<name>.parquet), or ValueError: a path
    ("../x", "/x") would write outside the run directory, and evolve's neighbour systems are taken."""
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"name {name!r}: use letters, digits, '_', '-' and '.' (it names predictions/<name>.parquet)")
    if name in NEIGHBOR_SYSTEMS:
        raise ValueError(f"name {name!r} is reserved for evolve's neighbour-based systems")
    return name


def predict_shard(cfg: SemiEvolConfig, system: str, test: str | Path, rows: Sequence[int], answer_type: str,
                  out: str | Path, adapter: str | Path | None = None, labeled: str | Path | None = None,
                  test_neighbors: str | Path | None = None) -> Path:
    """`system`'s predictions on the test rows [start, stop), written to `out` (one evaluation
    shard: graph's evaluate-<system> fans out by them; score_predictions joins them)."""
    from .data import read_rows

    tst = read_rows(test, "test", *rows)
    if system in NEIGHBOR_SYSTEMS:
        if labeled is None or test_neighbors is None:
            raise ValueError(f"system {system!r} needs the labeled table and the test neighbours")
        nb, lab = read_neighbors(test_neighbors, *rows, tst["id"].tolist()), read_table(labeled, "labeled")
    if system == "knn_vote":
        votes = knn_label_vote(nb, dict(zip(lab["id"], lab["answer"])))
        by_id = dict(zip(votes["unlabeled_id"], votes["answer"]))
        from .answers import answers_equal

        answers = [by_id.get(i) for i in tst["id"]]
        preds = pd.DataFrame({"id": tst["id"], "text": [f"Answer: {a}" for a in answers], "answer": answers,
                              "parse_ok": [a is not None for a in answers], "gold": tst["answer"],
                              "correct": [answers_equal(a, g, answer_type) for a, g in zip(answers, tst["answer"])]})
    else:
        demos = demos_by_id(nb, lab) if system == "rag_knn" else None
        preds = predict(get_backend(cfg), tst, answer_type, adapter=str(adapter) if adapter else None,
                        demos_by_id=demos, n_demos=cfg.propagation.k_demos if demos else 0,
                        mode=cfg.evaluation.mode, max_new_tokens=cfg.evaluation.max_new_tokens,
                        system=cfg.system_prompt)
    return save_frame(preds, out)


def score_predictions(cfg: SemiEvolConfig, shards: Sequence[str | Path], answer_type: str, out: str | Path) -> dict:
    """The evaluation shards' predictions joined in order into `out`; returns the metrics."""
    frames = [load_frame(s) for s in shards]
    preds = (pd.concat(frames, ignore_index=True) if frames else
             pd.DataFrame({c: pd.Series([], dtype=object) for c in ("id", "text", "answer", "parse_ok", "gold")})
             .assign(correct=pd.Series([], dtype=bool)))
    save_frame(preds, out)
    return metrics(preds, answer_type, bootstrap_samples=cfg.evaluation.bootstrap_samples, seed=cfg.seed)


def evaluate_system(cfg: SemiEvolConfig, system: str, test: str | Path, answer_type: str, out: str | Path,
                    adapter: str | Path | None = None, labeled: str | Path | None = None,
                    test_neighbors: str | Path | None = None) -> dict:
    """Predictions on the whole (one-file) test table written to `out`; returns the metrics."""
    rows = [0, pq.ParquetFile(test).metadata.num_rows]
    out = predict_shard(cfg, system, test, rows, answer_type, out, adapter=adapter, labeled=labeled,
                        test_neighbors=test_neighbors)
    return metrics(load_frame(out), answer_type, bootstrap_samples=cfg.evaluation.bootstrap_samples, seed=cfg.seed)


SIGNIFICANCE = 0.05  # McNemar p below which a difference counts as real


def compare(pred_a: str | Path, pred_b: str | Path, bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    """System a against system b on the same test questions: the accuracy difference with its
    paired 95% CI, McNemar's exact p, and whether a is better (higher, with p < SIGNIFICANCE)."""
    from .stats import mcnemar_exact, paired_difference

    a, b = load_frame(pred_a), load_frame(pred_b)
    merged = a.merge(b, on="id", suffixes=("_a", "_b"))
    ca, cb = merged["correct_a"].tolist(), merged["correct_b"].tolist()
    diff, lo, hi = paired_difference(ca, cb, samples=bootstrap_samples, seed=seed)
    p = mcnemar_exact(ca, cb)
    return {"difference": diff, "ci_low": lo, "ci_high": hi, "mcnemar_p": p, "n": len(merged),
            "better": bool(diff > 0 and p < SIGNIFICANCE)}


def verdict(pred_dir: str | Path, cfg: SemiEvolConfig) -> dict:
    """The report entries that answer "is SemiEvol better than SFT?" (both predictions present)."""
    cmp = compare(Path(pred_dir) / "semievol.parquet", Path(pred_dir) / "sft.parquet",
                  cfg.evaluation.bootstrap_samples, cfg.seed)
    return {"semievol_vs_sft": cmp, "mcnemar_p_semievol_vs_sft": cmp["mcnemar_p"]}
