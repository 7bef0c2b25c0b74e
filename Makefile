# The two set-up commands of the README, and the reproduction of reported figures.
# Everything installs into ./.venv; nothing is fetched at run time except Debian
# font packages (by 'edgefs data glyphs', with a fallback to the fonts on the machine).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgefs-installed
# torch==2.13.0 is this machine's CPU build; on a Jetson use JetPack's torch instead.
TORCH ?= torch==2.13.0

.PHONY: install demo test lint reproduce clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[train,dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
