# The two commands that do everything on a fresh Debian 12 machine: `make demo`, `make test`.
# Each installs what is missing first (scripts/install-deps.sh is idempotent and quick when
# everything is there).

SHELL := /bin/bash
# rustup's cargo may be missing from PATH under make in CI.
export PATH := $(HOME)/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$(PATH)

CARGO ?= cargo

.PHONY: all deps build demo test unit integration lint clean-containers

all: build

deps:
	scripts/install-deps.sh

build: deps
	$(CARGO) build --release

demo: build
	scripts/demo.sh target/release/ferry

# Every test: unit tests, integration tests (real containers, as root) and podman.
# --no-fail-fast runs every test binary and still fails at the end if any test failed.
test: deps
	$(CARGO) build
	$(CARGO) test --no-fail-fast

# Only the pure-logic tests beside the code (no root needed).
unit:
	$(CARGO) test --lib --bins

lint:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) fmt --check
