#!/usr/bin/env bash
# The control plane's memory for a given number of objects: one server (no node, no
# controllers) takes OBJECTS ConfigMap creates from wrk (64 connections), with its default
# snapshot policy; then its peak and settled resident memory, and its resident memory after a
# restart that loads the same objects back from redb. Measured in the same run: the peer, a
# one-member etcd (Debian's etcd-server) taking the same number of puts of a ConfigMap's JSON.
# Prints lines for benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
objects="${OBJECTS:-200000}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p shoal
bin="${SHOAL_BIN:-./target/release/shoal}"
work="$(mktemp -d)"
pid=""
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi; }
trap 'stop; rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# Long enough for the creates at a few thousand a second; once a wrk thread has made its share
# it only asks for health.
seconds=$((objects / 4000 + 10))
per_thread=$((objects / 2))
memory() { awk '/VmHWM/ {hwm=$2} /VmRSS/ {rss=$2} END {printf "peak %d MiB, now %d MiB", hwm/1024, rss/1024}' "/proc/$1/status"; }
per_object() { awk -v kib="$(awk '/VmRSS/ {print $2}' "/proc/$1/status")" -v n="$objects" 'BEGIN {printf "%.0f B per object", kib * 1024 / n}'; }

server_url() { awk '/server:/ {print $2}' "$work/s0/admin.kubeconfig"; }
start_server() {
  "$bin" server --data-dir "$work/s0" --api-addr 127.0.0.1:0 --disable-node --disable-controllers 2>>"$work/s0.log" &
  pid=$!
  for _ in $(seq 1 3000); do [ -f "$work/s0/admin.kubeconfig" ] && curl -sk -o /dev/null "$(server_url)/healthz" && break; sleep 0.1; done
}

start_server
url="$(server_url)"
# The store's revision counts its writes: the creates are the difference.
revision() {
  curl -sk -H "Authorization: Bearer $(cat "$work/s0/admin-token")" "$url/api/v1/namespaces/default/configmaps?limit=1" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["resourceVersion"])'
}
before="$(revision)"
idle="$(memory "$pid")"
printf 'Shoal, %s ConfigMaps created (wrk -c64, %s s): ' "$objects" "$seconds"
TOKEN="$(cat "$work/s0/admin-token")" LIMIT="$per_thread" wrk -t2 -c64 -d"${seconds}s" -s benches/create.lua "$url/api/v1/namespaces/default/configmaps" >"$work/wrk.txt"
stored=$(($(revision) - before))
sleep 2
echo "$stored stored; $(memory "$pid") ($(per_object "$pid")); before the creates: $idle; $(tail -1 "$work/wrk.txt")"
[ "$stored" -ge $((objects * 99 / 100)) ] || echo "warning: only $stored of $objects objects were stored in time; raise the time" >&2
stop
start_server
sleep 2
echo "Shoal, restarted with them: $(memory "$pid") ($(per_object "$pid"))"
stop

start_etcd() {
  etcd --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --log-level error >>"$work/etcd.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:23790/health && break; sleep 0.1; done
}

if command -v etcd >/dev/null; then
  start_etcd
  printf 'etcd %s, %s puts (wrk -c64, %s s): ' "$(etcd --version | awk 'NR==1 {print $3}')" "$objects" "$seconds"
  LIMIT="$per_thread" wrk -t2 -c64 -d"${seconds}s" -s benches/etcd_put.lua http://127.0.0.1:23790/v3/kv/put >"$work/wrk.txt"
  sleep 2
  echo "$(memory "$pid") ($(per_object "$pid"))"
  stop
  start_etcd
  sleep 2
  echo "etcd, restarted with them: $(memory "$pid") ($(per_object "$pid"))"
  stop
else
  echo "etcd is not installed (apt-get install etcd-server): no peer measurement"
fi
