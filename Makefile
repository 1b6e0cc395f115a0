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

.PHONY: test test-gimp bench serve starter-model model-card docs-gimp clean

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

# The starter model from scratch, seeded (about 65 min on a 2-core CPU), in three stages. `autoretouch-train
# heal` cuts every face of twelve shared portraits out at an IOD of 256 px and heals it (spots,
# pimples, redness, under-eye shadows; freckles, moles and texture kept) as the target; each face
# gives the real face and seven with synthetic blemishes as inputs. (1) every synthetic kind;
# (2) `--init` from (1) with synthetic pimples and redness only: synthetic brown spots look like
# freckles, and (1) learns to lighten both; (3) `--init` from (2), the colour error of the edited
# pixels weighing 5 (`--edit-weight`: plain MSE leaves a small model removing a fraction of each
# red spot) and random quarter turns (`--rotate`: twelve faces are few enough to memorise). MSE
# at the face scale, 96-px windows centred on the edits (0.37 IOD: a blemish and its
# surroundings); exported with no floor (the skin mask keeps everything else exact, and a floor
# would halve the faint edits a small model makes). Held out: FFHQ 00009, StyleAvatar input 2 and
# the Ike Louie Natividad portrait (and the FFHQR pairs).
HEAL := build/heal
PHOTOS := ../shared/data/portraits
TRAIN_PHOTOS := $(foreach i,1 2 3 4 5 6 7 8,$(PHOTOS)/ffhq-0000$(i).png) $(PHOTOS)/pexels-aadil-2598024.jpg \
	$(PHOTOS)/pexels-mateus-souza-3586798.jpg $(PHOTOS)/pexels-simon-robben-614810.jpg \
	$(PHOTOS)/styleavatar-retouching-input-3.png
HELD_OUT := ffhq-00009.png styleavatar-retouching-input-2.png pexels-ike-louie-natividad-2709388.jpg
TRAIN := $(VENV)/bin/autoretouch-train
FACE_SCALE := 256
HEAL_RUN := --layout studio --alpha 0 --beta 0 --batch-size 16 --val-fraction 0.05 --test-fraction 0 --workers 2 \
	--val-images 4 --seed 0 --face-scale $(FACE_SCALE) --window 96 --focus edits --background-prob 0.1 \
	--checkpoint-every 100 --log-every 50
starter-model: $(VENV)/.installed
	rm -rf $(HEAL)/train $(HEAL)/local $(HEAL)/run $(HEAL)/tuned $(HEAL)/finish
	$(TRAIN) heal --out $(HEAL)/train --face-scale $(FACE_SCALE) --synthetic 7 --seed 0 --photos $(TRAIN_PHOTOS)
	$(TRAIN) heal --out $(HEAL)/local --face-scale $(FACE_SCALE) --synthetic 7 --seed 0 --kinds pimples redness \
		--photos $(TRAIN_PHOTOS)
	$(TRAIN) train --data $(HEAL)/train --out $(HEAL)/run $(HEAL_RUN) --lr-g 1e-3 --epochs 500 --val-every 200
	$(TRAIN) train --data $(HEAL)/local --out $(HEAL)/tuned $(HEAL_RUN) --init $(HEAL)/run/last.pt --lr-g 5e-4 \
		--epochs 150 --val-every 150
	$(TRAIN) train --data $(HEAL)/local --out $(HEAL)/finish $(HEAL_RUN) --init $(HEAL)/tuned/last.pt --lr-g 5e-4 \
		--epochs 60 --val-every 60 --edit-weight 5 --rotate
	$(TRAIN) export --run $(HEAL)/finish --which last --residual-floor 0 --out plugin_server/weights/starter.pt

# The README's model-card figures and crops for MODEL (default: the starter model), on material
# held out from training: make model-card MODEL=model.pt. Which portraits and squares of skin the
# card shows is data: CARD_CROPS (see its "about"). At another strength, elsewhere:
# make model-card STRENGTH=1.5 CARD_OUT=build/card-1.5
MODEL ?= plugin_server/weights/starter.pt
STRENGTH ?= 1
CARD_OUT ?= docs/model-card
CARD_CROPS := docs/model-card/crops.json
DATA := ../shared/data
PAIRS := --pair $(DATA)/ffhqr-pair/00000-original.png $(DATA)/ffhqr-pair/00000-retouched.png \
	$(foreach i,1 2 3 4,--pair $(DATA)/ffhqr-teaser/teaser-$(i)-original.png $(DATA)/ffhqr-teaser/teaser-$(i)-retouched.png)
model-card: $(VENV)/.installed
	rm -rf $(HEAL)/card
	$(TRAIN) heal --out $(HEAL)/card/heal --face-scale $(FACE_SCALE) --synthetic 3 --seed 1 \
		--photos $(addprefix $(PHOTOS)/,$(HELD_OUT))
	$(TRAIN) model-card --checkpoint $(MODEL) --heldout $(HEAL)/card/heal --held-out-photos $(HELD_OUT) $(PAIRS) \
		--photos $(PHOTOS) --crops $(CARD_CROPS) --strength $(STRENGTH) --out $(CARD_OUT)

# Screenshots of the GIMP plug-in in a real GIMP window for docs/gimp.md (as root, about 3 minutes;
# uses the test chroot and adds Xvfb, xdotool, openbox and ImageMagick to it). Not part of `make test`.
docs-gimp: $(VENV)/.installed
	$(PY) tools/docs_gimp.py --out docs/gimp

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
