#!/usr/bin/env bash
# Starts the services the tests need that do not run in-process: moto_server (S3) on
# 127.0.0.1:5000 (DEDUP_TEST_S3_PORT). Kafka is librdkafka's mock cluster, started by
# the tests themselves. Prints the pid file; `kill $(cat FILE)` stops it.
set -euo pipefail
port="${DEDUP_TEST_S3_PORT:-5000}"
state="${TMPDIR:-/tmp}/kafka-deduplicator-test-services"
mkdir -p "$state"
if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  nohup moto_server -H 127.0.0.1 -p "$port" >"$state/moto.log" 2>&1 &
  echo $! >"$state/moto.pid"
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
fi
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "moto_server did not start; see $state/moto.log" >&2; exit 1; }
echo "S3 (moto) on http://127.0.0.1:$port"
echo "$state/moto.pid"
