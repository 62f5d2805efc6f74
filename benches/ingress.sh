#!/usr/bin/env bash
# Whole-system HTTP through Shoal's ingress and Service proxy, side by side in one run with the
# same load generator (wrk):
#   - throughput (-c32) of the hello component through the ingress, vs `wasmtime serve` 48 (built
#     from crates.io, pooling allocator, a fresh instance per request) serving the same file, vs
#     the node's data plane directly, vs a static hyper server (the ceiling);
#   - latency (-c1): the ingress hop = ingress p50/p99 minus data-plane p50/p99;
#   - a guest's call to a Service: echo's /fetch?url=http://hello/ minus echo's plain answer,
#     with hello on the same node (in-process) and on another node (forwarded);
#   - both latencies again with paired_latency (interleaved rounds, PAIRED_ROUNDS), and the
#     criterion split of the same-node call.
# Prints lines for benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source benches/common.sh
peer="${PEER:-1}"  # PEER=0 leaves out `wasmtime serve` (and says so in the output)
if [ "$peer" = 1 ]; then ensure_wasmtime; fi
cargo build --release -q -p shoal -p shoal-benches
work="$(mktemp -d)"
pids=""
trap 'kill $pids 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { for _ in $(seq 1 600); do curl -sf "$@" >/dev/null && return 0; sleep 0.1; done; echo "not answering: $*" >&2; return 1; }
# wrk with a Host header: "RPS requests/s, p50 X, p99 Y".
load() {
  local c="$1" host="$2" url="$3"
  wrk -t1 -c"$c" -d"${seconds}s" --latency -H "Host: $host" "$url" |
    awk '/Requests\/sec/ {rps=$2} /50%/ {p50=$2} /99%/ {p99=$2} /Non-2xx/ {bad=$NF} END {printf "%s requests/s, p50 %s, p99 %s%s\n", rps, p50, p99, (bad ? ", NON-2XX " bad : "")}'
}
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t1 -d${seconds}s"

port=$(free_port)
if [ "$peer" = 1 ]; then
  "$wasmtime_root/bin/wasmtime" serve -S cli -O pooling-allocator=y --addr "127.0.0.1:$port" samples/hello/hello.wasm 2>"$work/wasmtime.log" &
  pids="$!"
  wait_ok "http://127.0.0.1:$port/"
  echo "wasmtime serve $("$wasmtime_root/bin/wasmtime" --version | awk '{print $2}') -c$connections: $(load "$connections" x "http://127.0.0.1:$port/")"
  echo "wasmtime serve -c1: $(load 1 x "http://127.0.0.1:$port/")"
  kill $pids; wait $pids 2>/dev/null || true
else
  echo "wasmtime serve: not measured in this run (PEER=0)"
fi

./target/release/static_http "127.0.0.1:$port" &
pids="$!"
wait_ok "http://127.0.0.1:$port/"
echo "static hyper server -c$connections: $(load "$connections" x "http://127.0.0.1:$port/")"
echo "static hyper server -c1: $(load 1 x "http://127.0.0.1:$port/")"
kill $pids; wait $pids 2>/dev/null || true

ingress=$(free_port)
./target/release/shoal server --data-dir "$work/data" --api-addr 127.0.0.1:0 --data-addr 127.0.0.1:0 --node-name bench \
  --ingress-addr "127.0.0.1:$ingress" --ingress-tls-addr 127.0.0.1:0 ${DATA_PLANE_THREADS:+--data-plane-threads "$DATA_PLANE_THREADS"} 2>"$work/shoal.log" &
pids="$!"
for _ in $(seq 1 600); do [ -f "$work/data/admin.kubeconfig" ] && break; sleep 0.1; done
export KUBECONFIG="$work/data/admin.kubeconfig"
./target/release/shoal agent --server "$(awk '/server:/ {print $2}' "$KUBECONFIG")" --token "$(cat "$work/data/node-token")" \
  --ca-file "$work/data/pki/ca.crt" --data-dir "$work/agent" --node-name remote --data-addr 127.0.0.2:0 --disable-ingress ${DATA_PLANE_THREADS:+--data-plane-threads "$DATA_PLANE_THREADS"} 2>"$work/agent.log" &
