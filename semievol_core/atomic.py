"""Atomic writes: a file or directory appears complete or not at all, never half-written.

    with atomic_path("runs/1/report.json") as tmp:       # a hidden temp file next to the target
        tmp.write_text(text)                            # clean exit: fsync, rename onto the target
    with atomic_dir("runs/1/warm_adapter") as tmp:       # a hidden temp directory next to it
        model.save_pretrained(tmp)                      # clean exit: swapped in for the target
    with temp_file("data/x/unlabeled/part") as tmp:      # only the temp: the caller publishes it
        ...                                             # (data.append_part links it, never overwrites)
    with exclusive_lock(Path("data/x/.ingest.lock")):    # one writer at a time, across processes
        ...

A temp is a sibling of its target (same directory, so the same file system, where rename(2) is
atomic) named `.<name>.<random hex>.tmp`: hidden, so readers of a directory of parts skip it, and
unique, so concurrent writers never share one. On an exception the temp is removed and the target
is left as it was.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.{tag}")


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
    (replacing any old file). On an exception the old file, if any, is untouched."""
    path = Path(path)
    with temp_file(path) as tmp:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)


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


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing) for the duration of the block. flock,
    not a Prefect limit: it also serializes processes started outside Prefect, and the kernel
    releases it when a killed process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_symlink(target: str | Path, link: str | Path) -> None:
    """Point `link` at `target` in one rename(2): readers see the old target or the new one."""
    link = Path(link)
    with temp_file(link) as tmp:
        os.symlink(target, tmp)
        os.replace(tmp, link)
