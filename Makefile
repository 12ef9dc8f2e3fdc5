# Mailroom: `make run` starts the broker, `make test` runs every test. Nothing else is needed on a fresh
# machine with the Rust toolchain: the Python client the tests use (pika) is installed into .venv here.

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
VENV_OK := $(VENV)/.installed
NODE_OK := .tools/node/.installed

.PHONY: run test lint bench bench-compare crash-test perf clean-venv

run:
	$(CARGO) run --release --bin mailroom -- --data-dir ./data

test: $(VENV_OK) $(NODE_OK)
	$(CARGO) build --bin mailroom
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	$(CARGO) bench -p mailroom-router --bench route -- --warm-up-time 1 --measurement-time 3

# Mailroom vs RabbitMQ (issue 6): builds release binaries, installs rabbitmq-server if missing,
# runs S1-S6, L1 and M1 against both on private ports and rewrites the generated section of
# docs/performance.md. Knobs (environment or make variables): REPEAT=1 for a quick run,
# M1_COUNT=10000000 for the 10 M memory run; see scripts/bench-compare.sh.
bench-compare:
	CARGO="$(CARGO)" PYTHON="$(PYTHON)" scripts/bench-compare.sh

# The kill -9 crash test with 100 cycles (CI runs 10 as part of `make test`).
crash-test:
	MAILROOM_CRASH_CYCLES=100 $(CARGO) test -p mailroom-tests --test crash -- --nocapture

$(VENV_OK): tests/python/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

# amqplib for the Node.js checks, from the npm registry into .tools/node (ignored).
$(NODE_OK): tests/node/package.json
	mkdir -p .tools/node
	cp tests/node/package.json .tools/node/package.json
	cd .tools/node && npm install --no-audit --no-fund --silent
	touch $@

clean-venv:
	rm -rf $(VENV)
