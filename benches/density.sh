#!/usr/bin/env bash
# Density: N idle HTTP pods of the hello component on one node (a `shoal server` with its local
# node), the process's RSS before and after, and a request to the last pod to show they serve.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pods="${PODS:-1000}"
[ -f samples/hello/hello.wasm ] || bash samples/build.sh
cargo build --release -q -p shoal
work="$(mktemp -d)"
# The server is waited for before its data directory goes: it may still be removing pods' files.
trap 'if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
./target/release/shoal server --data-dir "$work/data" --api-addr 127.0.0.1:0 --data-addr 127.0.0.1:0 --node-name density 2>"$work/log" &
pid=$!
for _ in $(seq 1 600); do [ -f "$work/data/admin.kubeconfig" ] && break; sleep 0.1; done
export KUBECONFIG="$work/data/admin.kubeconfig"
./target/release/shoal push samples/hello/hello.wasm shoal.local/samples/hello:latest >/dev/null
sleep 1
before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
python3 - "$pods" > "$work/pods.yaml" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    print("---\napiVersion: v1\nkind: Pod\nmetadata: {name: hello-%d}\nspec: {nodeName: density, containers: [{name: hello, image: 'shoal.local/samples/hello:latest'}]}" % i)
PY
start=$(date +%s.%N)
./target/release/shoal apply -f "$work/pods.yaml" >/dev/null
data=$(grep -o 'data plane at http://[0-9.:]*' "$work/log" | head -1 | sed 's/data plane at //')
last=$((pods - 1))
for _ in $(seq 1 1200); do curl -sf "$data/_pods/default/hello-$last/" >/dev/null && break; sleep 0.1; done
ready=$(date +%s.%N)
sleep 5
after=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
echo "machine: $(nproc) cores; $pods idle hello pods on one node (control plane in the same process)"
echo "created and serving in $(python3 -c "print(round($ready - $start, 1))") s; RSS $((before / 1024)) MiB -> $((after / 1024)) MiB: $(( (after - before) / pods )) KiB per idle pod"
curl -s "$data/_pods/default/hello-$last/"
