# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-stamp

.PHONY: demo test lint bench clean

# The demo needs the core alone (the console, SQLite, local processes, MXNet): no platform SDK, no Ray.
$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# One resolver step, so scikit-learn cannot drag in numpy 2 (MXNet 1.9.1 needs numpy<1.24).
	$(BIN)/python -m pip install -q -e . "numpy<1.24"
	touch $(DEMO_STAMP)

# The tests need everything: every platform's SDK, Ray, the test tools.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[telegram,slack,discord,matrix,email,wechat,ray,test]" "numpy<1.24"
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/chatops send "train epochs=5" --wait

test: $(STAMP)
	bash tests/ensure_dovecot.sh
	bash tests/ensure_slurm.sh
	bash tests/ensure_synapse.sh
	$(BIN)/ruff check chatops adapters jobs tests bench examples
	$(BIN)/ruff format --check chatops adapters jobs tests bench examples
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check chatops adapters jobs tests bench examples
	$(BIN)/ruff format --check chatops adapters jobs tests bench examples

bench: $(STAMP)
	$(BIN)/python bench/runner_overhead.py
	$(BIN)/python bench/control_latency.py
	$(BIN)/python bench/sdk_overhead.py
	$(BIN)/python bench/router.py
	$(BIN)/python bench/delivery.py
	$(BIN)/python bench/fuzz.py
	$(BIN)/python bench/executor_latency.py
	$(BIN)/python bench/many_jobs.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
