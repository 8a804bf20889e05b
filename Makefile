# The two commands of the README: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build on a CPU box.
TORCH_VERSION ?= 2.13.0
# Two pytest-xdist workers, each with its own local Ray and S3 server: most of a test's time is Ray start-up
# and waiting, not CPU. Tests of one trained model share a group (xdist_group, scheduled by tests/xdist_groups.py),
# so each model trains once.
PYTEST_WORKERS ?= -n 2 --dist loadgroup

.PHONY: demo test lint bench venv clean lock

venv: $(VENV)/.installed

# constraints.txt pins every other package to versions resolved together: without it pip's resolver
# can spend many minutes backtracking between boto3, aiobotocore and s3fs.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,tracking]"
	touch $@

demo: venv
	$(VENV)/bin/vtok demo

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(PYTEST_WORKERS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# Every benchmark of BENCHMARKS.md in turn (about an hour on 2 cores); results in bench/results/.
bench: venv
	$(PY) -m bench.decode
	$(PY) -m bench.tokens
	$(PY) -m bench.pipeline
	$(PY) -m bench.first_clip
	$(PY) -m bench.memory
	$(PY) -m bench.s3
	$(PY) -m bench.train
	$(PY) -m bench.decoder
	$(PY) -m bench.judge
	$(PY) -m bench.fidelity
	$(PY) -m bench.gpu_encoder $(if $(shell command -v nvidia-smi),,--device cpu --quick)

lock: venv
	( echo "# Versions make demo / make test install (resolved and tested together); regenerate with: make lock"; \
	  echo "# torch is pinned in the Makefile (TORCH_VERSION) and installed first."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -E '^(torch|vtok)==' ) > constraints.txt

clean:
	rm -rf $(VENV) demo_out .pytest_cache
