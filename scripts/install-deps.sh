#!/usr/bin/env bash
# Installs the system packages the build and the tests need (Debian). Idempotent; used by
# .ci/run and by the README's set-up step.
set -euo pipefail

packages=(
  libclang-dev   # bindgen, for the RocksDB bindings
  g++ make       # RocksDB's C++
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "system packages: ok"
