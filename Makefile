# One-command set-up: every target builds .venv first when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# On a CPU-only machine this exact version resolves to the CPU wheel; see README for CUDA.
TORCH_PIN := torch==2.13.0
# The face models (docs/faces.md): only their .tflite files are taken, hash-checked, out of this
# wheel into .venv/share/autoretouch/face-models; mediapipe itself is never installed.
MEDIAPIPE_PIN := mediapipe==0.10.21
# One exact wheel on every machine and Python (the model files are the same in all of them).
MEDIAPIPE_WHEEL := --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311
# Extra arguments for `make serve`, e.g. SERVE_ARGS="--checkpoint model.pt --port 8377".
SERVE_ARGS ?=

.PHONY: test test-gimp bench serve starter-model model-card clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test,train,bench]" "$(TORCH_PIN)"
	$(PY) -m pip download --quiet --no-deps --dest build/mediapipe $(MEDIAPIPE_WHEEL) "$(MEDIAPIPE_PIN)"
	$(PY) -m plugin_server.landmarks install build/mediapipe/mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl
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

# The starter model from scratch, seeded (about 75 min on a 2-core CPU), in two stages on synthetic
# pairs made from the shared photos (FFHQ 1-6 and three Pexels portraits; FFHQ 7-9, the fourth
# Pexels portrait and the FFHQR pair are held out): (1) MSE on every blemish kind; (2) fine-tuned
# on local blemishes (spots, pimples) in 96-px windows centred on them, unwanted edits costing 8x;
# exported into the package with a 5-level floor.
STARTER := build/starter
PHOTOS := ../shared/data/portraits
FFHQ_TRAIN := $(foreach i,1 2 3 4 5 6,$(PHOTOS)/ffhq-0000$(i).png)
PEXELS_TRAIN := $(PHOTOS)/pexels-aadil-2598024.jpg $(PHOTOS)/pexels-ike-louie-natividad-2709388.jpg \
	$(PHOTOS)/pexels-mateus-souza-3586798.jpg
TRAIN := $(VENV)/bin/autoretouch-train
SYNTH := $(TRAIN) synthetic
TRAIN_RUN := --layout studio --alpha 0 --beta 0 --batch-size 16 --val-fraction 0.05 --test-fraction 0 \
	--workers 1 --val-images 8 --seed 0
starter-model: $(VENV)/.installed
	rm -rf $(STARTER)/train $(STARTER)/local $(STARTER)/run $(STARTER)/tuned
	$(SYNTH) --out $(STARTER)/train --aligned --pairs-per-photo 40 --seed 1 --photos $(FFHQ_TRAIN)
	$(SYNTH) --out $(STARTER)/train --pairs-per-photo 40 --seed 2 --short-side 2400 --crop 1024 --photos $(PEXELS_TRAIN)
	$(SYNTH) --out $(STARTER)/local --aligned --pairs-per-photo 40 --seed 1 --kinds spots pimples --photos $(FFHQ_TRAIN)
	$(SYNTH) --out $(STARTER)/local --pairs-per-photo 40 --seed 2 --short-side 2400 --crop 1024 \
		--kinds spots pimples --photos $(PEXELS_TRAIN)
	$(TRAIN) train --data $(STARTER)/train --out $(STARTER)/run $(TRAIN_RUN) \
		--epochs 150 --val-every 25
	$(TRAIN) train --data $(STARTER)/local --out $(STARTER)/tuned $(TRAIN_RUN) \
		--epochs 18 --val-every 18 --init $(STARTER)/run/last.pt --window 96 --keep-weight 8 \
		--focus edits --background-prob 0.5
	$(TRAIN) export --run $(STARTER)/tuned --which last --residual-floor 5 \
		--out plugin_server/weights/starter.pt

# The README's model-card figures and crops for MODEL (default: the starter model), on material
# held out from training: make model-card MODEL=model.pt. Which portraits and squares of skin the
# card shows is data: CARD_CROPS (see its "about").
MODEL ?= plugin_server/weights/starter.pt
CARD_CROPS := docs/model-card/crops.json
REAL_PAIR := ../shared/data/ffhqr-pair/00000-original.png ../shared/data/ffhqr-pair/00000-retouched.png
HELDOUT_FFHQ := --aligned --pairs-per-photo 4 --seed 3 --photos $(foreach i,7 8 9,$(PHOTOS)/ffhq-0000$(i).png)
HELDOUT_PEXELS := --pairs-per-photo 4 --seed 4 --short-side 2400 --crop 1024 \
	--photos $(PHOTOS)/pexels-simon-robben-614810.jpg
model-card: $(VENV)/.installed
	rm -rf $(STARTER)/heldout
	$(SYNTH) --out $(STARTER)/heldout/all $(HELDOUT_FFHQ)
	$(SYNTH) --out $(STARTER)/heldout/all $(HELDOUT_PEXELS)
	$(SYNTH) --out $(STARTER)/heldout/local --kinds spots pimples $(HELDOUT_FFHQ)
	$(SYNTH) --out $(STARTER)/heldout/local --kinds spots pimples $(HELDOUT_PEXELS)
	$(TRAIN) model-card --checkpoint $(MODEL) --heldout $(STARTER)/heldout/all $(STARTER)/heldout/local \
		--pair $(REAL_PAIR) --photos $(PHOTOS) --crops $(CARD_CROPS) --out docs/model-card

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
