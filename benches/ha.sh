#!/usr/bin/env bash
# The control plane with 1, 3 and 5 servers in one Raft group on loopback: API create
# throughput and latency (HTTPS, validated, committed by a majority and fsynced) with wrk and 1
# and 64 connections, to the leader and (with 3 servers) through a follower, which forwards to
# the leader. Measured in the same run: the fsync floor of this disk and the HTTPS round trip
# between two processes on loopback (wrk, one connection, GET /healthz), and the peer: a
# 3-member etcd (Debian's etcd-server) on the same disk. Prints lines for
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

# The peer: a 3-member etcd (Debian's etcd-server) on loopback, same disk, puts through its v3
# JSON gateway to the leader over plain HTTP.
if command -v etcd >/dev/null; then
  for connections in 1 64; do
    rm -rf "$work"/etcd*
    cluster="e0=http://127.0.0.1:23800,e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802"
    for i in 0 1 2; do
      etcd --name "e$i" --data-dir "$work/etcd$i" --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
        --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
        --initial-cluster "$cluster" --initial-cluster-state new --log-level error >"$work/etcd$i.log" 2>&1 &
      pids+=($!)
    done
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:23790/health >/dev/null && break; sleep 0.1; done
    leader="$(for i in 0 1 2; do curl -s -X POST "http://127.0.0.1:2379$i/v3/maintenance/status" -d '{}' |
      python3 -c "import json,sys; s=json.load(sys.stdin); print('$i' if s['leader']==s['header']['member_id'] else '')"; done | tr -d '\n')"
    threads=1; ((connections > 1)) && threads=2
    printf 'etcd %s, 3 members, put to the leader, %s connection(s), %s s: ' "$(etcd --version | awk 'NR==1 {print $3}')" "$connections" "$seconds"
    wrk -t"$threads" -c"$connections" -d"${seconds}s" -s benches/etcd_put.lua "http://127.0.0.1:2379${leader:-0}/v3/kv/put" | tail -1
    stop_all
  done
else
  echo "etcd is not installed (apt-get install etcd-server): no peer measurement"
fi
