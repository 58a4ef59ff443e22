"""Roofline of this machine for the model under test: fp32 matmul rate, memory bandwidth, ceilings.

    .venv/bin/python bench/roofline.py [--model smollm2-135m-instruct] [--threads 2]

- matmul: torch fp32 GEMM (n=2048) GFLOP/s, best of several repeats, with `--threads` threads;
- bandwidth: a large tensor copy (read + write bytes / s), best of repeats;
- prefill ceiling: GFLOP/s / (2 x parameters) tokens/s (a forward pass costs ~2 FLOPs per parameter
  per token; attention is small next to that at these prompt lengths);
- batch-1 decode ceiling: bandwidth / bytes of weights tokens/s (each token reads every weight).
Writes bench/results/roofline.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(model: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    gflops = 2 * n**3 / best_of(lambda: torch.mm(a, b), 7) / 1e9
    src = torch.empty(64 * 2**20 // 4)  # 64 MiB: far past the caches
    dst = torch.empty_like(src)
    dst.copy_(src)
    bandwidth = 2 * src.numel() * 4 / best_of(lambda: dst.copy_(src), 10) / 1e9

    from transformers import AutoConfig

    from semievol_core.models import resolve_model

    cfg = AutoConfig.from_pretrained(resolve_model(model))
    h, L, inter, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter  # q,o + k,v + gate,up,down
    # Tied embeddings: the lm_head matmul still costs vocab x hidden per token.
    params_matmul = L * per_layer + vocab * h
    params_total = L * per_layer + vocab * h * (1 if cfg.tie_word_embeddings else 2)
    return {
        "threads": threads,
        "matmul_gflops": round(gflops, 1),
        "bandwidth_gbs": round(bandwidth, 1),
        "model": model,
        "matmul_params": params_matmul,
        "prefill_tok_s_ceiling": round(gflops * 1e9 / (2 * params_matmul), 1),
        "decode_tok_s_ceiling_batch1": round(bandwidth * 1e9 / (4 * params_total), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from quality import machine  # same machine description in every result file

    result = {"machine": machine(), **measure(args.model, args.threads)}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "roofline.json").write_text(json.dumps(result, indent=2))
    print("| metric | value |\n|---|---:|")
    for k, v in result.items():
        if k != "machine":
            print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
