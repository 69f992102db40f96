#!/usr/bin/env bash
# The crate floors the README promises, checked with `cargo tree` (no build): the SDK stays light, the
# transport floor knows no domain crate, and the cryptographic core knows nothing of the API.
set -euo pipefail
fail() { echo "layering: $*" >&2; exit 1; }
deps() { cargo tree -p "$1" --edges normal --prefix none | sed 's/ (\*)//' | sort -u; }

sdk=$(deps keymesh-client)
count=$(wc -l <<<"$sdk")
[ "$count" -le 200 ] || fail "keymesh-client compiles $count crates; at most 200"
# aws-lc-rs is the TLS crypto provider (the post-quantum X25519MLKEM768 key exchange), not AWS's cloud SDK.
heavy=$(grep -E '^(aws-|azure_|google-cloud-|vaultrs |sea-orm|sqlx|cel |redis )' <<<"$sdk" | grep -vE '^aws-lc-(rs|sys) ' || true)
[ -z "$heavy" ] || fail "keymesh-client reaches $(tr '\n' ' ' <<<"$heavy")"
domain=$(deps keymesh-mesh | grep -E '^keymesh-(kms|policy|limits|store|audit|gate|config) ' || true)
[ -z "$domain" ] || fail "keymesh-mesh reaches $(tr '\n' ' ' <<<"$domain")"
api=$(deps keymesh-crypto | grep -E '^keymesh-' | grep -v '^keymesh-crypto ' || true)
[ -z "$api" ] || fail "keymesh-crypto reaches $(tr '\n' ' ' <<<"$api")"
echo "layering: keymesh-client $count crates, no cloud SDK, database, CEL or Redis; mesh and crypto on their floors"
