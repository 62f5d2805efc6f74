#!/usr/bin/env bash
# Scheduling throughput with hollow nodes (kubemark-style): a release `shoal server` with no
# local node, one `shoal agent --hollow-nodes NODES` process simulating the nodes, then PODS pods
# created at once. Prints pods/s to bound and to Running and create → Running latencies.
# Hollow nodes renew their Leases every 10 s as kubelet does, so the server's node-monitor grace
# period is raised to kubelet's 40 s for this run.
# BACKLOG=1: hold the scheduler while the pods are created, then let it go, and print how fast it
# places the backlog (placements/s) as well (see benches/src/bin/schedule_pods.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
nodes="${NODES:-1000}"
pods="${PODS:-10000}"
# SHOAL_BIN: another build of shoal to measure (to compare two commits on one machine).
shoal="${SHOAL_BIN:-./target/release/shoal}"
cargo build --release -q -p shoal -p shoal-benches
work="$(mktemp -d)"
trap 'kill "${agent_pid:-0}" "${server_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$shoal" server --data-dir "$work/data" --api-addr 127.0.0.1:0 --disable-node --node-monitor-grace-period 40 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 600); do [ -f "$work/data/admin.kubeconfig" ] && break; sleep 0.1; done
sleep 0.5
url="$(awk '/server:/ {print $2}' "$work/data/admin.kubeconfig")"
"$shoal" agent --server "$url" --token "$(cat "$work/data/node-token")" --ca-file "$work/data/pki/ca.crt" \
  --data-dir "$work/agent" --node-name hollow --hollow-nodes "$nodes" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 1 600); do grep -q 'hollow nodes' "$work/agent.log" && break; sleep 0.1; done
grep -q 'hollow nodes' "$work/agent.log" || { echo "the hollow nodes did not register" >&2; cat "$work/agent.log" >&2; exit 1; }
sleep 2
echo "hollow nodes: $nodes; pods: $pods"
mode=()
[ "${BACKLOG:-0}" = 1 ] && mode=(--backlog)
./target/release/schedule_pods "$work/data" "$pods" "${mode[@]}"
echo "server RSS: $(ps -o rss= -p "$server_pid" | awk '{printf "%.0f MiB", $1/1024}')"
# CPU time in clock ticks (utime + stime from /proc/PID/stat), to the hundredth of a second.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
server_cpu=$(cpu "$server_pid")
echo "cpu seconds (whole run, start-up included): server $server_cpu ($(awk -v c="$server_cpu" -v p="$pods" 'BEGIN {printf "%.0f", c * 1e6 / p}') µs per pod), hollow agent $(cpu "$agent_pid")"
