#!/usr/bin/env bash
# The benchmark suite: every comparison of docs/benchmarks.md measured in one run on
# this machine, printed as tables and written into docs/benchmarks.md (between the
# `suite` markers).
#
#   scripts/bench.sh                      # ~10 minutes once the release build exists
#   DEDUP_BENCH_SIZES=1000000,10000000 scripts/bench.sh   # larger store sizes too
#
# 1. store: check_and_insert vs db_bench fillrandom and an in-memory HashSet
#    (scripts/bench-store.sh);
# 2. end to end on the real Kafka broker (scripts/start-test-services.sh starts it):
#    1,000,000 events at 1 and at 8 partitions, the deduplicator (at-least-once and
#    exactly-once) vs raw librdkafka consume + produce loops, CPU per million events and
#    the broker's CPU; then RSS per partition at steady state
#    (cargo bench -p deduplicator --bench pipeline);
# 3. checkpoints: creation pause at ~100 MB and ~2 GB, incremental upload bytes, restore
#    rate vs plain parallel GET from moto (scripts/bench-checkpoint.sh).
#
# Needs what scripts/install-deps.sh installs (rocksdb-tools for db_bench, moto, Java). The
# first release build (RocksDB, librdkafka, the AWS SDK) takes ~30 minutes more.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${DEDUP_BENCH_TARGET_DIR:-/var/tmp/kafka-deduplicator-bench-target}"
export DEDUP_BENCH_SIZES="${DEDUP_BENCH_SIZES:-1000000}"
eval "$(scripts/start-test-services.sh)"

echo "building (release) ..." >&2
cargo build --release --locked -p deduplicator >&2
cargo bench --locked --no-run -p dedup-core -p deduplicator >&2

started=$(date +%s)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
{
  echo "#### Store: check_and_insert vs db_bench fillrandom and HashSet"
  echo
  scripts/bench-store.sh 2>/dev/null
  echo
  echo "#### End to end on the real broker, and memory"
  echo
  cargo bench --locked -p deduplicator --bench pipeline 2>/dev/null
  echo
  echo "#### Checkpoints"
  echo
  scripts/bench-checkpoint.sh 2>/dev/null
} | tee "$out"
elapsed=$(( $(date +%s) - started ))

python3 - "$out" "$elapsed" <<'PY'
import pathlib, subprocess, sys, datetime, os
tables = pathlib.Path(sys.argv[1]).read_text().strip()
elapsed = int(sys.argv[2])
doc = pathlib.Path("docs/benchmarks.md")
text = doc.read_text()
begin, end = "<!-- suite:begin -->", "<!-- suite:end -->"
mem = int(open("/proc/meminfo").read().split()[1]) // (1024 * 1024)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
header = (f"Last run: {datetime.date.today()}, commit {commit}, {os.cpu_count()} cores, "
          f"{mem} GiB RAM, `scripts/bench.sh` in {elapsed // 60} min {elapsed % 60} s "
          f"(release build excluded).")
block = f"{begin}\n{header}\n\n{tables}\n{end}"
if begin in text and end in text:
    text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip() + "\n\n## Latest suite run\n\n" + block + "\n"
doc.write_text(text)
print(f"\nwritten to {doc} ({elapsed} s)", file=sys.stderr)
PY
