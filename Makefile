# The two commands of README. Both create .venv with everything from pyproject.toml.
PY ?= python3
VENV ?= .venv
RAW_DIR ?= ../shared/data/raw

.PHONY: demo test install

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/jisp demo --out demo_out

test: $(VENV)/.installed
	JISP_RAW_DIR=$${JISP_RAW_DIR:-$(RAW_DIR)} $(VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout=900 tests
