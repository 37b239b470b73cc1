# Two set-up commands for a fresh machine (README.md): `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=
# Tests run in two processes, a test file each at a time (module fixtures stay shared): the embedded model's
# llama.cpp uses half the cores (backends/llamacpp.py default_threads), so a second process has the other half.
# Files go in collection order, the longest first (tests/conftest.py), not xdist's most-tests-first.
PYTEST_WORKERS ?= 2
XDIST = -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install run test lint unit docs bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=25.1"
	# A pinned torch first: the CPU build; an unpinned one would pull a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	# llama.cpp built portably (no CPU-specific kernels), once, into .wheels/ (tools/llama_wheel.py says why).
	# Two lines, so that a failing build stops make (inside "$$(...)" its exit status would be lost and the next
	# line would install a native llama-cpp-python from PyPI); --force-reinstall replaces one installed earlier.
	$(PY) tools/llama_wheel.py > $(VENV)/llama-wheel.txt
	$(PIP) install --quiet --no-index --no-deps --force-reinstall "$$(cat $(VENV)/llama-wheel.txt)"
	$(PIP) install --quiet -e ".[server]" --group dev
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/personaloom run --out out

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Fast loop while developing: no slow (model-loading, end-to-end) tests.
unit: install
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

# The API reference from the docstrings (pdoc, offline) into build/docs; a broken reference fails (make test
# builds it too, in tests/test_api.py).
docs: install
	$(PY) tools/api_docs.py build/docs

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
