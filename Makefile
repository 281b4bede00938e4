# The two commands: `make run` (the whole stack on loopback plus a demo clip) and `make test` (the suite).
# Every target that needs the venv first runs scripts/bootstrap.sh, which only does what is missing.

VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= .data

.DEFAULT_GOAL := help
.PHONY: help bootstrap run test chaos lint schemas lock bench soak memory clean

help:  ## this list
	@echo "clipjet: make <target>"
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

bootstrap:  ## install what is missing (Debian packages, .venv, pip install -e '.[test,local]')
	@bash scripts/bootstrap.sh

run: bootstrap  ## NATS, S3, PostgreSQL and every service on loopback, clip a sample, serve until Ctrl-C
	$(VENV)/bin/clipjet stack --demo

test: bootstrap  ## the test suite (real servers on loopback; the minutes-long cluster scenario is `make chaos`'s)
	$(PY) -m pytest -q -m "not long" --durations=15

chaos: bootstrap  ## only the chaos tests (kills, restarts, 503s on the tests' own servers), figures printed
	CLIPJET_CHAOS_REPORT=$${CLIPJET_CHAOS_REPORT:-chaos-figures.jsonl} $(PY) -m pytest -q -s -p no:logging -m chaos

lint: bootstrap  ## ruff check
	$(VENV)/bin/ruff check .

schemas: bootstrap  ## write schemas/ from the msgspec contracts
	$(VENV)/bin/clipjet schemas

LOCK_ARGS := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet \
	--custom-compile-command "make lock"
lock: bootstrap  ## pin the image's dependencies (requirements.lock, requirements-gpu.lock) and build backend (requirements-build.lock) from pyproject.toml
	$(VENV)/bin/uv pip compile pyproject.toml $(LOCK_ARGS) -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra gpu $(LOCK_ARGS) -o requirements-gpu.lock
	$(PY) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')" \
	  | $(VENV)/bin/uv pip compile - $(LOCK_ARGS) -o requirements-build.lock

bench: bootstrap  ## the benchmarks (python -m bench)
	$(PY) -m bench

soak: bootstrap  ## N mixed jobs through the stack (SOAK_JOBS, default 2000): none lost, RSS flat, nothing left over
	$(PY) -m bench.soak --jobs $${SOAK_JOBS:-2000}

memory: bootstrap  ## RSS of every process: idle, after 500 jobs, the transcriber with its model
	$(PY) -m bench.memory

clean:  ## remove the local stack's data (.data, or DATA_DIR=...); stop `make run` first
	rm -rf $(DATA_DIR)
