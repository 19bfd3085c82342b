#!/usr/bin/env bash
# Builds the Go tools the tests run besides the control plane, from the Go module proxy:
# - helm (scripts/tools/helm): lints charts/kafka-deduplicator and renders it for the
#   comparison with the kustomize manifests;
# - promtool (scripts/tools/promtool): unit-tests the alert rules.
# Binaries are cached outside the clone, in a directory keyed on the versions and on a
# hash of the module files, like scripts/start-kube.sh does. Progress goes to standard
# error; standard output is one line, `export PATH=<tools>:$PATH`.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${DEDUP_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kafka-deduplicator}"
say() { echo "tools: $*" >&2; }

# tool_version MODULE GO_MOD: the version GO_MOD requires.
tool_version() { awk -v m="$1" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m { print $2; exit }' "$2"; }
helm_version=$(tool_version helm.sh/helm/v3 scripts/tools/helm/go.mod)
prometheus_version=$(tool_version github.com/prometheus/prometheus scripts/tools/promtool/go.mod)
if [ -z "$helm_version" ] || [ -z "$prometheus_version" ]; then
  say "could not read the versions from scripts/tools/*/go.mod"
  exit 1
fi
inputs_hash=$(cat scripts/tools/helm/go.mod scripts/tools/helm/go.sum scripts/tools/promtool/go.mod \
  scripts/tools/promtool/go.sum "$0" | grep -v '^//' | sha256sum | cut -c1-12)
# What helm's own release build sets: its version, and the Kubernetes version `helm
# template` and `helm lint` assume (that of its client-go; unset, it is 1.20 and a chart's
# kubeVersion >=1.30 is refused).
client_go=$(tool_version k8s.io/client-go scripts/tools/helm/go.mod)
k8s_minor=${client_go#v0.}
k8s_minor=${k8s_minor%%.*}
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
for package in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  helm_ldflags+=" -X $package.k8sVersionMajor=1 -X $package.k8sVersionMinor=$k8s_minor"
done
prometheus_ldflags="-s -w -X github.com/prometheus/common/version.Version=$prometheus_version"
bin="$cache/tools-helm-$helm_version-prometheus-$prometheus_version-$inputs_hash/bin"

if [ ! -f "$bin/.complete" ]; then
  go=$(command -v go || echo /usr/local/go/bin/go)
  [ -x "$go" ] || { say "Go is not installed; it builds helm and promtool from the Go module proxy"; exit 1; }
  mkdir -p "$bin"
  log="$bin/../build.log"
  say "building helm $helm_version and promtool (prometheus $prometheus_version) into $bin (log $log)"
  started=$SECONDS
  export CGO_ENABLED=0 GOWORK=off
  if ! (
    cd scripts/tools/helm && "$go" build -trimpath -buildvcs=false -ldflags="$helm_ldflags" -o "$bin/" helm.sh/helm/v3/cmd/helm &&
      cd ../promtool && "$go" build -trimpath -buildvcs=false -ldflags="$prometheus_ldflags" -o "$bin/" github.com/prometheus/prometheus/cmd/promtool
  ) >"$log" 2>&1; then
    say "go build failed; last lines of $log:"
    tail -n 30 "$log" >&2
    exit 1
  fi
  for b in helm promtool; do
    [ -x "$bin/$b" ] || { say "go build did not produce $bin/$b"; exit 1; }
  done
  touch "$bin/.complete"
  say "built in $((SECONDS - started)) s"
fi
PATH="$bin:$(printf '%s' "$PATH" | tr ':' '\n' | { grep -vxF "$bin" || true; } | paste -sd: -)"
printf 'export PATH=%q\n' "$PATH"
