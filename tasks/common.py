"""What every SemiEvol task shares: content digests, API keys from Prefect Secret blocks, the `gpu` slot.

    from tasks.common import content_digest, gpu_slot, record_execution

Content digests: input tables and adapters enter cache keys (tasks/step.py, semievol_core.graph.step_key)
by the sha256 of their bytes, memoised per path, size and mtime, so hashing a big table once per
run is the whole cost.

No task retries: the OpenAI backend retries each request itself within one deadline
(semievol_core/backends/openai_http.py says why Prefect does not retry on top), and bad data,
bad configs and code errors would only fail again.

API keys: importing this module teaches `semievol_core.config.resolve_api_key` to read
`execution.backend.api_key: "secret:<block>"` from a Prefect Secret block, inside the task that builds the
backend. The flow and task parameters carry only the reference, never the key.

The `gpu` global concurrency limit: tasks that use the accelerator run inside `gpu_slot()`, so two
runs on one machine queue for the device instead of fighting over its memory. Flows call
`ensure_gpu_limit()` first, which creates the limit (default 1 slot, `SEMIEVOL_GPU_SLOTS`) if the
server has none (one slot per device: per Dask worker when the fan-out runs on a cluster);
without it Prefect's `concurrency()` logs a warning and does not limit at all.
A run killed while it holds the slot must not block every later run: slots are leased for
GPU_LEASE_SECONDS (a lasting server revokes a lease its dead holder stops renewing), and without a
lasting server, where nothing revokes leases, `free_orphaned_slots` gives back the slots beyond
the live processes registered under PREFECT_HOME as holding one. A waiting run logs every 30 s.

`record_execution(label)`: appends `label` to the file named by `SEMIEVOL_TASK_LOG` (if set) when a
task body really runs, i.e. not on a cache hit. Tests count re-executions with it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from prefect.concurrency.sync import concurrency

from semievol_core import config, steps

GPU_LIMIT = "gpu"
TASK_LOG_ENV = "SEMIEVOL_TASK_LOG"
GPU_SLOTS_ENV = "SEMIEVOL_GPU_SLOTS"


# ------------------------------------------------------------------------------ content digests
content_digest = steps.content_digest  # memoised per size and mtime (semievol_core/steps.py)


# ------------------------------------------------------------------------------ API keys
def _secret_block(name: str) -> str:
    """The value of the Prefect Secret block `name` (ValueError if there is none)."""
    from prefect.blocks.system import Secret

    value = Secret.load(name).value.get_secret_value()  # not .get(): it would parse "123" as JSON
    if not isinstance(value, str):
        raise ValueError(f"Prefect Secret block {name!r} holds JSON, not an API key string")
    return value


config.KEY_READERS["secret"] = _secret_block


# ------------------------------------------------------------------------------ the `gpu` slot
# A slot is held through a lease the holder renews in the background; a lasting server revokes a
# lease that is not renewed (its holder died) after this many seconds. Short, so a crashed nightly
# run frees the device for the next night within a minute, not Prefect's default 5.
GPU_LEASE_SECONDS = 60
WAIT_LOG_SECONDS = 30  # while waiting for the slot, say so this often
POLL_SECONDS = 2.0  # between looks for a free slot (the holders' lock is free meanwhile)
FREE_HINT = f"prefect gcl update {GPU_LIMIT} --active-slots 0"


def _holders_dir() -> Path:
    """Where processes register while they wait for or hold a `gpu` slot: one file each, under
    PREFECT_HOME, the same place as the ephemeral server's database that counts the slots."""
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home) / "semievol-gpu-holders"


def _holders_lock():
    """This machine's processes take a slot and mark themselves holding under this lock, and
    free_orphaned_slots counts holders under it: it never sees a slot granted but not yet marked."""
    from semievol_core.atomic import exclusive_lock

    return exclusive_lock(_holders_dir() / ".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _registered() -> tuple[list[dict], list[Path]]:
    """(live registrations, files of dead processes) under PREFECT_HOME."""
    live, dead = [], []
    d = _holders_dir()
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))  # written whole (save_json), never torn
        except (OSError, ValueError):  # removed between the glob and the read
            continue
        # another host's process (a shared PREFECT_HOME) cannot be checked: count it as live
        if rec.get("host") != socket.gethostname() or _alive(int(rec["pid"])):
            live.append(rec)
        else:
            dead.append(f)
    return live, dead


