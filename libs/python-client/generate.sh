#!/usr/bin/env bash
# Generates the Python gRPC modules (keymesh/v1/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py) from the repository's
# proto/ with grpcio-tools' bundled protoc. Run from anywhere; the generated files are not committed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
rm -f libs/python-client/keymesh/v1/*_pb2.py libs/python-client/keymesh/v1/*_pb2.pyi libs/python-client/keymesh/v1/*_pb2_grpc.py
python3 -m grpc_tools.protoc -I proto --python_out=libs/python-client --pyi_out=libs/python-client --grpc_python_out=libs/python-client \
  proto/keymesh/v1/*.proto
