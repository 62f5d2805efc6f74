#!/usr/bin/env bash
# The control plane with 1, 3 and 5 servers in one Raft group on loopback: API create
# throughput and latency (HTTPS, validated, committed by a majority and fsynced) with wrk and 1
# and 64 connections, to the leader and (with 3 servers) through a follower, which forwards to
# the leader. Measured in the same run: the fsync floor of this disk and the HTTPS round trip
# between two processes on loopback (wrk, one connection, GET /healthz). Prints lines for
# benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${SECONDS_PER_RUN:-10}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is missing: apt-get install curl" >&2; exit 1; }
cargo build --release -q -p shoal -p shoal-benches
work="$(mktemp -d)"
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
./target/release/fsync_floor "$work" 2000

url_of() { awk '/server:/ {print $2}' "$work/s$1/admin.kubeconfig"; }

# Starts a group of $1 servers: s0 starts it, the others join through it.
start_group() {
  rm -rf "$work"/s*
  ./target/release/shoal server --data-dir "$work/s0" --api-addr 127.0.0.1:0 --disable-node --disable-controllers 2>"$work/s0.log" &
  pids+=($!)
  for _ in $(seq 1 600); do [ -f "$work/s0/admin.kubeconfig" ] && break; sleep 0.1; done
  local token first
  token="$(cat "$work/s0/server-token")"
  first="$(url_of 0)"
  for i in $(seq 1 $(($1 - 1))); do
    ./target/release/shoal server --data-dir "$work/s$i" --api-addr 127.0.0.1:0 --disable-node --disable-controllers \
      --join "$first" --token "$token" 2>"$work/s$i.log" &
    pids+=($!)
    for _ in $(seq 1 600); do [ -f "$work/s$i/admin.kubeconfig" ] && break; sleep 0.1; done
  done
  sleep 1
}

# The URL of the group's leader, and of one follower (when there is one).
leader_url() {
  curl -s --cacert "$work/s0/pki/ca.crt" -H "Authorization: Bearer $(cat "$work/s0/admin-token")" "$(url_of 0)/internal/cluster/status" |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print(next(m["addr"] for m in s["members"] if m["id"]==s["leader"]))'
}
follower_url() {
  curl -s --cacert "$work/s0/pki/ca.crt" -H "Authorization: Bearer $(cat "$work/s0/admin-token")" "$(url_of 0)/internal/cluster/status" |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print(next(m["addr"] for m in s["members"] if m["id"]!=s["leader"]))'
}

create() {
  local url="$1" connections="$2" threads=1
  ((connections > 1)) && threads=2
  TOKEN="$(cat "$work/s0/admin-token")" wrk -t"$threads" -c"$connections" -d"${seconds}s" -s benches/create.lua "$url/api/v1/namespaces/default/configmaps" | tail -1
}

start_group 1
printf 'loopback HTTPS round trip (wrk -c1 GET /healthz): '
wrk -t1 -c1 -d5s --latency "$(url_of 0)/healthz" | awk '/50%/ {p50=$2} /99%/ {p99=$2} END {print "p50 " p50 ", p99 " p99}'
stop_all

for members in 1 3 5; do
  for connections in 1 64; do
    start_group "$members"
    printf '%s member(s), to the leader, %s connection(s), %s s: ' "$members" "$connections" "$seconds"
    create "$(leader_url)" "$connections"
    stop_all
  done
done
for connections in 1 64; do
  start_group 3
  printf '3 members, through a follower, %s connection(s), %s s: ' "$connections" "$seconds"
  create "$(follower_url)" "$connections"
  stop_all
done
