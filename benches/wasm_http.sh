#!/usr/bin/env bash
# HTTP requests to the hello component, side by side in one run with the same load generator:
# Shoal's node data plane (a fresh instance per request) vs `wasmtime serve` of the same major
# version built from crates.io (pooling allocator on, a fresh instance per request), with wrk.
# Also runs the in-process criterion benchmark. Prints lines for benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source benches/common.sh
ensure_wasmtime
cargo build --release -q -p shoal
work="$(mktemp -d)"
trap 'kill ${pids:-} 2>/dev/null || true; rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t1 -c$connections -d${seconds}s"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$wasmtime_root/bin/wasmtime" serve -S cli -O pooling-allocator=y --addr "127.0.0.1:$port" samples/hello/hello.wasm 2>"$work/wasmtime.log" &
pids="$!"
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
printf 'wasmtime serve %s: ' "$("$wasmtime_root/bin/wasmtime" --version | awk '{print $2}')"
wrk -t1 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {rps=$2} /50%/ {p50=$2} /99%/ {p99=$2} END {print rps " requests/s, p50 " p50 ", p99 " p99}'
kill "$pids"; wait "$pids" 2>/dev/null || true

"$wasmtime_root/bin/wasmtime" serve -S cli -O pooling-allocator=y --max-instance-reuse-count 1000 --addr "127.0.0.1:$port" samples/hello/hello.wasm 2>>"$work/wasmtime.log" &
pids="$!"
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
printf 'wasmtime serve --max-instance-reuse-count 1000: '
wrk -t1 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {rps=$2} /50%/ {p50=$2} /99%/ {p99=$2} END {print rps " requests/s, p50 " p50 ", p99 " p99}'
kill "$pids"; wait "$pids" 2>/dev/null || true

# DATA_PLANE_THREADS=N serves connections on N reactor threads (default 0: the shared runtime).
./target/release/shoal server --data-dir "$work/data" --api-addr 127.0.0.1:0 --data-addr 127.0.0.1:0 --node-name bench \
  ${DATA_PLANE_THREADS:+--data-plane-threads "$DATA_PLANE_THREADS"} 2>"$work/shoal.log" &
pids="$!"
for _ in $(seq 1 600); do [ -f "$work/data/admin.kubeconfig" ] && break; sleep 0.1; done
export KUBECONFIG="$work/data/admin.kubeconfig"
./target/release/shoal push samples/hello/hello.wasm shoal.local/samples/hello:latest >/dev/null
printf '%s\n' 'apiVersion: v1' 'kind: Pod' 'metadata: {name: hello, annotations: {shoal.dev/max-concurrency: "1000"}}' \
  "spec: {nodeName: bench, containers: [{name: hello, image: 'shoal.local/samples/hello:latest'}]}" | ./target/release/shoal apply -f - >/dev/null
data=$(grep -o 'data plane at http://[0-9.:]*' "$work/shoal.log" | head -1 | sed 's/data plane at //')
for _ in $(seq 1 300); do curl -sf "$data/_pods/default/hello/" >/dev/null && break; sleep 0.1; done
printf 'shoal data plane: '
wrk -t1 -c"$connections" -d"${seconds}s" --latency "$data/_pods/default/hello/" | awk '/Requests\/sec/ {rps=$2} /50%/ {p50=$2} /99%/ {p99=$2} END {print rps " requests/s, p50 " p50 ", p99 " p99}'
printf '%s\n' 'apiVersion: v1' 'kind: Pod' 'metadata: {name: hello-reuse, annotations: {shoal.dev/max-concurrency: "1000", shoal.dev/instance-reuse: "1000"}}' \
  "spec: {nodeName: bench, containers: [{name: hello, image: 'shoal.local/samples/hello:latest'}]}" | ./target/release/shoal apply -f - >/dev/null
for _ in $(seq 1 300); do curl -sf "$data/_pods/default/hello-reuse/" >/dev/null && break; sleep 0.1; done
printf 'shoal data plane, instance-reuse 1000: '
wrk -t1 -c"$connections" -d"${seconds}s" --latency "$data/_pods/default/hello-reuse/" | awk '/Requests\/sec/ {rps=$2} /50%/ {p50=$2} /99%/ {p99=$2} END {print rps " requests/s, p50 " p50 ", p99 " p99}'
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pids/status")
echo "shoal server + node RSS after the run: $((rss_kib / 1024)) MiB"
kill "$pids"; wait "$pids" 2>/dev/null || true

cargo bench -q -p shoal-benches --bench wasm_request 2>/dev/null | grep -E "time:|hello" || true
