#!/usr/bin/env bash
# Checks the Helm chart offline, with the tools `make test-deps` installs (deploy/dev/install-deps.sh test):
#   1. helm lint --strict with each ci/*-values.yaml (values.schema.json included); with the defaults alone it
#      must refuse, naming what to set (the defaults cannot install: a trial sets allowEphemeralState=true);
#   2. helm template, with each ci/*-values.yaml;
#   3. kubernetes-validate --strict on every rendered manifest, against the oldest and the newest Kubernetes
#      whose schemas it ships (any kind without a schema there, e.g. a removed API version, fails), except the
#      cert-manager.io and monitoring.coreos.com kinds, which validate_crds.py checks against the CRD schemas
#      vendored in deploy/dev/crds (strict too: an unknown field fails);
#   4. pss_restricted.py: every Pod template against the "restricted" Pod Security Standard;
#   5. every values file in deploy/dev/chart-refusals/ is refused by helm lint --strict (unless it says
#      "# lint: may-pass") and by helm template, with the message its "# expect:" line names;
#   6. the console's NOTES (helm install --dry-run=client, offline): its URL, and the warning when token-service
#      has no exchange issuer for the console's OIDC provider (and none when it has one).
# One line per check; exits non-zero if any check fails.
# Usage: deploy/dev/check-chart.sh [CHART_DIR]   (default: helm/keymesh of this repository)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
chart="${1:-$here/../../helm/keymesh}"
helm="$HOME/.cache/keymesh/bin/helm"
if [ ! -x "$helm" ]; then
  echo "chart: $helm is missing: run make test-deps" >&2
  exit 1
fi
if ! python3 -c "import kubernetes_validate, yaml" 2>/dev/null; then
  echo "chart: the python package kubernetes-validate is missing: run make test-deps" >&2
  exit 1
