#!/usr/bin/env bash
# Store benchmark beside RocksDB's own db_bench, in one run on one machine.
#
#   scripts/bench-store.sh            # 1M- and 10M-key stores
#   DEDUP_BENCH_SIZES=1000000 scripts/bench-store.sh
#
# Runs `cargo bench -p dedup-core --bench store_fill` (N events, a read and a write each,
# through PartitionStore::check_and_insert in batches of 1,000 into a fresh store, same
# settings as production) and `db_bench fillrandom` (N writes into a fresh database) with
# the same N, key/value sizes, WAL, bloom and cache settings; prints a Markdown table
# with the ratios. (`cargo bench --bench check_and_insert` is the sustained criterion
# run on one growing store.)
set -euo pipefail
cd "$(dirname "$0")/.."
# Release builds get their own target directory, so a benchmark build never blocks
# (or is blocked by) the test builds.
export CARGO_TARGET_DIR="${DEDUP_BENCH_TARGET_DIR:-/var/tmp/kafka-deduplicator-bench-target}"
sizes="${DEDUP_BENCH_SIZES:-1000000,10000000}"
wal="${DEDUP_BENCH_WAL:-0}"

if ! command -v db_bench >/dev/null; then
  echo "db_bench not found: apt-get install rocksdb-tools" >&2
  exit 1
fi

dbdir=$(mktemp -d)
trap 'rm -rf "$dbdir"' EXIT
declare -A fill
for n in ${sizes//,/ }; do
  for batch in 1 1000; do
    out=$(db_bench --benchmarks=fillrandom --db="$dbdir/db" --num="$n" --key_size=24 \
      --value_size=8 --compression_type=none --disable_wal=$([ "$wal" = 1 ] && echo 0 || echo 1) \
      --bloom_bits=10 --cache_size=134217728 --write_buffer_size=16777216 \
      --max_write_buffer_number=3 --batch_size="$batch" --threads=1 --seed=42 2>&1)
    ops=$(printf '%s\n' "$out" | awk '/^fillrandom/ {for (i=1;i<=NF;i++) if ($(i+1)=="ops/sec") print $i}')
    fill["$n/$batch"]=${ops%.*}
    rm -rf "$dbdir/db"
  done
done

ours=$(DEDUP_BENCH_SIZES="$sizes" DEDUP_BENCH_WAL="$wal" \
  cargo bench --locked -p dedup-core --bench store_fill 2>/dev/null)

python3 - "$ours" "$(for k in "${!fill[@]}"; do printf '%s=%s ' "$k" "${fill[$k]}"; done)" <<'PY'
import sys
fill = dict(kv.split("=") for kv in sys.argv[2].split())
print("| events into a fresh store | duplicates | check_and_insert events/s | db_bench fillrandom ops/s (batch 1 / 1000) | ratio to batch 1 | ratio to batch 1000 | HashSet events/s | ratio to HashSet |")
print("|---|---|---|---|---|---|---|---|")
for line in sys.argv[1].strip().splitlines():
    n, dup, ours, hs = line.split("\t")
    ours, hs = float(ours), float(hs)
    f1, f1000 = float(fill[f"{n}/1"]), float(fill[f"{n}/1000"])
    print(f"| {int(n):,} | {dup} % | {ours:,.0f} | {f1:,.0f} / {f1000:,.0f} | {ours/f1:.2f}× | {ours/f1000:.2f}× | {hs:,.0f} | {ours/hs:.3f}× |")
PY
