# Mailroom: `make run` starts the broker, `make test` runs every test. Nothing else is needed on a fresh
# machine with the Rust toolchain: the Python client the tests use (pika) is installed into .venv here.

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
VENV_OK := $(VENV)/.installed
NODE_OK := .tools/node/.installed
# Headless Chromium (Debian's package) and playwright-core for the web console test
# (tests/tests/console_browser.rs). Never `playwright install`: it downloads a browser build of its own.
CHROMIUM_OK := .tools/chromium.installed
PLAYWRIGHT_OK := .tools/playwright/.installed
# The real rabbitmqadmin v2 (crates.io), for tests/tests/http_rabbitmqadmin.rs; built once per machine.
RABBITMQADMIN := .tools/rabbitmqadmin/bin/rabbitmqadmin
RABBITMQADMIN_VERSION ?= 2.35.0

.PHONY: console-deps rabbitmqadmin run test test-power-loss test-write-faults lint bench bench-compare bench-stream crash-test perf clean-venv fuzz fuzz-corpus fuzz-server

run:
	$(CARGO) run --release --bin mailroom -- --data-dir ./data

test: $(VENV_OK) $(NODE_OK) $(RABBITMQADMIN) $(CHROMIUM_OK) $(PLAYWRIGHT_OK)
	$(CARGO) build --bin mailroom
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	$(CARGO) bench -p mailroom-router --bench route -- --warm-up-time 1 --measurement-time 3

# Mailroom vs RabbitMQ (issue 6): builds release binaries, installs rabbitmq-server if missing,
# runs S1-S6, F1-F3, L1 and M1 against both on private ports and rewrites the generated section of
# docs/performance.md. Knobs (environment or make variables): REPEAT=1 for a quick run,
# M1_COUNT=10000000 for the 10 M memory run; see scripts/bench-compare.sh.
bench-compare:
	CARGO="$(CARGO)" PYTHON="$(PYTHON)" scripts/bench-compare.sh

# Stream queues, Mailroom vs RabbitMQ (issue 15): append with confirms, replay from first.
bench-stream:
	CARGO="$(CARGO)" PYTHON="$(PYTHON)" scripts/bench-stream.sh

# The kill -9 crash test with 100 cycles (CI runs 10 as part of `make test`).
crash-test:
	MAILROOM_CRASH_CYCLES=100 $(CARGO) test -p mailroom-tests --test crash -- --nocapture

# Coverage-guided fuzzing (issue 18): every target in fuzz/ for FUZZ_SECONDS each (default 600), one at a
# time; installs cargo-fuzz into .tools/ if missing; needs the nightly toolchain. See docs/security.md.
FUZZ_SECONDS ?= 600
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) CARGO="$(CARGO)" scripts/fuzz.sh

# The seed corpora (built with the crates' own encoders) into fuzz/corpus/<target>/ (ignored).
fuzz-corpus:
	$(CARGO) run -q --manifest-path fuzz/Cargo.toml --no-default-features --bin gen-corpus

# The black-box server fuzzer for longer than the one-minute run in `make test`: SECONDS=N SEED=S.
SECONDS ?= 600
SEED ?=
fuzz-server:
	$(CARGO) build --bin mailroom
	MAILROOM_FUZZ_SECONDS=$(SECONDS) MAILROOM_FUZZ_SEED=$(SEED) MAILROOM_FUZZ_STRICT=1 $(CARGO) test -p mailroom-tests --test fuzz_server -- --nocapture

# Durability under power loss and failed writes (issue 17; docs/testing-durability.md). Builds LazyFS from
# ../shared/tools/lazyfs into .tools/lazyfs (its build.sh installs g++, libfuse3-dev, libspdlog-dev,
# libtoml11-dev and fuse3 when run as root), then runs tests/tests/power_loss.rs (20 power cuts at random
# moments, crash points, torn writes), tests/tests/power_loss_stream.rs (20 cuts of a stream with confirms and
# offset tracking) and the write-failure tests. Needs /dev/fuse; `.ci/run` runs it after
# `make test` when /dev/fuse exists. Knobs: POWER_LOSS_CUTS, and the MAILROOM_POWER_LOSS_* variables.
LAZYFS_BUILD ?= $(firstword $(wildcard ../shared/tools/lazyfs/build.sh ../../shared/tools/lazyfs/build.sh))
POWER_LOSS_CUTS ?= 20

test-power-loss:
	@test -e /dev/fuse || { echo "test-power-loss: /dev/fuse is missing: LazyFS is a FUSE file system" >&2; exit 1; }
	@test -n "$(LAZYFS_BUILD)" || { echo "test-power-loss: ../shared/tools/lazyfs/build.sh not found; set LAZYFS_BUILD" >&2; exit 1; }
	$(LAZYFS_BUILD) $(CURDIR)/.tools/lazyfs
	$(CARGO) build --bin mailroom
	status=0; \
	MAILROOM_LAZYFS=$(CURDIR)/.tools/lazyfs/lazyfs MAILROOM_POWER_LOSS_CUTS=$(POWER_LOSS_CUTS) \
		$(CARGO) test -p mailroom-tests --test power_loss -- --test-threads=1 --nocapture || status=1; \
	MAILROOM_LAZYFS=$(CURDIR)/.tools/lazyfs/lazyfs MAILROOM_POWER_LOSS_CUTS=$(POWER_LOSS_CUTS) \
		$(CARGO) test -p mailroom-tests --test power_loss_stream -- --test-threads=1 --nocapture || status=1; \
	$(MAKE) --no-print-directory test-write-faults || status=1; \
	exit $$status

# The write-failure tests alone (an LD_PRELOAD shim built with cc; no FUSE needed).
test-write-faults:
	$(CARGO) build --bin mailroom
	MAILROOM_WRITE_FAULTS=1 $(CARGO) test -p mailroom-tests --test write_failure -- --nocapture

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

# Debian's chromium when /usr/bin/chromium is missing (apt-get as root, as on CI), once per machine.
$(CHROMIUM_OK):
	mkdir -p .tools
	test -x /usr/bin/chromium || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core; }
	/usr/bin/chromium --version
	touch $@

# playwright-core (the driver only: no browser download) from the npm registry into .tools/playwright.
$(PLAYWRIGHT_OK): tests/console/package.json
	mkdir -p .tools/playwright
	cp tests/console/package.json .tools/playwright/package.json
	cd .tools/playwright && npm install --no-audit --no-fund --silent
	touch $@

console-deps: $(CHROMIUM_OK) $(PLAYWRIGHT_OK)

# rabbitmqadmin v2 from crates.io into .tools/rabbitmqadmin (ignored), when missing.
$(RABBITMQADMIN):
	$(CARGO) install --locked --quiet --root .tools/rabbitmqadmin rabbitmqadmin --version $(RABBITMQADMIN_VERSION)

rabbitmqadmin: $(RABBITMQADMIN)

clean-venv:
	rm -rf $(VENV)
