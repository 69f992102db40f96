#!/usr/bin/env bash
# Generates the Python, Go and TypeScript clients from proto/ (nothing generated is committed), then builds and
# unit-tests each: Python with grpcio-tools' protoc, Go and TypeScript with `buf generate` and the local plugins of
# proto/buf.gen.yaml (Debian's protoc-gen-go and protoc-gen-go-grpc, npm's protoc-gen-es). The Go driver lands in
# $KEYMESH_GO_BIN (default ~/.cache/keymesh/go/bin), where integration-tests/tests/clients.rs runs it; the Python and
# TypeScript drivers run from libs/. `make clients` runs this, and `make test` before the Rust tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
buf="$HOME/.cache/keymesh/node/node_modules/.bin/buf"
[ -x "$buf" ] || npm install --silent --prefix "$HOME/.cache/keymesh/node" @bufbuild/buf

step() { printf '== %s\n' "$*"; }

step "Python: generate (grpcio-tools) and unit-test"
libs/python-client/generate.sh
python3 -m unittest discover -s libs/python-client/tests -p 'test_*.py'

step "Go and TypeScript: buf generate (local plugins)"
# buf needs protoc-gen-es from the TypeScript client's locked packages; npm ci writes node_modules/.package-lock.json
# last, so one missing or older than package-lock.json means a stale install.
ts=libs/typescript-client
if [ ! -f "$ts/node_modules/.package-lock.json" ] || [ "$ts/package-lock.json" -nt "$ts/node_modules/.package-lock.json" ]; then
  npm ci --prefix "$ts" --no-audit --no-fund --prefer-offline --loglevel=error
fi
PATH="$PWD/$ts/node_modules/.bin:$PATH" "$buf" generate proto --template proto/buf.gen.yaml

step "Go: vet, build the driver, unit-test"
libs/go-client/build.sh "${KEYMESH_GO_BIN:-$HOME/.cache/keymesh/go/bin}"
libs/go-client/test.sh

step "TypeScript: compile and unit-test"
"$ts/build.sh" test
