# One-command set-up: every target builds .venv first when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# On a CPU-only machine this exact version resolves to the CPU wheel; see README for CUDA.
TORCH_PIN := torch==2.13.0
# Extra arguments for `make serve`, e.g. SERVE_ARGS="--checkpoint model.pt --port 8377".
SERVE_ARGS ?=

.PHONY: test test-gimp bench serve clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test,train,bench]" "$(TORCH_PIN)"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The real-GIMP end-to-end test alone; fails (rather than skips) where GIMP cannot run.
test-gimp: $(VENV)/.installed
	AUTORETOUCH_REQUIRE_GIMP=1 $(PY) -m pytest -q -m gimp

bench: $(VENV)/.installed
	$(PY) -m bench.run_all

serve: $(VENV)/.installed
	$(VENV)/bin/autoretouch-server $(SERVE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
