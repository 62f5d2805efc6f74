#!/usr/bin/env bash
# Whole-system benchmarks, all in one run on this machine: the fsync floor, then API create
# throughput and latency through a real `shoal server` (single-member Raft group on redb), with
# wrk (Debian's package; a Lua script makes every name unique) and with a Rust client
# (reqwest + rustls), each with 1 and 32 concurrent connections, and with wrk presenting a
# ServiceAccount's token instead of the admin's. Prints lines for benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${SECONDS_PER_RUN:-10}"
# SHOAL_BIN: another build of shoal to measure (to compare two commits on one machine).
shoal="${SHOAL_BIN:-./target/release/shoal}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p shoal -p shoal-benches
work="$(mktemp -d)"
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
./target/release/fsync_floor "$work" 2000

start_server() {
  rm -rf "$work/data"
  "$shoal" server --data-dir "$work/data" --api-addr 127.0.0.1:0 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 1 600); do [ -f "$work/data/admin.kubeconfig" ] && break; sleep 0.1; done
  sleep 0.5
  url="$(awk '/server:/ {print $2}' "$work/data/admin.kubeconfig")/api/v1/namespaces/default/configmaps"
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }

# A ServiceAccount `bench` bound to the `edit` ClusterRole in `default`, after `EXTRA_BINDINGS`
# other ClusterRoleBindings (default 0), and a one-hour token for it from the TokenRequest API:
# what a controller or app running in a pod presents.
service_account_token() {
  local api ca admin
  api="$(awk '/server:/ {print $2}' "$work/data/admin.kubeconfig")"
  ca="$work/data/pki/ca.crt"
  admin="$(cat "$work/data/admin-token")"
  post() { curl -sf --cacert "$ca" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' -d "$2" "$api$1"; }
  for i in $(seq 1 "${EXTRA_BINDINGS:-0}"); do
    post /apis/rbac.authorization.k8s.io/v1/clusterrolebindings "{\"metadata\":{\"name\":\"extra-$i\"},\"roleRef\":{\"apiGroup\":\"rbac.authorization.k8s.io\",\"kind\":\"ClusterRole\",\"name\":\"view\"},\"subjects\":[{\"kind\":\"User\",\"name\":\"user-$i\"}]}" >/dev/null
  done
  post /api/v1/namespaces/default/serviceaccounts '{"metadata":{"name":"bench"}}' >/dev/null
  post /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings '{"metadata":{"name":"bench-edit"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"edit"},"subjects":[{"kind":"ServiceAccount","name":"bench","namespace":"default"}]}' >/dev/null
  post /api/v1/namespaces/default/serviceaccounts/bench/token '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["token"])'
}

for connections in 1 32; do
  start_server
  printf 'wrk, %s connection(s), %s s: ' "$connections" "$seconds"
  TOKEN="$(cat "$work/data/admin-token")" wrk -t1 -c"$connections" -d"${seconds}s" -s benches/create.lua "$url" | tail -1
  stop_server
  start_server
  ./target/release/api_create "$work/data" "$connections" "$seconds"
  stop_server
done

# The same creates with a ServiceAccount's token: signature, claims and RBAC on every request.
for connections in 1 32; do
  start_server
  printf 'wrk, ServiceAccount token (edit), %s connection(s), %s s: ' "$connections" "$seconds"
  TOKEN="$(service_account_token)" wrk -t1 -c"$connections" -d"${seconds}s" -s benches/create.lua "$url" | tail -1
  stop_server
done

# The peer: etcd (Debian's etcd-server) on the same disk, puts through its v3 JSON gateway over
# plain HTTP, one member, default fsync-per-commit settings.
if command -v etcd >/dev/null; then
  for connections in 1 32; do
    rm -rf "$work/etcd"
    etcd --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
      --listen-peer-urls http://127.0.0.1:23800 --log-level error >"$work/etcd.log" 2>&1 &
    etcd_pid=$!
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:23790/health >/dev/null && break; sleep 0.1; done
    printf 'etcd %s put, wrk, %s connection(s), %s s: ' "$(etcd --version | awk 'NR==1 {print $3}')" "$connections" "$seconds"
    wrk -t1 -c"$connections" -d"${seconds}s" -s benches/etcd_put.lua http://127.0.0.1:23790/v3/kv/put | tail -1
    kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null || true
  done
else
  echo "etcd is not installed (apt-get install etcd-server): no peer measurement"
fi
