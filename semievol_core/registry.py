"""The adapter registry: every adapter a run made, with its lineage; one champion; rollback.

    reg = Registry("data/fpb/registry")
    rec = reg.register("runs/nightly/semievol_adapter", run="runs/nightly", round=3, tables={...},
                       config={...}, metrics={...})        # idempotent: same bytes, same record
    reg.promote(rec["id"], decision={...})                 # the challenger becomes champion
    reg.reject(rec["id"], decision={...})                  # it lost: recorded, champion untouched
    reg.champion()                                         # its record, or None
    reg.rollback()                                         # the champion before the current one
    reg.history()                                          # every event, oldest first

Layout (what a serving process points at: `<registry>/champion`):
    adapters/<id>/            a copy of the adapter (peft files) + record.json
    champion -> adapters/<id> a symlink, swapped by rename(2), so it names one adapter at every
                              instant: a crash leaves the old champion or the new, never none or two
    events.jsonl              registered / promoted / rejected / rolled-back, one JSON line each
    .lock                     every change happens under this flock, so two runs (or a run and a
                              `semievol registry promote`) never interleave

events.jsonl is the truth: the champion is the top of the stack that replaying it builds
(promoted pushes, rolled-back pops). An event is appended before the link moves, and opening the
registry points the link at the replayed champion, so a crash between the two is repaired by the
next reader. Ids are `<UTC time>-<first 10 hex of the adapter's sha256>`.

    vllm serve <base model> --enable-lora --lora-modules semievol=<registry>/champion
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .atomic import atomic_dir, atomic_symlink, exclusive_lock, fsync_file, remove_leftover_temps

CHAMPION = "champion"
EVENTS = "events.jsonl"
RECORD = "record.json"


class RegistryError(ValueError):
    """A registry request that cannot be met (unknown id, nothing to roll back to)."""


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.adapters = self.root / "adapters"
        if (self.root / EVENTS).exists():
            with self._locked():
                self._sync_link()

    # ---------------------------------------------------------------------------- reading
    def history(self) -> list[dict]:
        path = self.root / EVENTS
        if not path.exists():
            return []
        text = path.read_text(encoding="utf-8")
        # Only newline-terminated lines are events: a crash mid-append leaves a torn last line
        # without its newline, and the next _append cuts it off before writing.
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def _stack(self) -> list[str]:
        stack: list[str] = []
        for e in self.history():
            if e["event"] == "promoted":
                stack.append(e["id"])
            elif e["event"] == "rolled-back":
                stack.pop()
        return stack

    def champion_id(self) -> str | None:
        stack = self._stack()
        return stack[-1] if stack else None

    def champion(self) -> dict | None:
        cid = self.champion_id()
        return self.record(cid) if cid else None

    def champion_path(self) -> Path | None:
        """The stable path a server loads (`<registry>/champion`), or None without a champion."""
        return self.root / CHAMPION if self.champion_id() else None

    def record(self, adapter_id: str) -> dict:
        path = self.adapters / adapter_id / RECORD
        # An id is one plain name: "../x" or "/x" would reach a record outside the registry.
        if adapter_id in ("", "..") or Path(adapter_id).name != adapter_id or not path.exists():
            raise RegistryError(f"{self.root}: no adapter {adapter_id!r} (see `semievol registry list`)")
        return json.loads(path.read_text(encoding="utf-8"))

    def records(self) -> list[dict]:
        """Every registered adapter in the order it was registered, with `champion: true` on the
        current one."""
        cid = self.champion_id()
        order = [e["id"] for e in self.history() if e["event"] == "registered"]
        recs = [self.record(i) for i in order if (self.adapters / i / RECORD).exists()]
        return [{**r, "champion": r["id"] == cid} for r in recs]

    # ---------------------------------------------------------------------------- changing
    def register(self, adapter: str | Path, **facts: Any) -> dict:
        """Copy `adapter` in with its facts (run, round, parent, table digests, config, metrics).
        The same bytes registered again return the first record."""
        from .steps import file_digest

        digest = file_digest(adapter)
        with self._locked():
            for rec in self.records():
                if rec["digest"] == digest:
                    return rec
            adapter_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{digest[:10]}"
            rec = {"id": adapter_id, "digest": digest, "source": str(Path(adapter).resolve()),
                   "parent": self.champion_id(), "created": _now(), **facts}
            with atomic_dir(self.adapters / adapter_id) as tmp:
                for f in Path(adapter).iterdir():
                    if f.is_file() and not f.name.startswith("."):
                        shutil.copy2(f, tmp / f.name)
                (tmp / RECORD).write_text(json.dumps(rec, indent=2, default=str) + "\n", encoding="utf-8")
            self._append({"event": "registered", "id": adapter_id})
            return rec

    def promote(self, adapter_id: str, decision: dict | None = None, expected: str | None | bool = False) -> bool:
        """Make `adapter_id` the champion; False if it already is. `expected`: the champion the
        gate compared against (None: there was none); if another run or a hand promotion has
        changed the champion since, the gate's decision is stale and RegistryError is raised."""
        with self._locked():
            self.record(adapter_id)
            if self.champion_id() == adapter_id:
                return False
            if expected is not False and self.champion_id() != expected:
                raise RegistryError(f"{self.root}: the champion changed to {self.champion_id()} while this run "
                                    f"was gated against {expected or 'no champion'}; not promoted")
            self._append({"event": "promoted", "id": adapter_id, "previous": self.champion_id(),
                          "decision": decision})
            self._sync_link()
            return True

    def was_champion(self, adapter_id: str) -> bool:
        """`adapter_id` has been champion before (and was replaced or rolled back since)."""
        return any(e["event"] == "promoted" and e["id"] == adapter_id for e in self.history())

    def reject(self, adapter_id: str, decision: dict | None = None) -> None:
        """Record that `adapter_id` lost its gate; the champion is left as it is (once per id)."""
        with self._locked():
            self.record(adapter_id)
            if any(e["event"] == "rejected" and e["id"] == adapter_id for e in self.history()):
                return
            self._append({"event": "rejected", "id": adapter_id, "champion": self.champion_id(),
                          "decision": decision})

    def rollback(self) -> str:
        """Back to the champion before the current one; returns its id."""
        with self._locked():
            stack = self._stack()
            if len(stack) < 2:
                raise RegistryError(f"{self.root}: nothing to roll back to "
                                    f"({'no champion' if not stack else 'the first champion is the current one'})")
            self._append({"event": "rolled-back", "id": stack[-1], "to": stack[-2]})
            self._sync_link()
            return stack[-2]

    # ---------------------------------------------------------------------------- internals
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Every change holds this lock; holding it, temps a killed writer left are removed."""
        with exclusive_lock(self.root / ".lock"):
            remove_leftover_temps(self.root)
            yield

    def _append(self, event: dict) -> None:
        """One line, fsynced before the caller moves the link (see the module docstring). A torn
        line a crashed writer left (no newline) is cut off first, under the lock."""
        path = self.root / EVENTS
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as fh:
            fh.seek(0)
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
            fh.seek(0, os.SEEK_END)
            fh.write((json.dumps({**event, "at": _now(), "pid": os.getpid()}, default=str) + "\n").encode())
        fsync_file(path)

    def _sync_link(self) -> None:
        """Point `champion` at the replayed champion (or remove it when there is none)."""
        link, cid = self.root / CHAMPION, self.champion_id()
        target = Path("adapters") / cid if cid else None
        if target is None:
            link.unlink(missing_ok=True)
        elif not link.is_symlink() or Path(os.readlink(link)) != target:
            atomic_symlink(target, link)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
