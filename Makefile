# Two commands do everything on a fresh clone:
#   make demo   create .venv, install ppo-core and the bundled plugins, run the whole pipeline
#   make test   create .venv the same way, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml $(PLUGINS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build on local disk (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,report]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/ppo-core demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/ppo_throughput.py

clean:
	rm -rf $(VENV) runs
