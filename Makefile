# The two set-up commands of the README, and the reproduction of reported figures.
# Everything installs into ./.venv; nothing is fetched at run time except Debian
# font packages (by 'edgefs data glyphs', with a fallback to the fonts on the machine).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgefs-installed
# torch==2.13.0 is this machine's CPU build; on a Jetson use JetPack's torch instead.
# 'rtx' (TensorRT-RTX, ~90 MB of wheels) lets the tests build a real TensorRT engine for every backbone
# without a GPU.
TORCH ?= torch==2.13.0

.PHONY: install demo train-demo test lint reproduce clean
GLYPHS := data/glyphs28

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[train,dev,rtx]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# The glyph benchmark (fetches ~30 Debian font packages into ~/.cache/edgefs/fonts once).
$(GLYPHS)/manifest.json: | $(STAMP)
	$(BIN)/edgefs data glyphs --out $(GLYPHS) --overwrite

# Main job, end to end in a few minutes on 2 CPU cores: export the committed Conv-4
# ProtoNet, enroll 5 unseen glyph classes from the synthetic camera, classify a live
# stream of them (and of 2 classes never enrolled) in real time.
demo: $(STAMP) $(GLYPHS)/manifest.json
	$(BIN)/edgefs demo --data $(GLYPHS) --out runs/demo

# Meta-train a Conv-4 ProtoNet for 3 minutes and evaluate it beside a raw-pixel baseline.
train-demo: $(STAMP) $(GLYPHS)/manifest.json
	$(BIN)/edgefs train --config configs/protonet_conv4_glyphs.yaml --out runs/train-demo --overwrite --time-budget 3 --val-every 200
	$(BIN)/edgefs eval runs/train-demo/best.pt --data $(GLYPHS) --baselines pixels --episodes 300 --out reports/train-demo
	@cat reports/train-demo/eval.md

# The figures reported in README.md: 30-minute training, 600 episodes per protocol,
# raw-pixel and frozen EfficientNet-Lite0 baselines on the same episodes.
reproduce: $(STAMP) $(GLYPHS)/manifest.json
	$(BIN)/edgefs train --config configs/protonet_conv4_glyphs.yaml --overwrite
	$(BIN)/edgefs eval runs/protonet-conv4-glyphs/best.pt --data $(GLYPHS) \
		--baselines pixels,efficientnet_lite0 --out reports/protonet-conv4-glyphs
	@cat reports/protonet-conv4-glyphs/eval.md

clean:
	rm -rf $(VENV) build *.egg-info
