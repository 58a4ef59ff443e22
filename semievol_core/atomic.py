"""Atomic writes: a file or directory appears complete or not at all, never half-written.

    with atomic_path("runs/1/report.json") as tmp:       # a hidden temp file next to the target
        tmp.write_text(text)                            # clean exit: fsync, rename onto the target
    with atomic_dir("runs/1/warm_adapter") as tmp:       # a hidden temp directory next to it
        model.save_pretrained(tmp)                      # clean exit: swapped in for the target
    with temp_file("data/x/unlabeled/part") as tmp:      # only the temp: the caller publishes it
        ...                                             # (data.append_part links it, never overwrites)
    with exclusive_lock(Path("data/x/.ingest.lock")):    # one writer at a time, across processes
        ...
    with exclusive_lock(Path("runs/1/.run.lock"), wait=False):  # LockHeld at once if taken
        remove_leftover_temps("runs/1")                 # temps of writes a killed run left

A temp is a sibling of its target (same directory, so the same file system, where rename(2) is
atomic) named `.<name>.<random hex>.tmp`: hidden, so readers of a directory of parts skip it, and
unique, so concurrent writers never share one. On an exception the temp is removed and the target
is left as it was; a write that fails for lack of space (or any other OSError) says which target
was not written, not the temp's name.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


# What _sibling names: `.<name>.<32 hex>.tmp` (a write in progress) or `.old` (a directory being
# swapped out). A process killed mid-write leaves one behind; nothing else is named like this.
TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{32}\.(tmp|old)$")


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.{tag}")


def leftover_temps(root: str | Path) -> list[Path]:
    """Temps (TEMP_NAME) anywhere under `root`, sorted: what writes killed mid-way left behind."""
    return sorted(p for p in Path(root).rglob(".*") if TEMP_NAME.match(p.name)) if Path(root).exists() else []


def remove_leftover_temps(root: str | Path) -> list[Path]:
    """Delete the temps under `root` (leftover_temps); returns them. Only for the holder of the
    lock every writer under `root` takes: then no temp there is a live write, each one is what a
    writer killed mid-way (kill -9, power cut) left, and nothing else would ever remove it."""
    temps = leftover_temps(root)
    for p in temps:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return temps


def fsync_file(path: str | Path) -> None:
    """Flush a file's bytes to disk, so a rename that publishes it never exposes an empty file
    after a power cut."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def temp_file(path: str | Path) -> Iterator[Path]:
    """A hidden, unique temp path next to `path` (parents created), removed on the way out
    whether or not the caller renamed or linked it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; on a clean exit fsync it and rename it onto `path`
    (replacing any old file). On an exception the old file, if any, is untouched; an OSError
    (a full disk: ENOSPC, often only at fsync) is raised again naming `path`."""
    path = Path(path)
    with temp_file(path) as tmp:
        try:
            yield tmp
            fsync_file(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            raise _not_written(path, exc) from exc


def _not_written(path: Path, exc: OSError) -> OSError:
    """The same kind of OSError (same errno, so ENOSPC stays ENOSPC), on one line naming the target."""
    reason = " ".join((exc.strerror or str(exc)).split())
    message = f"{path}: not written ({reason}); the previous version, if any, is unchanged"
    return OSError(exc.errno, message) if exc.errno is not None else OSError(message)


@contextmanager
def atomic_dir(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temp directory to fill; on a clean exit it becomes `path`.

    replace=True: an existing `path` is swapped out (moved aside, then deleted), so a reader sees
    the old complete directory, nothing for an instant, or the new complete one.
    replace=False: an existing non-empty `path` wins (a concurrent writer of the same content got
    there first) and the temp is discarded. On an exception the temp is deleted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):  # the bytes are on disk before the name is: a power cut never
            if f.is_file():        # leaves a published directory of empty files
                fsync_file(f)
        if replace:
            _swap_in(tmp, path)
        else:
            try:
                os.rename(tmp, path)  # onto a missing or empty directory only
            except OSError:
                if not path.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was renamed into place


def _swap_in(new: Path, path: Path) -> None:
    old = None
    if path.exists():
        old = _sibling(path, "old")
        os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)  # put the old one back rather than leave nothing
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class LockHeld(RuntimeError):
    """exclusive_lock(wait=False) found the lock taken by another process."""


@contextmanager
def exclusive_lock(path: Path, *, wait: bool = True) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing) for the duration of the block; the holder
    writes its pid into the file. wait=False: if another process holds it, raise LockHeld at once,
    naming the directory and that pid, instead of waiting. flock, not a Prefect limit: it also
    serializes processes started outside Prefect, and the kernel releases it when a killed process
    dies (a stale pid left in the file is overwritten by the next holder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "unknown"
            raise LockHeld(f"{path.parent}: in use by another run (pid {pid}, lock {path.name}); "
                           "wait for it to finish or use another directory") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_symlink(target: str | Path, link: str | Path) -> None:
    """Point `link` at `target` in one rename(2): readers see the old target or the new one."""
    link = Path(link)
    with temp_file(link) as tmp:
        os.symlink(target, tmp)
        os.replace(tmp, link)
