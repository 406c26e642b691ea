# Two commands get a new machine going:
#   make demo   create .venv if missing, install, run the nano SALMON chain end to end
#   make test   create .venv if missing, install, then lint, type-check, layer-check and test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= out/demo
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint env clean

# The venv is rebuilt when the project's dependency files change.
$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel, never a multi-GB CUDA build
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[train,s3,dev]'
	touch $@

env: $(BIN)/.installed

demo: env
	$(BIN)/salmon demo --out $(DEMO_OUT)

lint: env
	$(BIN)/ruff check salmon tests
	$(BIN)/mypy salmon/core
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Minutes of CPU: the nano chain with the acceptance thresholds.
test-slow: env
	$(BIN)/pytest -q -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) out build *.egg-info
