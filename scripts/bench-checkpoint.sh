#!/usr/bin/env bash
# Checkpoint benchmarks (creation pause at ~100 MB and ~2 GB, incremental upload bytes,
# restore rate vs plain parallel GET from moto), release build, one run, Markdown table.
#
#   scripts/bench-checkpoint.sh
#   DEDUP_BENCH_CHECKPOINT_MB=100 DEDUP_BENCH_RESTORE_MB=200 scripts/bench-checkpoint.sh
#
# Needs moto_server (scripts/start-test-services.sh) and ~6 GB free under
# DEDUP_BENCH_DIR (default /var/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${DEDUP_BENCH_TARGET_DIR:-/var/tmp/kafka-deduplicator-bench-target}"
cargo bench --locked -p dedup-core --bench checkpoint
