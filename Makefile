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

# Two pytest workers (JISP_TEST_WORKERS): the suite is mostly single-threaded XLA
# compiles, so a 2-core machine runs two at once. Whole files go to one worker, so a
# module's shared run (fixture) is built once.
test: $(VENV)/.installed
	JISP_RAW_DIR=$${JISP_RAW_DIR:-$(RAW_DIR)} $(VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout=900 \
	  -n $${JISP_TEST_WORKERS:-2} --dist loadfile --no-loadscope-reorder tests
