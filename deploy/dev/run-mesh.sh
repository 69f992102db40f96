#!/usr/bin/env bash
# Starts the four services on loopback with the embedded defaults (data directory .keymesh: SQLite, the
# local KMS, a generated development CA), waits until all report SERVING over mTLS, then the admin console
# (loopback, with the development login), and stops them all on Ctrl-C. A second run reuses the data
# directory; `make clean-data` starts afresh.
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
# The console: loopback only, so the development login (the bootstrap admin's client id and secret) may be on.
console_listen="${KEYMESH_CONSOLE__LISTEN:-127.0.0.1:7480}"
KEYMESH_CONSOLE__LISTEN="$console_listen" KEYMESH_CONSOLE__DEV_LOGIN=true "$bin/keymesh-console" 2>>"$data/console.log" &
console_pid=$!
pids+=($console_pid)
until (exec 3<>"/dev/tcp/${console_listen%:*}/${console_listen##*:}") 2>/dev/null; do
  if ! kill -0 "$console_pid" 2>/dev/null; then
    echo "the console did not start; see $data/console.log:" >&2
    tail -n 3 "$data/console.log" >&2 || true
    exit 1
  fi
  sleep 0.1
done
cat <<MSG

keymesh is running (mTLS on loopback):
  key-service     127.0.0.1:7401      crypto-service  127.0.0.1:7402
  token-service   127.0.0.1:7403      audit-service   127.0.0.1:7404
data directory:    $data  (logs: $data/*.log)
admin credentials: $data/bootstrap-credentials.json (mode 0600)
CA certificate:    $data/pki/ca.pem
CLI:               $bin/keymesh   (try: export PATH="$bin:\$PATH")
console:           http://$console_listen/  (development login: the client_id and client_secret
                   in $data/bootstrap-credentials.json)

Press Ctrl-C to stop all five.
MSG
wait -n "${pids[@]}" || true
echo "a service exited; see $data/*.log" >&2
