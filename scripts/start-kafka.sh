#!/usr/bin/env bash
# Starts a single-node Apache Kafka broker (KRaft, broker + controller in one process) on
# 127.0.0.1 for the tests and benchmarks: the real protocol peer of production.
#
# - The broker and its runtime dependencies are resolved by Maven from scripts/kafka/pom.xml
#   into a cache outside the clone ($DEDUP_TEST_CACHE, default ~/.cache/kafka-deduplicator),
#   once per version, and run with `java -cp`.
# - Storage is formatted at every start, in a fresh directory under $DEDUP_TEST_STATE.
# - Settings for one node and for tests: replication factor 1 and min ISR 1 for the offsets
#   and transaction logs, no initial rebalance delay. Heap bounded by DEDUP_TEST_KAFKA_HEAP.
# - A broker already started by this script on the same port is reused.
#
# Progress goes to standard error; standard output gets only `export NAME=value` lines, so
# `eval "$(scripts/start-kafka.sh)"` sets up a shell. A broker that fails to start fails the
# script with its log's tail. scripts/stop-test-services.sh stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

KAFKA_VERSION=4.4.0
port="${DEDUP_TEST_KAFKA_PORT:-19092}"
controller_port="${DEDUP_TEST_KAFKA_CONTROLLER_PORT:-19093}"
heap="${DEDUP_TEST_KAFKA_HEAP:-768m}"
cache="${DEDUP_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kafka-deduplicator}"
state="${DEDUP_TEST_STATE:-${TMPDIR:-/tmp}/kafka-deduplicator-test-services}"
libs="$cache/kafka-$KAFKA_VERSION/libs"
log="$state/kafka.log"

say() { echo "kafka: $*" >&2; }
fail() {
  say "$*"
  [ -f "$log" ] && { say "last lines of $log:"; tail -n 40 "$log" >&2; }
  exit 1
}
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for tool in java mvn; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/install-deps.sh installs it)"
done

if [ ! -f "$libs/.complete" ]; then
  say "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  mkdir -p "$state"
  if ! mvn -B -q -f scripts/kafka/pom.xml dependency:copy-dependencies \
    -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$libs" \
    >"$state/mvn.log" 2>&1; then
    log="$state/mvn.log"
    fail "mvn could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
  fi
  touch "$libs/.complete"
fi

mkdir -p "$state"
pid_file="$state/kafka.pid"
if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null && answers "$port"; then
  say "reusing the broker on 127.0.0.1:$port (pid $(cat "$pid_file"))"
else
  if answers "$port"; then
    fail "127.0.0.1:$port is taken by another process; set DEDUP_TEST_KAFKA_PORT"
  fi
  data="$state/kafka-data"
  rm -rf "$data"
  mkdir -p "$data"
  config="$state/kafka-server.properties"
  cat >"$config" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1
group.initial.rebalance.delay.ms=0
message.max.bytes=3000000
EOF
  classpath="$libs/*"
  java_opts=(-Xms256m "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$PWD/scripts/kafka/log4j2.yaml")
  cluster_id=$(java -cp "$classpath" kafka.tools.StorageTool random-uuid 2>>"$log") ||
    fail "the storage tool did not run"
  java -cp "$classpath" "${java_opts[@]}" kafka.tools.StorageTool format \
    -t "$cluster_id" -c "$config" >"$log" 2>&1 || fail "formatting $data failed"
  say "starting Apache Kafka $KAFKA_VERSION (KRaft) on 127.0.0.1:$port, heap $heap, log $log"
  nohup java -cp "$classpath" "${java_opts[@]}" kafka.Kafka "$config" >>"$log" 2>&1 &
  echo $! >"$pid_file"
  for _ in $(seq 1 600); do
    kill -0 "$(cat "$pid_file")" 2>/dev/null || fail "the broker exited"
    if answers "$port" && grep -q "Kafka Server started" "$log"; then
      break
    fi
    sleep 0.1
  done
  answers "$port" && grep -q "Kafka Server started" "$log" || fail "the broker did not start within 60 s"
  say "Apache Kafka $(grep -o 'Kafka version: [^ ]*' "$log" | head -1 | cut -d' ' -f3) is up (pid $(cat "$pid_file"))"
fi

echo "export KAFKA_TEST_BOOTSTRAP_SERVERS=127.0.0.1:$port"
