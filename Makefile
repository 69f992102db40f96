# keymesh — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/keymesh/target
BUF := $(HOME)/.cache/keymesh/node/node_modules/.bin/buf

.PHONY: run test chaos bench fuzz build deps test-deps lint fmt buf-lint buf-breaking clients clean-data clean

## run: build and start the whole mesh on its embedded defaults (Ctrl-C stops it)
run: deps build
	@deploy/dev/run-mesh.sh

## test: every test (unit, integration over mTLS with real Postgres and Redis, the Python, Go and TypeScript clients
## generated from proto/), formatting, clippy, buf lint and buf breaking
test: test-deps clients
	cargo build --workspace --bins --tests
	url="$$(deploy/dev/ensure-postgres.sh)" && KEYMESH_TEST_POSTGRES_URL="$$url" cargo test --workspace
	deploy/dev/smoke-run.sh
	deploy/dev/check-chart.sh
	$(MAKE) --no-print-directory lint

## chaos: the chaos suite's long form (integration-tests/tests/chaos.rs), CHAOS_SECONDS per drill (default 60) and a
## storm of CHAOS_CONNECTIONS mTLS connections (default 10000); make test runs its short form
CHAOS_SECONDS ?= 60
CHAOS_CONNECTIONS ?= 10000
chaos: test-deps
	cargo build --workspace --bins --tests
	url="$$(deploy/dev/ensure-postgres.sh)" && KEYMESH_TEST_POSTGRES_URL="$$url" KEYMESH_CHAOS_SECONDS=$(CHAOS_SECONDS) \
		KEYMESH_CHAOS_CONNECTIONS=$(CHAOS_CONNECTIONS) \
		cargo test -p integration-tests --test chaos -- --nocapture --test-threads 1

## bench: benchmarks (release build): GetDataKey latency per cache tier; the hot path (Encrypt/Decrypt at 1 KiB
## and 64 KiB, batches, streams, overload, RSS per service) beside OpenBao Transit and raw AES-GCM in one run;
## signatures (and ML-DSA-65, ML-KEM-768 beside liboqs), rate-limit isolation, and the cost of the audit spool and of
## telemetry
bench: test-deps
	cargo build --release --workspace --bins
	url="$$(deploy/dev/ensure-postgres.sh)" && KEYMESH_TEST_POSTGRES_URL="$$url" cargo bench -p key-service --bench get_data_key
	cargo bench -p integration-tests --bench hot_path
	cargo bench -p integration-tests --bench data_plane

## fuzz: the ciphertext parser and the stream decoder under cargo-fuzz (nightly), FUZZ_SECONDS each (default 600)
FUZZ_SECONDS ?= 600
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	cd libs/crypto && for target in ciphertext_parser stream_decoder; do \
		mkdir -p fuzz/corpus/$$target && \
		cargo +nightly fuzz run --target-dir $(HOME)/.cache/keymesh/fuzz-target $$target fuzz/corpus/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

build:
	cargo build --workspace --bins

## clients: generate the Python, Go and TypeScript clients from proto/ and build and unit-test each (libs/python-client,
## libs/go-client, libs/typescript-client); integration-tests/tests/clients.rs then drives each against the real mesh
clients: test-deps
	deploy/dev/generate-clients.sh

deps:
	@deploy/dev/install-deps.sh build

test-deps:
	@deploy/dev/install-deps.sh test

lint: buf-lint buf-breaking
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	@command -v cargo-machete >/dev/null || cargo install cargo-machete --locked
	cargo machete
	deploy/dev/check-layering.sh

$(BUF):
	npm install --silent --prefix $(HOME)/.cache/keymesh/node @bufbuild/buf

buf-lint: $(BUF)
	$(BUF) lint proto

## buf-breaking: the API against the last released one (proto/api-baseline.binpb, a buf image of keymesh.v1 as
## released); a change that would break a generated client fails here
buf-breaking: $(BUF)
	$(BUF) breaking proto --against proto/api-baseline.binpb

fmt:
	cargo fmt --all

## clean-data: forget the local mesh's keys, certificates and credentials
clean-data:
	rm -rf .keymesh

clean: clean-data
	cargo clean
