# Two commands for a new user: `make demo` renders scenes/smoke.yaml, `make test` runs the tests.
# Each sets up the virtualenv (.venv) itself on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test install bench chaos ui clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/farm submit scenes/smoke.yaml --out renders/smoke-demo

# Two pytest-xdist workers, each taking whole test files (a file's Ray cluster fixture starts
# once): 11.5-13.5 minutes on a slow 2-core VM (AMD EPYC without AVX-512), 15 before tests/conftest.py
# made OpenMP threads wait sleeping (OMP_WAIT_POLICY=PASSIVE) and the slowest tests did less work.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15

chaos: $(STAMP)
	$(PY) -m tests.chaos

ui: $(STAMP)
	$(VENV)/bin/farm ui --root renders

bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) renders .pytest_cache
