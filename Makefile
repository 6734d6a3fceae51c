# Routine tasks.  `make test` is what CI runs (.ci/run): it installs and starts what it needs.
PY := .venv/bin
STAMP := .venv/.installed

.PHONY: dev venv stack-up stack-down stack-status migrate demo test test-unit lint format clean

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

test: venv stack-up                 ## the whole suite, on the real local stack
	$(PY)/pytest -q

test-unit: venv                     ## pure unit tests, no stack
	$(PY)/pytest -q tests/unit

lint: venv
	$(PY)/ruff check .
	$(PY)/ruff format --check .
	$(PY)/mypy

format: venv
	$(PY)/ruff format .
	$(PY)/ruff check --fix .

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache build
