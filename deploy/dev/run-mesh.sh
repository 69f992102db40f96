#!/usr/bin/env bash
# Starts the four services on loopback with the embedded defaults (data directory .keymesh: SQLite, the
# local KMS, a generated development CA), waits until all report SERVING over mTLS, and stops them all on
# Ctrl-C. A second run reuses the data directory; `make clean-data` starts afresh.
set -euo pipefail
bin="${CARGO_TARGET_DIR:?}/debug"
data="${KEYMESH_DATA_DIR:-.keymesh}"
export KEYMESH_DATA_DIR="$data"
pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping the mesh..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  echo "stopped."
}
trap stop INT TERM EXIT
mkdir -p "$data"
for svc in token-service audit-service key-service crypto-service; do
  "$bin/$svc" 2>>"$data/$svc.log" &
  pids+=($!)
done
if ! "$bin/keymesh" health --wait 60; then
  echo "the mesh did not come up; logs are in $data/*.log" >&2
  tail -n 5 "$data"/*.log >&2 || true
  exit 1
fi
cat <<MSG

keymesh is running (mTLS on loopback):
  key-service     127.0.0.1:7401      crypto-service  127.0.0.1:7402
  token-service   127.0.0.1:7403      audit-service   127.0.0.1:7404
data directory:    $data  (logs: $data/*.log)
admin credentials: $data/bootstrap-credentials.json (mode 0600)
CA certificate:    $data/pki/ca.pem
CLI:               $bin/keymesh   (try: export PATH="$bin:\$PATH")

Press Ctrl-C to stop all four.
MSG
wait -n "${pids[@]}" || true
echo "a service exited; see $data/*.log" >&2
