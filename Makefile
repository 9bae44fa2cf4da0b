# The two commands of the README. Both create and reuse .venv/ in the repo root.
#   make run    set up and launch the app (ARGS="--port 7861" passes flags to app.py)
#   make test   set up (chromium included) and run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
# No HF_HUB_OFFLINE here: an `export` at the top reaches every recipe, `make run` included, and
# the app a user runs must download base models and push to the Hub. Only the tests are offline.

.PHONY: run test lint chromium

run: $(RUN_STAMP)
	$(PY) app.py $(ARGS)

test: $(TEST_STAMP) chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(TEST_STAMP): requirements.txt requirements-dev.txt requirements-gpu.txt $(RUN_STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	# DeepSpeed's source package builds against the torch installed above (hence no build
	# isolation); its CPU collective is compiled now rather than in the first test.
	DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 $(PY) -m pip install --disable-pip-version-check -q \
	  --no-build-isolation -r requirements-gpu.txt
	touch $@

# Browser tests drive Debian's chromium (never a browser downloaded by playwright).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
