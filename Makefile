# Routine tasks.  `make test` is what CI runs (.ci/run): it installs and starts what it needs.
PY := .venv/bin
STAMP := .venv/.installed

TOOLS := .venv-tools/bin
SAM := .venv-sam/bin/sam
# SAM CLI: no telemetry, and its weekly version check is answered from .venv-sam (no call out).
export SAM_CLI_TELEMETRY := 0
RDS_CA_URL := https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem

.PHONY: bench faults sim dev venv tools lock check-lock sam-cli stack-up stack-down stack-status migrate demo test test-unit lint lint-template \
	format build smoke fetch-rds-ca rie rie-path local-build host-runtime invoke-local clean

dev: venv stack-up migrate          ## everything for local work

venv: $(STAMP)
$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY)/pip install --quiet --upgrade pip
	$(PY)/pip install --quiet -e '.[relay,dev]'
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

test: venv sam-cli rie stack-up     ## the whole suite, on the real local stack
	$(PY)/pytest -q

bench: venv stack-up                ## relay vs naive vs raw limits; docs/performance.md explains
	$(PY)/pip install --quiet -e '.[bench]'
	$(PY)/python bench/relay_bench.py

.PHONY: bench-redrive
bench-redrive: venv stack-up         ## redrive --all over 45,000 retained rows (3,000 aggregates): wall time, batches
	$(PY)/python bench/redrive_bench.py

.PHONY: bench-tracing
bench-tracing: venv stack-up        ## relay CPU per event with X-Ray tracing as deployed vs off (~30 s)
	$(PY)/python bench/tracing_bench.py

faults: venv stack-up               ## the long randomized fault run (100 runs, about 75 minutes)
	$(PY)/python -m tests.faults.runner --runs $${RUNS:-100} --seed $${SEED:-1}

sim: venv                           ## the deterministic simulation: make sim [SEEDS=1000] [START=1] [JOBS=2] | make sim SEED=<n>
	$(PY)/python -m tests.sim $(if $(SEED),--seed $(SEED) -v,--seeds $${SEEDS:-1000} --start $${START:-1} --jobs $${JOBS:-2})

test-unit: venv                     ## pure unit tests, no stack
	$(PY)/pytest -q tests/unit

# checkov lives in its own venv: its pins clash with the dev tools'.
tools: .venv-tools/.installed
.venv-tools/.installed:
	python3 -m venv .venv-tools
	$(TOOLS)/pip install --quiet --upgrade pip
	$(TOOLS)/pip install --quiet checkov==3.3.30
	touch .venv-tools/.installed

# The layer's pins come from pyproject.toml (the relay extra), resolved for the Lambda runtime
# with every artifact's hash; --exclude-newer keeps the transitive pins from moving under CI.
LOCK := $(PY)/uv pip compile pyproject.toml --extra relay --python-version 3.13 \
	--python-platform aarch64-manylinux_2_34 --generate-hashes --exclude-newer 2026-11-30 \
	--custom-compile-command "make lock" --quiet

lock: venv                          ## regenerate layers/deps/requirements.txt from pyproject.toml
	$(LOCK) -o layers/deps/requirements.txt

check-lock: venv                    ## the layer's pins are what pyproject.toml resolves to
	@tmp=$$(mktemp) && $(LOCK) -o $$tmp && diff -u layers/deps/requirements.txt $$tmp \
		&& rm -f $$tmp || { rm -f $$tmp; echo "layers/deps/requirements.txt is out of date: run 'make lock'" >&2; exit 1; }

lint: venv lint-template check-lock
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

# The layer ships the RDS CA bundle: layers/deps/certs/ (make fetch-rds-ca) or OUTBOX_RDS_CA_BUNDLE.
# sam build runs the layer's make in a scratch copy, so a relative path is made absolute here.
ifdef OUTBOX_RDS_CA_BUNDLE
export OUTBOX_RDS_CA_BUNDLE := $(abspath $(OUTBOX_RDS_CA_BUNDLE))
endif
# DB_TLS_MODE=off|required (the stack's DbTlsMode) builds without a bundle: make build DB_TLS_MODE=off.
ifdef DB_TLS_MODE
export DB_TLS_MODE
endif

# No build cache: SAM's cache key is the layer's folder, which does not cover OUTBOX_RDS_CA_BUNDLE.
build: sam-cli                      ## sam build, no Docker (function and layer: BuildMethod makefile)
	__SAM_CLI_APP_DIR=$(CURDIR)/.venv-sam $(SAM) build --no-cached