fi
[ -f "$chart/Chart.yaml" ] || { echo "chart: no Chart.yaml in $chart" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
indent() { sed 's/^/    /'; }

shopt -s nullglob
ci_values=("$chart"/ci/*-values.yaml)
refusals=("$here"/chart-refusals/*.yaml)
shopt -u nullglob
label_of() { basename "$1" .yaml; }
[ ${#ci_values[@]} -gt 0 ] || { echo "chart: no ci/*-values.yaml in $chart" >&2; exit 1; }

# 1. helm lint --strict
bad=0
for values in "${ci_values[@]}"; do
  if ! out="$("$helm" lint --strict "$chart" -f "$values" 2>&1)"; then
    echo "$out" | indent
    echo "chart: helm lint --strict FAILED with $(label_of "$values")"
    bad=1
  fi
done
[ "$bad" = 0 ] && echo "chart: helm lint --strict ok (${#ci_values[@]} ci values files: $(for v in "${ci_values[@]}"; do printf '%s ' "$(label_of "$v")"; done | sed 's/ $//'))"
[ "$bad" = 0 ] || failed=1
# The defaults alone cannot install (no master key or database chosen): lint must refuse, naming the values.
if out="$("$helm" lint --strict "$chart" 2>&1)"; then
  echo "chart: helm lint --strict PASSED on the defaults alone, which cannot install"
  failed=1
elif grep -q "masterKey/existingSecret\|database/existingSecret" <<<"$out"; then
  echo "chart: helm lint --strict refuses the defaults alone, naming what to set: $(grep -o "at '/[a-zA-Z/]*existingSecret'[^']*" <<<"$out" | sort -u | tr '\n' ' ' | sed 's/ $//')"
else
  echo "$out" | indent
  echo "chart: helm lint --strict refuses the defaults alone, but without naming masterKey or database"
  failed=1
fi

# 2. helm template
rendered=()
bad=0
for values in "${ci_values[@]}"; do
  label="$(label_of "$values")"
  if "$helm" template keymesh "$chart" --namespace keymesh -f "$values" >"$work/$label.yaml" 2>"$work/$label.err"; then
    rendered+=("$work/$label.yaml")
  else
    indent <"$work/$label.err"
    echo "chart: helm template FAILED with $label: $(grep '^Error:' "$work/$label.err" | head -n1)"
    bad=1
  fi
done
[ "$bad" = 0 ] && echo "chart: helm template ok (${#rendered[@]} render(s))"
[ "$bad" = 0 ] || failed=1

if [ ${#rendered[@]} -eq 0 ]; then
  echo "chart: kubernetes-validate and the restricted Pod Security Standard not run: nothing rendered"
  exit 1
fi

# 3. kubernetes-validate --strict. Each render is split first: the kinds of the CRD groups below have no
# schema in kubernetes-validate (which takes no extra schemas), so they go aside and are counted.
read -r k8s_oldest k8s_newest < <(python3 -c '
import kubernetes_validate.utils as u
v = u.all_versions()
print(v[0], v[-1])')
mm() { echo "${1%.*}"; }
python3 - "$work/skipped.txt" "${rendered[@]}" <<'PY'
import collections, sys, yaml
SKIP_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")
skipped = collections.Counter()
for path in sys.argv[2:]:
    kept = []
    with open(path, encoding="utf-8") as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            if str(doc.get("apiVersion", "")).startswith(SKIP_GROUPS):
                skipped[f"{doc.get('kind')} ({doc.get('apiVersion')})"] += 1
            else:
                kept.append(doc)
    with open(path[:-len(".yaml")] + ".k8s.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump_all(kept, f, sort_keys=False)
with open(sys.argv[1], "w", encoding="utf-8") as f:
    f.write(", ".join(f"{n} x {k}" for k, n in sorted(skipped.items())))
PY
if [ -s "$work/skipped.txt" ]; then
  echo "chart: kubernetes-validate leaves the CRD kinds to validate_crds.py: $(cat "$work/skipped.txt")"
fi
to_validate=("${rendered[@]/%.yaml/.k8s.yaml}")
resources="$(cat "${to_validate[@]}" | grep -c '^kind:' || true)"
out="$(python3 -m kubernetes_validate --strict --quiet -k "$k8s_oldest" -k "$k8s_newest" "${to_validate[@]}" 2>&1)" && rc=0 || rc=$?
# A kind with no schema is only a warning there (exit 0): here it fails, since the CRD groups are set aside
# above, and a built-in kind without a schema is a typo or an API version the cluster no longer serves.
if [ "$rc" -ne 0 ] || grep -q . <<<"$out"; then
  echo "${out//$work\//}" | indent
  echo "chart: kubernetes-validate --strict FAILED against $(mm "$k8s_oldest") and/or $(mm "$k8s_newest")"
  failed=1
else
  echo "chart: kubernetes-validate --strict ok against $(mm "$k8s_oldest") and $(mm "$k8s_newest") ($resources resources from ${#rendered[@]} render(s))"
fi

# Runs a checker script over every render and reports its last line's summary (what follows its last ": ").
check_renders() {
  local label="$1" script="$2" out
  if out="$(python3 "$here/$script" "${rendered[@]}" 2>&1)"; then
    echo "chart: $label ok (${out##*: })"
  else
    echo "${out//$work\//}" | indent
    echo "chart: $label FAILED (${out##*: })"
    failed=1
  fi
}

# 3b. cert-manager and Prometheus Operator objects against their CRDs' schemas
check_renders "CRD schemas" validate_crds.py

# 4. The restricted Pod Security Standard
check_renders "restricted Pod Security Standard" pss_restricted.py

# 5. Values that cannot install are refused, each with the message its file expects.
if [ ${#refusals[@]} -eq 0 ]; then
  echo "chart: no refusal cases in $here/chart-refusals"
  failed=1
fi
bad=0
for values in "${refusals[@]}"; do
  label="$(label_of "$values")"
  expect="$(sed -n 's/^# expect: //p' "$values" | head -n1)"
  [ -n "$expect" ] || { echo "chart: $label has no '# expect:' line"; bad=1; continue; }
  commands=("template keymesh")
  grep -q '^# lint: may-pass' "$values" || commands=("lint --strict" "${commands[@]}")
  for command in "${commands[@]}"; do
    # shellcheck disable=SC2086 # the command's words
    if out="$("$helm" $command "$chart" -f "$values" 2>&1)"; then
      echo "chart: helm $command ACCEPTED $label, which cannot install"
      bad=1
    elif ! grep -qF -- "$expect" <<<"$out"; then
      echo "$out" | indent
      echo "chart: helm $command refused $label without saying: $expect"
      bad=1
    fi
  done
done
[ "$bad" = 0 ] && echo "chart: ${#refusals[@]} values files that cannot install are refused by lint and template, each naming its reason"
[ "$bad" = 0 ] || failed=1

notes() {  # the NOTES of an offline dry-run install with these values files
  local files=() f
  for f in "$@"; do files+=(-f "$f"); done
  "$helm" install keymesh "$chart" -n keymesh --dry-run=client "${files[@]}" 2>&1 | sed -n '/^NOTES:/,$p'
}
console_values="$chart/ci/console-values.yaml"
without_issuer="$work/console-without-issuer.yaml"
printf 'config:\n  tokens:\n    exchange:\n      issuers: []\n      rules: []\n' > "$without_issuer"
with="$(notes "$console_values")"
without="$(notes "$console_values" "$without_issuer")"
if grep -qF "Admin console: https://keymesh.example.com/" <<<"$with" && ! grep -q "WARNING: config.tokens.exchange has no such issuer" <<<"$with" \
  && grep -q "WARNING: config.tokens.exchange has no such issuer" <<<"$without"; then
  echo "chart: the console's NOTES name its URL, and warn when token-service has no exchange issuer for its provider"
else
  echo "$with" "$without" | indent
  echo "chart: the console's NOTES lack its URL or the exchange warning, or warn with the issuer configured"
  failed=1
fi

exit "$failed"
