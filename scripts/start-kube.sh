#!/usr/bin/env bash
# Starts a Kubernetes control plane on 127.0.0.1 for the tests: the real API server and
# controllers of production, with kwok's fake node in place of a kubelet.
#
# - etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl are built
#   from the Go module proxy (scripts/kube/go.mod: k8s.io/kubernetes with its staging
#   modules pinned by `replace`, etcd's server module); kwok from scripts/kube/kwok/go.mod.
#   They are built once per version into a cache outside the clone
#   ($DEDUP_TEST_CACHE, default ~/.cache/kafka-deduplicator), kube-<versions>-<hash>/bin.
# - In $DEDUP_TEST_STATE/kube: a CA, serving and client certificates and the
#   service-account key (openssl; made once per state directory), kubeconfigs, and at every
#   start an empty etcd data directory and the components' logs.
# - kube-apiserver: --authorization-mode=Node,RBAC, the default admission plugins, Pod
#   Security admission defaulting to `privileged` (a namespace labelled
#   pod-security.kubernetes.io/enforce=restricted is enforced). The controller manager runs
#   the default controllers (StatefulSet, garbage collector, service-account tokens, ...)
#   with per-controller service-account credentials. The scheduler binds pods to nodes.
# - kwok manages the nodes annotated kwok.x-k8s.io/node=fake: the node kwok-node-0 (tainted
#   kwok.x-k8s.io/node=fake:NoSchedule) is Ready, pods bound to it become Running and Ready,
#   and a claim of the default StorageClass kwok-volume is provisioned and Bound
#   (scripts/kube/kwok/stages.yaml).
# - Ports: DEDUP_TEST_KUBE_PORT (16443, the API server), DEDUP_TEST_ETCD_PORT (12379),
#   DEDUP_TEST_ETCD_PEER_PORT (12380), DEDUP_TEST_KUBE_CONTROLLER_MANAGER_PORT (16444),
#   DEDUP_TEST_KUBE_SCHEDULER_PORT (16445).
# - A control plane already started by this script is reused.
#
# Progress goes to standard error; standard output gets only `export NAME=value` lines
# (KUBECONFIG, PATH with kubectl, DEDUP_TEST_KUBE_FAKE_NODE), so
# `eval "$(scripts/start-kube.sh)"` sets up a shell. A component that fails to start fails
# the script with its log's tail and what was started is stopped. scripts/stop-kube.sh
# stops it. Needs Go (only for the first build), openssl and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${DEDUP_TEST_KUBE_PORT:-16443}"
etcd_port="${DEDUP_TEST_ETCD_PORT:-12379}"
etcd_peer_port="${DEDUP_TEST_ETCD_PEER_PORT:-12380}"
kcm_port="${DEDUP_TEST_KUBE_CONTROLLER_MANAGER_PORT:-16444}"
scheduler_port="${DEDUP_TEST_KUBE_SCHEDULER_PORT:-16445}"
cache="${DEDUP_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kafka-deduplicator}"
state_root="${DEDUP_TEST_STATE:-${TMPDIR:-/tmp}/kafka-deduplicator-test-services}"
state="$state_root/kube"
pki="$state/pki"
fake_node=kwok-node-0
service_cidr=10.96.0.0/16 # kwok's pod addresses are 10.0.0.0/24
# Started in this order, stopped in the reverse one; pid files $state_root/kube-NAME.pid,
# logs $state/NAME.log.
components=(etcd apiserver controller-manager scheduler kwok)

log=""
say() { echo "kube: $*" >&2; }
starting=0
fail() {
  say "$*"
  [ -n "$log" ] && [ -f "$log" ] && { say "last lines of $log:"; tail -n 40 "$log" >&2; }
  # Leave nothing half started behind.
  [ "$starting" -eq 0 ] || DEDUP_TEST_STATE="$state_root" scripts/stop-kube.sh
  exit 1
}
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_of() { cat "$state_root/kube-$1.pid" 2>/dev/null; }
alive() { local pid; pid=$(pid_of "$1") && kill -0 "$pid" 2>/dev/null; }
pids() { local c out=(); for c in "${components[@]}"; do out+=("$(pid_of "$c")"); done; echo "${out[*]}"; }

