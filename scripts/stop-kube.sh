#!/usr/bin/env bash
# Stops the Kubernetes control plane that scripts/start-kube.sh started, from its pid files
# $DEDUP_TEST_STATE/kube-NAME.pid: first kwok, the scheduler, the controller manager and the
# API server together (each takes a second or few to shut down; the API server does not
# finish without etcd), then etcd. What is still there after 10 s is killed. The state
# directory stays, for the logs; the next start makes a new etcd.
set -uo pipefail
state="${DEDUP_TEST_STATE:-${TMPDIR:-/tmp}/kafka-deduplicator-test-services}"

# stop NAME...: asks each to stop, waits for all of them, kills what is left.
stop() {
  local name pid entry left stopping=()
  for name in "$@"; do
    [ -f "$state/kube-$name.pid" ] || continue
    pid=$(cat "$state/kube-$name.pid")
    kill "$pid" 2>/dev/null && stopping+=("$name:$pid")
    rm -f "$state/kube-$name.pid"
  done
  for _ in $(seq 1 100); do
    left=0
    for entry in "${stopping[@]}"; do kill -0 "${entry#*:}" 2>/dev/null && left=1; done
    [ "$left" -eq 0 ] && break
    sleep 0.1
  done
  for entry in "${stopping[@]}"; do
    kill -9 "${entry#*:}" 2>/dev/null || true
    echo "stopped kube ${entry%%:*} (pid ${entry#*:})" >&2
  done
}
stop kwok scheduler controller-manager apiserver
stop etcd