def _gpu_limit(client):
    """The server's `gpu` limit, or None when it has none."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_global_concurrency_limit_by_name(GPU_LIMIT)
    except ObjectNotFound:
        return None


def free_orphaned_slots(logger) -> int:
    """Give back `gpu` slots no live process holds; returns how many were freed.

    Only without PREFECT_API_URL: then every run is a process of this machine using the database
    under PREFECT_HOME through a temporary server that dies with it, so a `kill -9` leaves its slot
    taken with no lease left to expire, and every process that holds a slot is registered here
    (marked "holding" under _holders_lock, in the same critical section that took the slot).
    With a lasting server (other machines may hold slots) the lease expiry frees them instead.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return 0
    with _holders_lock(), get_client(sync_client=True) as client:
        live, dead = _registered()
        for f in dead:
            f.unlink(missing_ok=True)
        holding = sum(rec.get("state") == "holding" for rec in live)
        limit = _gpu_limit(client)
        freed = limit.active_slots - holding if limit is not None else 0
        if freed <= 0:
            return 0
        client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(active_slots=holding))
    logger.warning("freed %d `%s` slot(s) left taken by a run that died (%d live holder(s) on this "
                   "machine)", freed, GPU_LIMIT, holding)
    return freed


def ensure_gpu_limit(logger, devices: int = 1) -> None:
    """Create the `gpu` global concurrency limit if the server has none (ephemeral servers start
    empty), one slot per device: `devices` (a run on N Dask workers, one device each, passes N) or
    SEMIEVOL_GPU_SLOTS. An existing limit with fewer slots than that is raised to it (the workers
    would queue for one slot otherwise), never lowered. Then free slots a crashed run left taken
    (free_orphaned_slots)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists

    slots = int(os.environ.get(GPU_SLOTS_ENV, devices))
    with get_client(sync_client=True) as client:
        limit = _gpu_limit(client)
        if limit is not None and limit.limit < slots:
            client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots))
            logger.info("raised global concurrency limit %r from %d to %d slot(s), one per device",
                        GPU_LIMIT, limit.limit, slots)
        elif limit is not None:
            logger.debug("concurrency limit %r: %s slot(s), active=%s", GPU_LIMIT, limit.limit, limit.active)
        else:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))
                logger.info("created global concurrency limit %r with %d slot(s)", GPU_LIMIT, slots)
            except ObjectAlreadyExists:  # another run created it between our read and create
                pass
    free_orphaned_slots(logger)


@contextmanager
def _registration() -> Iterator[Path]:
    """This process, registered as waiting for a slot (see free_orphaned_slots); _mark flips it to
    holding. save_json writes whole files, so a scan never reads half a registration."""
    f = _holders_dir() / f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}.json"
    _mark(f, "waiting")
    try:
        yield f
    finally:
        f.unlink(missing_ok=True)


def _mark(f: Path, state: str) -> None:
    steps.save_json({"pid": os.getpid(), "host": socket.gethostname(), "state": state,
                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}, f)


def _logger():
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        import logging

        return logging.getLogger(__name__)


@contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold one slot of the `gpu` limit. strict=False: if the limit is missing (a task called
    outside our flows), Prefect logs a warning and runs unlimited rather than failing.

    Looks every POLL_SECONDS whether a slot is free and only then takes it (Prefect's own timed
    acquisition logs an ERROR line at each time-out); between looks it frees slots whose holder
    died meanwhile, and every WAIT_LOG_SECONDS it logs how long it has waited, who holds the
    device, and how to free it."""
    t0 = last_log = time.monotonic()
    with _registration() as me, ExitStack() as held:
        while True:
            with _holders_lock():
                if _slot_free():  # this machine's runs take slots only under this lock
                    held.enter_context(concurrency(GPU_LIMIT, occupy=1, strict=False,
                                                   lease_duration=GPU_LEASE_SECONDS))
                    _mark(me, "holding")
                    break
            log = _logger()
            free_orphaned_slots(log)
            if time.monotonic() - last_log >= WAIT_LOG_SECONDS:
                last_log = time.monotonic()
                holders = [f"pid {r['pid']} on {r['host']} since {r['since']}" for r in _registered()[0]
                           if r.get("state") == "holding"]
                log.warning("waited %.0f s for a `%s` slot (held by: %s); if no run is using the "
                            "device, free it with `%s`", last_log - t0, GPU_LIMIT,
                            ", ".join(holders) or "no run on this machine", FREE_HINT)
            time.sleep(POLL_SECONDS)
        yield


def _slot_free() -> bool:
    """A `gpu` slot can be taken now (or there is no active limit, and nothing to wait for)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = _gpu_limit(client)
    return limit is None or not limit.active or limit.active_slots < limit.limit


# ------------------------------------------------------------------------------ execution log
def record_execution(label: str) -> None:
    """Note that a task body really ran (tests count these; a cache hit never gets here)."""
    path = os.environ.get(TASK_LOG_ENV)
    if path:
        # O_APPEND writes of one short line are atomic, so concurrent tasks do not interleave.
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(label + "\n")
