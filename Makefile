# keymesh — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/keymesh/target
BUF := $(HOME)/.cache/keymesh/node/node_modules/.bin/buf

.PHONY: run test bench build deps test-deps lint fmt buf-lint clean-data clean

## run: build and start the whole mesh on its embedded defaults (Ctrl-C stops it)
run: deps build
	@deploy/dev/run-mesh.sh

## test: every test (unit, integration over mTLS with real Postgres and Redis), formatting, clippy, buf lint
test: test-deps
	cargo build --workspace --bins --tests
	url="$$(deploy/dev/ensure-postgres.sh)" && KEYMESH_TEST_POSTGRES_URL="$$url" cargo test --workspace
	deploy/dev/smoke-run.sh
	$(MAKE) --no-print-directory lint

## bench: benchmarks (release build): GetDataKey latency per cache tier against an AES-GCM baseline
bench: test-deps
	url="$$(deploy/dev/ensure-postgres.sh)" && KEYMESH_TEST_POSTGRES_URL="$$url" cargo bench -p key-service --bench get_data_key

build:
	cargo build --workspace --bins

deps:
	@deploy/dev/install-deps.sh build

test-deps:
	@deploy/dev/install-deps.sh test

lint: buf-lint
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

$(BUF):
	npm install --silent --prefix $(HOME)/.cache/keymesh/node @bufbuild/buf

buf-lint: $(BUF)
	$(BUF) lint proto

fmt:
	cargo fmt --all

## clean-data: forget the local mesh's keys, certificates and credentials
clean-data:
	rm -rf .keymesh

clean: clean-data
	cargo clean
