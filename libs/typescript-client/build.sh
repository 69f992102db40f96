#!/usr/bin/env bash
# Builds the TypeScript client from any directory: installs the locked npm packages (npm ci) when
# node_modules is missing or was installed from another package-lock.json, then compiles src/ to dist/.
# src/gen must have been generated first (buf generate proto --template proto/buf.gen.yaml, from the repository
# root with libs/typescript-client/node_modules/.bin on PATH: deploy/dev/generate-clients.sh does both).
# `build.sh test` also runs the unit tests (npm test: node --test on dist/test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# npm ci writes node_modules/.package-lock.json last: missing or older than package-lock.json means stale.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --prefer-offline --loglevel=error
fi

if [ ! -f src/gen/keymesh/v1/key_service_pb.ts ]; then
  echo "libs/typescript-client/src/gen is missing: generate it first (deploy/dev/generate-clients.sh)" >&2
  exit 1
fi

rm -rf dist
node_modules/.bin/tsc -p tsconfig.json

if [ "${1:-}" = "test" ]; then
  npm test
fi