for tool in openssl curl; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install $tool)"
done

# The binaries, once per version. The directory is keyed on the versions and on a hash of
# the module files (less comment lines), so any change to them builds again.
# module_version MODULE GO_MOD: the version GO_MOD requires (in a block or on one line).
module_version() { awk -v m="$1" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m { print $2; exit }' "$2"; }
k8s_version=$(module_version k8s.io/kubernetes scripts/kube/go.mod)
etcd_version=$(module_version go.etcd.io/etcd/server/v3 scripts/kube/go.mod)
kwok_version=$(module_version sigs.k8s.io/kwok scripts/kube/kwok/go.mod)
if [ -z "$k8s_version" ] || [ -z "$etcd_version" ] || [ -z "$kwok_version" ]; then
  fail "could not read the versions from scripts/kube/go.mod and scripts/kube/kwok/go.mod"
fi
inputs_hash=$(cat scripts/kube/go.mod scripts/kube/go.sum scripts/kube/etcd/main.go \
  scripts/kube/kwok/go.mod scripts/kube/kwok/go.sum | grep -v '^//' | sha256sum | cut -c1-12)
bin="$cache/kube-$k8s_version-etcd-$etcd_version-kwok-$kwok_version-$inputs_hash/bin"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

mkdir -p "$state"
if [ ! -f "$bin/.complete" ]; then
  go=$(command -v go || echo /usr/local/go/bin/go)
  [ -x "$go" ] || fail "Go is not installed; it builds the control plane from the Go module proxy"
  log="$state/build.log"
  say "building Kubernetes $k8s_version, etcd $etcd_version and kwok $kwok_version into $bin"
  say "(the first build downloads about 140 MB of Go modules, 750 MB unpacked, and compiles for several minutes; log $log)"
  rm -rf "$bin"
  mkdir -p "$bin"
  # The version the binaries report (as Kubernetes' own build sets it).
  k8s_minor=${k8s_version#v1.}
  k8s_minor=${k8s_minor%%.*}
  ldflags="-s -w"
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $package.gitVersion=$k8s_version -X $package.gitMajor=1"
    ldflags+=" -X $package.gitMinor=$k8s_minor -X $package.gitTreeState=clean"
  done
  # Static binaries, as Kubernetes releases them; no C compiler needed. GOWORK=off: only
  # these modules' go.mod and go.sum decide what is built.
  export CGO_ENABLED=0 GOWORK=off
  (
    cd scripts/kube
    go_build() { "$go" build -trimpath -buildvcs=false -ldflags="$ldflags" -o "$bin/" "$@"; }
    go_build ./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
    cd kwok
    "$go" build -trimpath -buildvcs=false -ldflags="-s -w" -o "$bin/" sigs.k8s.io/kwok/cmd/kwok
  ) >"$log" 2>&1 || fail "go build failed"
  for b in "${binaries[@]}"; do
    [ -x "$bin/$b" ] || fail "go build did not produce $bin/$b"
  done
  touch "$bin/.complete"
  say "built in $SECONDS s"
fi
# $bin first on PATH, once (a shell that evaluated this script's output before has it).
PATH="$bin:$(printf '%s' "$PATH" | tr ':' '\n' | { grep -vxF "$bin" || true; } | paste -sd: -)"
export PATH

admin_kubeconfig="$state/admin.kubeconfig"
api="https://127.0.0.1:$port"
api_ready() {
  curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "$api/readyz" >/dev/null 2>&1
}

# make_pki: a CA; the API server's serving certificate; client certificates for the admin
# (group system:masters), the controller manager, the scheduler and the API server's front
# proxy; the service-account signing key. All RSA 2048, the common kind.
make_pki() {
  log="$state/pki.log"
  rm -rf "$pki"
  mkdir -p "$pki"
  : >"$log"
  local client_ext='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
  local server_ext='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth'
  server_ext+='\nsubjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default'
  server_ext+=',DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local'
  {
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" \
      -days 3650 -subj "/CN=kafka-deduplicator-test-ca" &&
      new_cert apiserver "/CN=kube-apiserver" "$server_ext" &&
      new_cert admin "/O=system:masters/CN=kafka-deduplicator-admin" "$client_ext" &&
      new_cert controller-manager "/CN=system:kube-controller-manager" "$client_ext" &&
      new_cert scheduler "/CN=system:kube-scheduler" "$client_ext" &&
      new_cert front-proxy-client "/CN=front-proxy-client" "$client_ext" &&
      openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/service-account.key" &&
      openssl pkey -in "$pki/service-account.key" -pubout -out "$pki/service-account.pub"
  } >>"$log" 2>&1 || fail "openssl could not make the certificates"
  rm -f "$pki"/*.csr "$pki"/*.ext
  chmod 600 "$pki"/*.key
  touch "$pki/.complete"
}
# new_cert NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA.
new_cert() {
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$1.key" -subj "$2" -out "$pki/$1.csr" &&
    printf '%b\n' "$3" >"$pki/$1.ext" &&
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt"
}

running=0
for c in "${components[@]}"; do alive "$c" && running=$((running + 1)); done
if [ "$running" -eq "${#components[@]}" ] && api_ready; then
  say "reusing the control plane on $api (pids $(pids))"
else
  if [ "$running" -gt 0 ]; then
    say "stopping the rest of an earlier control plane ($running of ${#components[@]} components were running)"
    DEDUP_TEST_STATE="$state_root" scripts/stop-kube.sh
  fi
  for p in "$port" "$etcd_port" "$etcd_peer_port" "$kcm_port" "$scheduler_port"; do
    answers "$p" && fail "127.0.0.1:$p is taken by another process; set the DEDUP_TEST_*_PORT variables"
  done

  # --- Certificates, keys and kubeconfigs -------------------------------------------------
  # The certificates are made once per state directory (RSA keys take a second); the
  # kubeconfigs at every start.
  [ -f "$pki/.complete" ] || make_pki

  # kubeconfig NAME USER: a kubeconfig with the embedded certificates of USER.
  b64() { base64 -w0 <"$1"; }
  kubeconfig() {
    cat >"$state/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kafka-deduplicator-test
  cluster:
    server: $api
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$pki/$2.crt")
    client-key-data: $(b64 "$pki/$2.key")
contexts:
- name: kafka-deduplicator-test
  context:
    cluster: kafka-deduplicator-test
    user: $2
current-context: kafka-deduplicator-test
EOF
    chmod 600 "$state/$1.kubeconfig"
  }
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler

  # Pod Security admission: `privileged` unless a namespace's labels say otherwise.
  cat >"$state/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: privileged
      enforce-version: latest
      audit: privileged
      audit-version: latest
      warn: privileged
      warn-version: latest
    exemptions:
      usernames: []
      runtimeClasses: []
      namespaces: []
EOF

  # start NAME COMMAND...: runs one component in the background, its log in $state/NAME.log.
  start() {
    local name=$1
    shift
    log="$state/$name.log"
    nohup "$@" </dev/null >"$log" 2>&1 &
    echo $! >"$state_root/kube-$name.pid"
    starting=1
  }
  # wait_for NAME SECONDS WHAT COMMAND...: until COMMAND succeeds while NAME runs.
  wait_for() {
    local name=$1 seconds=$2 what=$3
    shift 3
    log="$state/$name.log"
    for _ in $(seq 1 $((seconds * 10))); do
      alive "$name" || fail "$name exited before $what"
      "$@" >/dev/null 2>&1 && return 0
      sleep 0.1
    done
    fail "$name: $what did not happen within $seconds s"
  }

  # --- etcd ------------------------------------------------------------------------------
  rm -rf "$state/etcd-data"
  say "starting etcd $etcd_version on 127.0.0.1:$etcd_port"
  start etcd etcd --name=test --data-dir="$state/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="test=http://127.0.0.1:$etcd_peer_port" --initial-cluster-state=new \
    --unsafe-no-fsync --log-level=warn
  wait_for etcd 30 "answering on 127.0.0.1:$etcd_port" \
    curl -sf --max-time 2 "http://127.0.0.1:$etcd_port/health"

  # --- kube-apiserver --------------------------------------------------------------------
  # The front-proxy (requestheader) settings are those the controller manager and the
  # scheduler read for their own authentication; with no endpoint reconciler, the
  # `kubernetes` Service has no endpoints (they may not be a loopback address).
  say "starting kube-apiserver $k8s_version on $api"
  start apiserver kube-apiserver \
    --bind-address=127.0.0.1 --secure-port="$port" --advertise-address=127.0.0.1 \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/service-account.pub" \
    --service-account-signing-key-file="$pki/service-account.key" \
    --service-cluster-ip-range="$service_cidr" \
    --authorization-mode=Node,RBAC \
    --admission-control-config-file="$state/admission.yaml" \
    --requestheader-client-ca-file="$pki/ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" \
    --proxy-client-key-file="$pki/front-proxy-client.key" \
    --endpoint-reconciler-type=none --allow-privileged=true --profiling=false
  wait_for apiserver 90 "/readyz answered ok" api_ready

  # --- kube-controller-manager and kube-scheduler ----------------------------------------
  say "starting kube-controller-manager and kube-scheduler"
  start controller-manager kube-controller-manager \
    --kubeconfig="$state/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$state/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" \
    --controllers='*' --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/service-account.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --service-cluster-ip-range="$service_cidr" --leader-elect=false --profiling=false \
    --kube-api-qps=200 --kube-api-burst=400
  start scheduler kube-scheduler \
    --kubeconfig="$state/scheduler.kubeconfig" \
    --authentication-kubeconfig="$state/scheduler.kubeconfig" \
    --authorization-kubeconfig="$state/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$scheduler_port" --leader-elect=false --profiling=false \
    --kube-api-qps=200 --kube-api-burst=400
  wait_for controller-manager 60 "/healthz answered ok" \
    curl -sfk --max-time 2 "https://127.0.0.1:$kcm_port/healthz"
  wait_for scheduler 60 "/healthz answered ok" \
    curl -sfk --max-time 2 "https://127.0.0.1:$scheduler_port/healthz"

  # --- kwok and its fake node --------------------------------------------------------------
  say "starting kwok $kwok_version"
  # HOME: kwok would also read a ~/.kwok/kwok.yaml of the user's.
  mkdir -p "$state/kwok-home"
  start kwok env HOME="$state/kwok-home" kwok --kubeconfig="$admin_kubeconfig" \
    --config="$PWD/scripts/kube/kwok/stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake
  log="$state/kubectl.log"
  KUBECONFIG="$admin_kubeconfig" kubectl apply -f - >"$log" 2>&1 <<EOF || fail "kubectl apply of the fake node failed"
apiVersion: v1
kind: Node
metadata:
  name: $fake_node
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: $fake_node
    kubernetes.io/os: linux
    type: kwok
spec:
  taints:
  - key: kwok.x-k8s.io/node
    value: fake
    effect: NoSchedule
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: kwok-volume
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kwok.x-k8s.io/volume
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: true
EOF
  node_ready() {
    [ "$(KUBECONFIG="$admin_kubeconfig" kubectl get node "$fake_node" \
      -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
  }
  wait_for kwok 60 "node $fake_node became Ready" node_ready
  # The controller manager's service-account controllers run: pods can be created.
  wait_for controller-manager 60 "the default service account was created" \
    env KUBECONFIG="$admin_kubeconfig" kubectl get serviceaccount default --namespace=default
  say "Kubernetes $k8s_version is up on $api in $SECONDS s (pids $(pids))"
fi

printf 'export KUBECONFIG=%q\n' "$admin_kubeconfig"
printf 'export PATH=%q\n' "$PATH"
printf 'export DEDUP_TEST_KUBE_FAKE_NODE=%q\n' "$fake_node"
