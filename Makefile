# Two commands do everything on a fresh clone:
#   make demo   create .venv, install ppo-core and the bundled plugins, run the whole pipeline
#   make test   create .venv the same way, run the test suite (tests/ and plugins/*/tests)
# and one more checks the declared dependency ranges from below:
#   make test-min-deps   the suite in .venv-min, every `>=` bound of the pyproject.toml files installed exactly
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/pyproject.toml)
# the extras each plugin is installed with in .venv (the loggers' libraries; .venv-min leaves them out, so the
# loggers' tests skip there)
EXTRAS_ppo-core-loggers := [all]
plugin_specs = $(foreach p,$(PLUGINS),-e '$(dir $(p))$(if $(1),$(EXTRAS_$(notdir $(patsubst %/,%,$(dir $(p))))))')

.PHONY: setup demo test test-min-deps bench clean

$(VENV)/.installed: pyproject.toml $(PLUGINS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build on local disk (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,report,lora]' $(call plugin_specs,extras)
	touch $@

setup: $(VENV)/.installed

# The lowest declared versions: .ci/lowest_versions.py turns every `name>=X` into `name==X`.
MIN_VENV ?= .venv-min
MIN_PY := $(MIN_VENV)/bin/python

$(MIN_VENV)/.installed: pyproject.toml $(PLUGINS) .ci/lowest_versions.py
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_PY) .ci/lowest_versions.py pyproject.toml $(PLUGINS) > $(MIN_VENV)/constraints.txt
	$(MIN_PY) -m pip install --quiet torch==2.13.0
	$(MIN_PY) -m pip install --quiet -c $(MIN_VENV)/constraints.txt -e '.[test,report]' $(call plugin_specs,)
	touch $@

demo: setup
	$(VENV)/bin/ppo-core demo

# the suite in 2 worker processes (pytest-xdist): most tests keep one core busy (tiny models, Python, waiting on
# the processes they start), so 2 workers use both cores of the CI machine; TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS)

# PYTEST_ARGS narrows the run, e.g. PYTEST_ARGS="--ignore=tests/test_demo.py" (.ci/run does)
test-min-deps: $(MIN_VENV)/.installed
	$(MIN_PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/ppo_throughput.py

clean:
	rm -rf $(VENV) $(MIN_VENV) runs
