#!/usr/bin/env bash
# Vets the Go client (the generated code, package keymesh and the e2e driver) and builds the driver
# keymesh-e2e into $1 (default $HOME/.cache/keymesh/go/bin). Needs the generated code in libs/go-client/gen.
set -euo pipefail
out="${1:-$HOME/.cache/keymesh/go/bin}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/goenv.sh"
go vet "$pkg/gen/keymesh/v1" "$pkg/keymesh" "$pkg/cmd/keymesh-e2e"
go build -o "$out/keymesh-e2e" "$pkg/cmd/keymesh-e2e"
echo "built $out/keymesh-e2e"
