#!/usr/bin/env bash
# Installs the system packages the build and the tests need (Debian). Idempotent; used by
# .ci/run and by the README's set-up step.
set -euo pipefail

packages=(
  libclang-dev   # bindgen, for the RocksDB bindings
  g++ make       # RocksDB's and librdkafka's C/C++
  libssl-dev     # librdkafka TLS
  zlib1g-dev     # librdkafka gzip
)
# The test Kafka broker (scripts/start-kafka.sh) runs on Java 17+, resolved by Maven.
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
# The test control plane (scripts/start-kube.sh): certificates and health checks.
packages+=(openssl curl)
# Go builds etcd, Kubernetes, kwok, helm and promtool from the Go module proxy. Machines
# of this kind ship Go 1.26; without one, Debian's is installed, and from Go 1.21 on
# GOTOOLCHAIN=auto (the default) fetches the release the modules' go.mod asks for
# (1.26.x) from the same proxy. An older Debian Go cannot, and the build says so.
command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || packages+=(golang-go)
# pip, only if this machine's python3 has none.
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)
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

# Python tools the tests run: kubernetes-validate (Kubernetes schemas) and moto's S3
# server (scripts/start-test-services.sh starts it).
# Each tool is checked on its own: a machine may ship one of them (moto, say) and not the
# other, and `pip show A B` succeeds when any one of them is there.
python_tools=(kubernetes-validate==1.37.0 "moto[server]==5.2.5")
python_missing=()
for spec in "${python_tools[@]}"; do
  name=${spec%%[[=]*}
  installed=$(python3 -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
  [ "$installed" = "${spec##*==}" ] || python_missing+=("$spec")
done
# moto's server needs flask (its [server] extra); an older moto may lack it.
if ! python3 -c 'import flask, flask_cors' 2>/dev/null && [[ ! " ${python_missing[*]} " =~ " moto" ]]; then
  python_missing+=("moto[server]==5.2.5")
fi
if [ ${#python_missing[@]} -gt 0 ]; then
  # --break-system-packages: Debian's own python3 is "externally managed"; these are
  # test tools with no Debian package.
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --break-system-packages "${python_missing[@]}"
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
echo "python tools: ok ($(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'))"
