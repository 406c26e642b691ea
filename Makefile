# Two commands get a new machine going:
#   make demo   create .venv if missing, install, run the SALMON pipeline locally in the nano world
#   make test   create .venv if missing, install, then lint, type-check, layer-check and test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= out/demo
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint env clean

# The venv is rebuilt when the project's dependency files change. `make demo` needs only the
# runtime extras; `make test` adds the developer tools.
$(BIN)/.installed-runtime: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel, never a multi-GB CUDA build
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[train,s3,pipeline,tracking]'
	touch $@

$(BIN)/.installed: $(BIN)/.installed-runtime
	$(BIN)/pip install -q -c constraints.txt -e '.[train,s3,pipeline,tracking,dev]'
	touch $@

env: $(BIN)/.installed

demo: $(BIN)/.installed-runtime
	$(BIN)/salmon demo --out $(DEMO_OUT)

lint: env
	$(BIN)/ruff check salmon components pipelines tests
	$(BIN)/mypy salmon/core
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Minutes of CPU: the nano chain with the acceptance thresholds.
test-slow: env
	$(BIN)/pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) out build *.egg-info
