# One-command set-up: every target builds .venv first when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# On a CPU-only machine this exact version resolves to the CPU wheel; see README for CUDA.
TORCH_PIN := torch==2.13.0
# Extra arguments for `make serve`, e.g. SERVE_ARGS="--checkpoint model.pt --port 8377".
SERVE_ARGS ?=

.PHONY: test test-gimp bench serve starter-model clean

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

# A starter model from scratch (about an hour on a 2-core CPU): synthetic blemish pairs from
# the shared photos (FFHQ 1-6 and three Pexels portraits; FFHQ 7-9, the fourth Pexels portrait
# and the FFHQR pair are held out), MSE training, export into the package with a 2-level floor.
STARTER := build/starter
PHOTOS := ../shared/data/portraits
STARTER_TRAIN := --data $(STARTER)/train --layout studio --out $(STARTER)/run --alpha 0 --beta 0 \
	--batch-size 16 --epochs 150 --val-fraction 0.05 --test-fraction 0 --workers 1 \
	--val-every 25 --val-images 8 --seed 0
starter-model: $(VENV)/.installed
	rm -rf $(STARTER)
	$(PY) -m training.synthetic --out $(STARTER)/train --aligned --pairs-per-photo 40 --seed 1 \
		--photos $(PHOTOS)/ffhq-00001.png $(PHOTOS)/ffhq-00002.png $(PHOTOS)/ffhq-00003.png \
		$(PHOTOS)/ffhq-00004.png $(PHOTOS)/ffhq-00005.png $(PHOTOS)/ffhq-00006.png
	$(PY) -m training.synthetic --out $(STARTER)/train --pairs-per-photo 40 --seed 2 --short-side 2400 \
		--crop 1024 --photos $(PHOTOS)/pexels-aadil-2598024.jpg \
		$(PHOTOS)/pexels-ike-louie-natividad-2709388.jpg $(PHOTOS)/pexels-mateus-souza-3586798.jpg
	$(VENV)/bin/autoretouch-train train $(STARTER_TRAIN)
	$(VENV)/bin/autoretouch-train export --run $(STARTER)/run --which last --residual-floor 2 \
		--out plugin_server/weights/starter.pt

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
