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

.PHONY: install demo demo-glyphs train-demo test lint docs reproduce colour-model lodo clean
GLYPHS := data/glyphs28

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[train,dev,rtx]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff, then the architecture contracts (.importlinter) and no import circles, on the package as installed.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python tools/check_imports.py

# The documentation site (mkdocs.yml, docs/) into build/docs-site; --strict fails on any warning
# (a broken link, a page missing from the navigation, an API reference that does not resolve).
# The report pages and the design page are generated during the build (tools/docs_reports.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/docs-site

# The glyph benchmark (fetches ~30 Debian font packages into ~/.cache/edgefs/fonts once).
$(GLYPHS)/manifest.json: | $(STAMP)
	$(BIN)/edgefs data glyphs --out $(GLYPHS) --overwrite

# Main job, end to end in a few minutes on 2 CPU cores: export the committed colour model
# (EfficientNet-Lite0 meta-trained on the colour domains), build the units domain (one ~20 MB
# Debian package, seconds), enroll 5 unseen objects from a synthetic camera through a centred
# region of interest, classify a live stream of them (and of 2 never enrolled) in real time.
demo: $(STAMP)
	$(BIN)/edgefs demo --out runs/demo

# The same on printed glyphs with the committed Conv-4 ProtoNet (enrolled from some fonts,
# streamed in others).
demo-glyphs: $(STAMP) $(GLYPHS)/manifest.json
	$(BIN)/edgefs demo --glyphs --data $(GLYPHS) --out runs/demo-glyphs

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

# The colour domains (Debian and npm packages; cards and icons take about 5 minutes each).
COLOUR_DOMAINS := cards clipart flags icons units
data/domains/%/manifest.json: | $(STAMP)
	$(BIN)/edgefs data $* --out data/domains/$*

# The committed colour model: Lite0's last stages meta-trained on all five domains' train
# splits from cached trunk features (about 25 minutes the first time, 5 once cached), kept as a
# float16 delta on the ImageNet weight wheel.
colour-model: $(STAMP) $(foreach d,$(COLOUR_DOMAINS),data/domains/$(d)/manifest.json)
	$(BIN)/edgefs train-cached --config configs/protonet_lite0_colour.yaml --overwrite
	cp runs/protonet-lite0-colour/best.pt models/protonet-lite0-colour.pt

# Leave-one-domain-out table: one model per held-out domain (same config, the other domains'
# train splits), frozen Lite0 rows on the same test episodes. 'make lodo LODO_ONLY=cards,flags'
# holds out and scores only those (write that table elsewhere: LODO_OUT=/tmp/lodo).
LODO_OUT ?= reports/lodo
lodo: $(STAMP) $(foreach d,$(COLOUR_DOMAINS),data/domains/$(d)/manifest.json)
	$(BIN)/python tools/bench_lodo.py --train --domains data/domains --out $(LODO_OUT) $(if $(LODO_ONLY),--only $(LODO_ONLY))

clean:
	rm -rf $(VENV) build *.egg-info