# `sam local invoke` without Docker: the sam-built function, a layer from the same Makefile for
# this machine's Python, the real Lambda Runtime Interface Emulator and awslambdaric.  Built in a
# folder of its own with the local stack's CA, so nothing local reaches what `sam deploy` ships.
RIE_VERSION := v0.0.0-20261030222936-bef5c4ba774d
AWSLAMBDARIC_VERSION := 4.2.2
STACK_HOME := $(or $(OUTBOX_STACK_HOME),$(HOME)/.cache/outbox-relay)
RIE := $(STACK_HOME)/rie-$(RIE_VERSION)/aws-lambda-rie
LOCAL := .aws-sam/local
LOCAL_CA := $(dir $(or $(OUTBOX_MARIADB_DIR),/var/lib/outbox-relay/mariadb))tls/ca.pem
HOST_PYTHON := python3
# The host layer is rebuilt when anything it is made of changes (Python, pins, Makefile, the CA).
HOST_KEY := $(shell { $(HOST_PYTHON) -VV; uname -m; echo $(AWSLAMBDARIC_VERSION); \
	cat layers/deps/requirements.txt layers/deps/Makefile $(LOCAL_CA); } 2>/dev/null | cksum | cut -d' ' -f1)
HOST := $(LOCAL)/host-$(HOST_KEY)
EVENT ?= events/scheduler.json
ENV_VARS ?= env.json
# The local stack's AWS: moto in us-east-1 with its test keys; never a profile, the instance
# metadata service or the developer's own credentials.
LOCAL_AWS := env -u AWS_PROFILE -u AWS_SESSION_TOKEN AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
	AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true \
	AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

rie: $(RIE)                         ## build the emulator once (Go module proxy), cached like the Kafka jars
$(RIE):
	@command -v go >/dev/null || { echo "go is missing: the Lambda Runtime Interface Emulator is a Go module (apt-get install -y golang)" >&2; exit 1; }
	GOPATH=$(STACK_HOME)/go GOBIN=$(dir $(RIE)) GOFLAGS=-modcacherw \
		go install github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@$(RIE_VERSION)

rie-path:                           ## where the emulator is (tests ask)
	@echo $(RIE)

local-build: sam-cli
	@test -f "$(LOCAL_CA)" || { echo "$(LOCAL_CA) is missing: start the local stack first (make dev); the local build ships its CA" >&2; exit 1; }
	__SAM_CLI_APP_DIR=$(CURDIR)/.venv-sam OUTBOX_RDS_CA_BUNDLE=$(LOCAL_CA) OUTBOX_CA_ANY_ISSUER=1 \
		$(SAM) build --no-cached --build-dir $(LOCAL)/build

host-runtime: $(HOST)/.built
$(HOST)/.built:
	rm -rf $(LOCAL)/host-* && mkdir -p $(HOST)
	$(MAKE) -s -C layers/deps build-DepsLayer ARTIFACTS_DIR=$(CURDIR)/$(HOST)/DepsLayer PYTHON=$(HOST_PYTHON) \
		OUTBOX_RDS_CA_BUNDLE=$(LOCAL_CA) OUTBOX_CA_ANY_ISSUER=1 ARCH=$$(uname -m) \
		PYTHON_VERSION=$$($(HOST_PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	$(HOST_PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-compile \
		--only-binary=:all: --target $(HOST)/runtime awslambdaric==$(AWSLAMBDARIC_VERSION)
	touch $@

# stdout is the handler's JSON result alone: the build's output goes to stderr.
invoke-local:                       ## make invoke-local EVENT=events/<file>.json [ENV_VARS=env.json] [PARAMS='K=V ...']
	@$(MAKE) -s --no-print-directory local-build rie host-runtime >&2
	@$(LOCAL_AWS) .venv-sam/bin/python scripts/invoke_local.py "$(EVENT)" --env-vars "$(ENV_VARS)" \
		--template $(LOCAL)/build/template.yaml --parameter-overrides "$(PARAMS)" \
		--layer $(HOST)/DepsLayer --runtime-dir $(HOST)/runtime --rie $(RIE) --python $(HOST_PYTHON)

smoke: venv                         ## after sam deploy: make smoke STACK=<stack name> [REGION=<region>]
	@if [ -z "$(STACK)" ]; then echo 'usage: make smoke STACK=<stack name> [REGION=<region>]' >&2; exit 2; fi
	$(PY)/python scripts/smoke.py --stack "$(STACK)" $(if $(REGION),--region "$(REGION)")

fetch-rds-ca:                       ## the RDS CA bundle for OUTBOX_DB_TLS=verify, shipped in the layer
	mkdir -p layers/deps/certs
	curl -fsSL -o layers/deps/certs/.download.pem $(RDS_CA_URL)
	OUTBOX_RDS_CA_BUNDLE=$(CURDIR)/layers/deps/certs/.download.pem $(MAKE) -s -C layers/deps check-ca-bundle
	mv layers/deps/certs/.download.pem layers/deps/certs/rds-global-bundle.pem

format: venv
	$(PY)/ruff format .
	$(PY)/ruff check --fix .

clean:
	rm -rf .venv .venv-tools .venv-sam .mypy_cache .ruff_cache .pytest_cache build .aws-sam