pids="$pids $!"
./target/release/shoal push samples/hello/hello.wasm shoal.local/samples/hello:latest >/dev/null
./target/release/shoal push samples/echo/echo.wasm shoal.local/samples/echo:latest >/dev/null
app() { # NAME IMAGE NODE HOST
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1}
spec:
  replicas: 1
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}, annotations: {shoal.dev/max-concurrency: "1000"}}
    spec:
      nodeSelector: {kubernetes.io/hostname: $3}
      containers: [{name: app, image: "$2", ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: $1}
spec: {selector: {app: $1}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: $1}
spec: {rules: [{host: $4, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: $1, port: {number: 80}}}}]}}]}
---
YAML
}
for _ in $(seq 1 300); do ./target/release/shoal get node remote >/dev/null 2>&1 && break; sleep 0.1; done
{ app hello shoal.local/samples/hello:latest bench hello.localhost; app hello-remote shoal.local/samples/hello:latest remote remote.localhost;
  app echo shoal.local/samples/echo:latest bench echo.localhost; } | ./target/release/shoal apply -f - >/dev/null
for d in hello hello-remote echo; do ./target/release/shoal rollout status "deployment/$d" --timeout 120 >/dev/null; done
data=$(grep -o 'data plane at http://[0-9.:]*' "$work/shoal.log" | head -1 | sed 's/data plane at //')
pod=$(./target/release/shoal get pods -l app=hello -o name | head -1 | cut -d/ -f2)
wait_ok -H 'Host: hello.localhost' "http://127.0.0.1:$ingress/"
wait_ok -H 'Host: echo.localhost' "http://127.0.0.1:$ingress/fetch?url=http://hello-remote/"
echo "shoal ingress -> hello -c$connections: $(load "$connections" hello.localhost "http://127.0.0.1:$ingress/")"
echo "shoal data plane -> hello -c$connections: $(load "$connections" x "$data/_pods/default/$pod/")"
echo "shoal ingress -> hello -c1: $(load 1 hello.localhost "http://127.0.0.1:$ingress/")"
echo "shoal data plane -> hello -c1: $(load 1 x "$data/_pods/default/$pod/")"
echo "echo, plain answer -c1: $(load 1 echo.localhost "http://127.0.0.1:$ingress/")"
echo "echo calling http://hello/ (same node, in-process) -c1: $(load 1 echo.localhost "http://127.0.0.1:$ingress/fetch?url=http://hello/")"
echo "echo calling http://hello-remote/ (other node) -c1: $(load 1 echo.localhost "http://127.0.0.1:$ingress/fetch?url=http://hello-remote/")"
# The same latencies again, interleaved: each round sends one request to each target in turn, so
# the machine's noise falls on every target alike and the differences are the paths' own.
rounds="${PAIRED_ROUNDS:-20000}"
# One connection per target on every reactor (they take connections in turn), so that every
# target meets the same threads; DATA_PLANE_THREADS=0 (the shared runtime) needs one.
reactors="${DATA_PLANE_THREADS:-$(nproc)}"
echo "paired, $rounds rounds: the ingress hop (ingress vs data plane, both to hello)"
CONNECTIONS="$reactors" ./target/release/paired_latency "$rounds" "http://127.0.0.1:$ingress/|hello.localhost" "$data/_pods/default/$pod/" | sed 's/^/  /'
echo "paired, $rounds rounds: a guest's Service call (echo's plain answer vs echo calling hello on this node and on the other)"
CONNECTIONS="$reactors" ./target/release/paired_latency "$rounds" "http://127.0.0.1:$ingress/|echo.localhost" "http://127.0.0.1:$ingress/fetch?url=http://hello/|echo.localhost" \
  "http://127.0.0.1:$ingress/fetch?url=http://hello-remote/|echo.localhost" | sed 's/^/  /'
echo "in-process split of the same-node call (criterion):"
cargo bench -q -p shoal-benches --bench service_call 2>/dev/null | grep -E "^same-node|time:" | paste - - | awk '{$1=$1; print "  " $0}' || true
