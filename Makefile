# Routine tasks.  `make test` is what CI runs (.ci/run): it installs and starts what it needs.
PY := .venv/bin
STAMP := .venv/.installed

TOOLS := .venv-tools/bin
SAM := .venv-sam/bin/sam
# SAM CLI: no telemetry, and its weekly version check is answered from .venv-sam (no call out).
export SAM_CLI_TELEMETRY := 0
RDS_CA_URL := https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem

.PHONY: bench faults dev venv tools sam-cli stack-up stack-down stack-status migrate demo test test-unit lint lint-template \
	format build fetch-rds-ca clean

dev: venv stack-up migrate          ## everything for local work

venv: $(STAMP)
$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY)/pip install --quiet --upgrade pip
	$(PY)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

stack-up: venv                      ## MariaDB + Kafka + moto on 127.0.0.1 (idempotent)
	scripts/local-stack up
stack-down:
	scripts/local-stack down
stack-status:
	scripts/local-stack status

migrate: venv                       ## apply infra/migrations to the local database
	eval "$$(scripts/local-stack env)" && $(PY)/outbox-relay migrate

demo: venv                          ## the relay end to end on the local stack
	scripts/demo

test: venv sam-cli stack-up         ## the whole suite, on the real local stack
	$(PY)/pytest -q

bench: venv stack-up                ## relay vs naive vs raw limits; docs/performance.md explains
	$(PY)/pip install --quiet -e '.[bench]'
	$(PY)/python bench/relay_bench.py

faults: venv stack-up               ## the long randomized fault run (100 runs, about 75 minutes)
	$(PY)/python -m tests.faults.runner --runs $${RUNS:-100} --seed $${SEED:-1}

test-unit: venv                     ## pure unit tests, no stack
	$(PY)/pytest -q tests/unit

# checkov lives in its own venv: its pins clash with the dev tools'.
tools: .venv-tools/.installed
.venv-tools/.installed:
	python3 -m venv .venv-tools
	$(TOOLS)/pip install --quiet --upgrade pip
	$(TOOLS)/pip install --quiet checkov==3.3.30
	touch .venv-tools/.installed

lint: venv lint-template
	$(PY)/ruff check .
	$(PY)/ruff format --check .
	$(PY)/mypy

lint-template: venv tools          ## cfn-lint and checkov (offline: --skip-download)
	$(PY)/cfn-lint template.yaml
	$(TOOLS)/checkov -f template.yaml --quiet --compact --skip-download

# The SAM CLI (pinned) in its own venv too: it pins boto3 and friends its own way.
sam-cli: .venv-sam/.installed
.venv-sam/.installed:
	python3 -m venv .venv-sam
	.venv-sam/bin/pip install --quiet --upgrade pip
	.venv-sam/bin/pip install --quiet aws-sam-cli==1.170.0
	printf '{"telemetryEnabled": false, "lastVersionCheck": 4102444800.0}\n' >.venv-sam/metadata.json
	touch .venv-sam/.installed

build: sam-cli                      ## sam build, no Docker (function and layer: BuildMethod makefile)
	__SAM_CLI_APP_DIR=$(CURDIR)/.venv-sam $(SAM) build

fetch-rds-ca:                       ## the RDS CA bundle for OUTBOX_DB_TLS=verify, shipped in the layer
	mkdir -p layers/deps/certs
	curl -fsSL -o layers/deps/certs/rds-global-bundle.pem $(RDS_CA_URL)

format: venv
	$(PY)/ruff format .
	$(PY)/ruff check --fix .

clean:
	rm -rf .venv .venv-tools .venv-sam .mypy_cache .ruff_cache .pytest_cache build .aws-sam
