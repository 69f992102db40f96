#!/usr/bin/env bash
# Checks the Helm chart offline, with the tools `make test-deps` installs (deploy/dev/install-deps.sh test):
#   1. helm lint --strict, with no extra values and with each ci/*-values.yaml;
#   2. helm template, with the defaults and with each ci/*-values.yaml;
#   3. kubernetes-validate --strict on every rendered manifest, against the oldest and the newest Kubernetes
#      whose schemas it ships (cert-manager.io and monitoring.coreos.com kinds have none there: skipped, and
#      said so; any other kind without a schema, e.g. a removed API version, fails);
#   4. pss_restricted.py: every Pod template against the "restricted" Pod Security Standard.
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

# The values each check runs with: "" is the chart's defaults alone.
shopt -s nullglob
ci_values=("$chart"/ci/*-values.yaml)
shopt -u nullglob
runs=("" "${ci_values[@]}")
runs_label="defaults + ${#ci_values[@]} ci values file(s)"
label_of() { if [ -n "$1" ]; then basename "$1" .yaml; else echo defaults; fi; }

# 1. helm lint --strict
bad=0
for values in "${runs[@]}"; do
  args=(); [ -n "$values" ] && args=(-f "$values")
  if ! out="$("$helm" lint --strict "$chart" "${args[@]}" 2>&1)"; then
    echo "$out" | indent
    echo "chart: helm lint --strict FAILED with $(label_of "$values")"
    bad=1
  fi
done
[ "$bad" = 0 ] && echo "chart: helm lint --strict ok ($runs_label)"
[ "$bad" = 0 ] || failed=1

# 2. helm template
rendered=()
bad=0
for values in "${runs[@]}"; do
  args=(); [ -n "$values" ] && args=(-f "$values")
  label="$(label_of "$values")"
  if "$helm" template keymesh "$chart" --namespace keymesh "${args[@]}" >"$work/$label.yaml" 2>"$work/$label.err"; then
    rendered+=("$work/$label.yaml")
  elif [ -z "$values" ] && grep -q 'is required' "$work/$label.err"; then
    # The defaults alone cannot install (no issuer, no master key, no database): the chart must say what to set.
    echo "chart: helm template with the defaults alone refuses, naming what to set: $(grep -o '[a-zA-Z.]* is required[^"]*' "$work/$label.err" | head -n1)"
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
  echo "chart: kubernetes-validate skips kinds with no built-in schema: $(cat "$work/skipped.txt")"
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

# 4. The restricted Pod Security Standard
if out="$(python3 "$here/pss_restricted.py" "${rendered[@]}" 2>&1)"; then
  echo "chart: restricted Pod Security Standard ok (${out##*: })"
else
  echo "${out//$work\//}" | indent
  echo "chart: restricted Pod Security Standard FAILED (${out##*: })"
  failed=1
fi

exit "$failed"
