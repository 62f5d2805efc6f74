#!/usr/bin/env bash
# Whole-system benchmarks, all in one run on this machine: the fsync floor, then API create
# throughput and latency through a real `shoal server` (single-member Raft group on redb) with
# 1 and 32 concurrent clients. Prints lines to copy into benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${SECONDS_PER_RUN:-10}"
cargo build --release -q -p shoal -p shoal-benches
work="$(mktemp -d)"
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), disk of $work: $(df -h "$work" | awk 'NR==2 {print $1}')"
./target/release/fsync_floor "$work" 2000
./target/release/shoal server --data-dir "$work/data" --api-addr 127.0.0.1:0 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 600); do [ -f "$work/data/admin.kubeconfig" ] && break; sleep 0.1; done
sleep 0.5
./target/release/api_create "$work/data" 1 "$seconds"
./target/release/api_create "$work/data" 32 "$seconds"
