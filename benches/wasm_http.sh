#!/usr/bin/env bash
# HTTP requests to the hello component, side by side in one run with the same load generator:
# Shoal's node data plane vs `wasmtime serve` of the same major version built from crates.io
# (pooling allocator on), each with a fresh instance per request and with instances reused for
# up to 1000 requests, with wrk.
#
# The four targets are measured in ROUNDS alternating rounds (default 5) of SECONDS_PER_RUN each,
# so that a noisy machine's slow spells fall on all of them alike; the ratios are of the medians.
# Each line also gives the server's CPU time per request (user + system, from /proc), which moves
# far less between runs than requests/s on a shared VM. Also runs the in-process criterion
# benchmark (CRITERION=0 leaves it out). Prints lines for benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source benches/common.sh
ensure_wasmtime
cargo build --release -q -p shoal
rounds="${ROUNDS:-5}"
work="$(mktemp -d)"
trap 'kill ${pids:-} ${peer:-} 2>/dev/null || true; rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t1 -c$connections -d${seconds}s; $rounds rounds"

hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# measure NAME URL PID: one wrk run; appends "NAME rps p50 p99 cpu_us_per_request" to the results.
measure() {
  local before after
  before=$(cpu_ticks "$3")
  wrk -t1 -c"$connections" -d"${seconds}s" --latency "$2" >"$work/wrk.out"
  after=$(cpu_ticks "$3")
  awk -v name="$1" -v ticks="$((after - before))" -v hz="$hz" '
    /Requests\/sec/ {rps=$2} /50%/ {p50=$2} /99%/ {p99=$2} /requests in/ {n=$1}
    END {printf "%s %s %s %s %.1f\n", name, rps, p50, p99, ticks / hz * 1e6 / n}' "$work/wrk.out" | tee -a "$work/results"
}
peer_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# measure_peer NAME [wasmtime serve flags…]: starts `wasmtime serve`, measures it, stops it.
measure_peer() {
  local name="$1"
  shift
  "$wasmtime_root/bin/wasmtime" serve -S cli -O pooling-allocator=y "$@" --addr "127.0.0.1:$peer_port" samples/hello/hello.wasm 2>>"$work/wasmtime.log" &
  peer="$!"
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$peer_port/" >/dev/null && break; sleep 0.1; done
  measure "$name" "http://127.0.0.1:$peer_port/" "$peer"
  kill "$peer"
  wait "$peer" 2>/dev/null || true
  peer=""
}

# DATA_PLANE_THREADS=N serves connections on N reactor threads (default: one per core; 0: the
# process's shared runtime).
./target/release/shoal server --data-dir "$work/data" --api-addr 127.0.0.1:0 --data-addr 127.0.0.1:0 --ingress-addr 127.0.0.1:0 \
  --ingress-tls-addr 127.0.0.1:0 --node-name bench ${DATA_PLANE_THREADS:+--data-plane-threads "$DATA_PLANE_THREADS"} 2>"$work/shoal.log" &
pids="$!"
for _ in $(seq 1 600); do [ -f "$work/data/admin.kubeconfig" ] && break; sleep 0.1; done
export KUBECONFIG="$work/data/admin.kubeconfig"
./target/release/shoal push samples/hello/hello.wasm shoal.local/samples/hello:latest >/dev/null
for pod in hello:1 hello-reuse:1000; do
  printf '%s\n' 'apiVersion: v1' 'kind: Pod' "metadata: {name: ${pod%%:*}, annotations: {shoal.dev/max-concurrency: \"1000\", shoal.dev/instance-reuse: \"${pod##*:}\"}}" \
    "spec: {nodeName: bench, containers: [{name: hello, image: 'shoal.local/samples/hello:latest'}]}" | ./target/release/shoal apply -f - >/dev/null
done
data=$(grep -o 'data plane at http://[0-9.:]*' "$work/shoal.log" | head -1 | sed 's/data plane at //')
for pod in hello hello-reuse; do
  for _ in $(seq 1 300); do curl -sf "$data/_pods/default/$pod/" >/dev/null && break; sleep 0.1; done
done

for round in $(seq 1 "$rounds"); do
  echo "round $round (name, requests/s, p50, p99, server CPU µs per request):"
  measure_peer peer-fresh
  measure shoal-fresh "$data/_pods/default/hello/" "$pids"
  measure_peer peer-reuse --max-instance-reuse-count 1000
  measure shoal-reuse "$data/_pods/default/hello-reuse/" "$pids"
done
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pids/status")
echo "shoal server + node RSS after the run: $((rss_kib / 1024)) MiB"
kill "$pids"; wait "$pids" 2>/dev/null || true

python3 - "$work/results" <<'PYEOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, p50, p99, cpu = line.split()
    rows.setdefault(name, []).append((float(rps), p50, p99, float(cpu)))
median = {name: (statistics.median(r[0] for r in runs), statistics.median(r[3] for r in runs)) for name, runs in rows.items()}
for name, runs in rows.items():
    print(f"{name}: median {median[name][0]:,.0f} requests/s (runs: {', '.join(f'{r[0]:,.0f}' for r in runs)}); "
          f"median server CPU {median[name][1]:.1f} µs per request")
for kind in ("fresh", "reuse"):
    shoal, peer = median[f"shoal-{kind}"], median[f"peer-{kind}"]
    per_round = [s[0] / p[0] for s, p in zip(rows[f"shoal-{kind}"], rows[f"peer-{kind}"])]
    print(f"{kind}: Shoal / wasmtime serve = {shoal[0] / peer[0]:.2f}x requests/s (per round: {', '.join(f'{x:.2f}' for x in per_round)}); "
          f"CPU per request {peer[1] / shoal[1]:.2f}x less")
PYEOF

if [ "${CRITERION:-1}" = 1 ]; then
  cargo bench -q -p shoal-benches --bench wasm_request 2>/dev/null | grep -E "time:|hello" || true
fi
