#!/usr/bin/env bash
# Starts the services the tests need, all on 127.0.0.1, each the real protocol peer of
# production:
# - S3: moto_server on port DEDUP_TEST_S3_PORT (5000);
# - Kafka: a single-node Apache Kafka broker in KRaft mode (scripts/start-kafka.sh) on
#   port DEDUP_TEST_KAFKA_PORT (19092);
# - Kubernetes: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok's
#   fake node (scripts/start-kube.sh), the API server on DEDUP_TEST_KUBE_PORT (16443);
#   it also puts kubectl on PATH;
# - helm and promtool, built by scripts/build-go-tools.sh and put on PATH.
# Services already started by this script are reused.
#
# Progress goes to standard error. Standard output gets only `export NAME=value` lines,
# one for each service, so that
#     eval "$(scripts/start-test-services.sh)"
# sets up a shell for the tests (and for trying the product on real services).
# scripts/stop-test-services.sh stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
state="${DEDUP_TEST_STATE:-${TMPDIR:-/tmp}/kafka-deduplicator-test-services}"
export DEDUP_TEST_STATE="$state"
mkdir -p "$state"
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# S3 (moto)
s3_port="${DEDUP_TEST_S3_PORT:-5000}"
if ! answers "$s3_port"; then
  command -v moto_server >/dev/null || { echo "moto_server is not installed (scripts/install-deps.sh)" >&2; exit 1; }
  nohup moto_server -H 127.0.0.1 -p "$s3_port" >"$state/moto.log" 2>&1 &
  echo $! >"$state/moto.pid"
  for _ in $(seq 1 100); do
    answers "$s3_port" && break
    sleep 0.1
  done
fi
if ! answers "$s3_port"; then
  echo "moto_server did not start; last lines of $state/moto.log:" >&2
  tail -n 20 "$state/moto.log" >&2 || true
  exit 1
fi
echo "S3 (moto) on http://127.0.0.1:$s3_port" >&2

# Kafka
kafka_exports=$(scripts/start-kafka.sh)

# Kubernetes
kube_exports=$(scripts/start-kube.sh)

# helm and promtool (the chart's and the alert rules' tests), on PATH after kubectl.
eval "$kube_exports"
tools_exports=$(scripts/build-go-tools.sh)

echo "export DEDUP_TEST_STATE=$state"
echo "export DEDUP_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port"
echo "$kafka_exports"
echo "$kube_exports"
echo "$tools_exports"
