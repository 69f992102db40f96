#!/usr/bin/env bash
# Runs the Go client's unit tests (in-process TLS gRPC servers; no mesh needed). Extra arguments go to
# `go test`, e.g. ./test.sh -run Refresh -v. Needs the generated code in libs/go-client/gen.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/goenv.sh"
go test -count=1 "$@" "$pkg/keymesh"
