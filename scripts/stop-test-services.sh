#!/usr/bin/env bash
# Stops what scripts/start-test-services.sh started (moto_server, the Kafka broker, the
# Kubernetes control plane).
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/stop-kube.sh
state="${DEDUP_TEST_STATE:-${TMPDIR:-/tmp}/kafka-deduplicator-test-services}"
for name in kafka moto; do
  pid_file="$state/$name.pid"
  [ -f "$pid_file" ] || continue
  pid=$(cat "$pid_file")
  if kill "$pid" 2>/dev/null; then
    # The broker shuts down cleanly in a few seconds; do not leave it behind.
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $name (pid $pid)" >&2
  fi
  rm -f "$pid_file"
done
