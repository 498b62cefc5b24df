# make install: .venv with the pinned dependencies and the built extension (fast when unchanged)
# make run:     the main job on the embedded synthetic dataset
# make test:    the whole test suite
# make bench:   the benchmarks in benchmarks/
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.prunekit-built
BUILD_INPUTS := setup.py pyproject.toml $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' 2>/dev/null)

.PHONY: install run test bench clean

install: $(BUILD_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(BUILD_INPUTS)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

run: install
	$(VENV)/bin/prunekit run

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) -m pytest benchmarks

clean:
	rm -rf build prunekit/_C*.so *.egg-info
