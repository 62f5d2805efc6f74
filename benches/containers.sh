#!/usr/bin/env bash
# Create → Running for one pod at a time: an OCI container pod (busybox `sleep`) through Shoal,
# next to `ctr run -d` of the same image on the same private containerd (the floor), and a Wasm
# HTTP component pod through Shoal. The image is built here (`docker build` of a FROM scratch
# image holding Debian's busybox-static), pushed to a loopback docker-registry, and pulled once
# before timing, so every timed start finds it unpacked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${RUNS:-20}"
[ -f samples/hello/hello.wasm ] || bash samples/build.sh
cargo build --release -q -p shoal -p shoal-benches
work="$(mktemp -d)"
cleanup() {
  kill "${server_pid:-0}" "${registry_pid:-0}" 2>/dev/null || true
  sleep 2
  rm -rf "$work"
}
trap cleanup EXIT
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "containerd: $(containerd --version | awk '{print $3}'), runc: $(runc --version | awk 'NR==1 {print $3}')"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$work/registry" "$port" >"$work/registry.yml"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
mkdir -p "$work/image"
cp "$(command -v busybox)" "$work/image/busybox"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["/bin/sh"]\n' >"$work/image/Dockerfile"
image="127.0.0.1:$port/busybox:bench"
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
docker build -q -t "$image" "$work/image" >/dev/null
docker push -q "$image" >/dev/null

./target/release/shoal server --data-dir "$work/data" --api-addr 127.0.0.1:0 --data-addr 127.0.0.1:0 --node-name bench \
  --ingress-addr 127.0.0.1:0 --ingress-tls-addr 127.0.0.1:0 --pod-cidr 10.89.250.0/24 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 600); do [ -f "$work/data/admin.kubeconfig" ] && break; sleep 0.1; done
sleep 1
export KUBECONFIG="$work/data/admin.kubeconfig"
./target/release/shoal push samples/hello/hello.wasm shoal.local/bench/hello:1 >/dev/null

# Warm up: the first container pod starts the node's containerd and pulls and unpacks the image.
./target/release/pod_start "$work/data" "$image" 1 sleep 3600 >/dev/null
./target/release/pod_start "$work/data" shoal.local/bench/hello:1 1 >/dev/null

./target/release/pod_start "$work/data" "$image" "$runs" sleep 3600
./target/release/pod_start "$work/data" shoal.local/bench/hello:1 "$runs"
echo "the same Wasm pod with automountServiceAccountToken: false (no token requested):"
AUTOMOUNT=false ./target/release/pod_start "$work/data" shoal.local/bench/hello:1 "$runs"

# The floor: ctr run -d (create the container, its snapshot and task, start it) on the same
# containerd, in a namespace of its own, timed from the command's start to its return.
socket="$work/data/node/containerd/containerd.sock"
ctr_() { ctr --address "$socket" -n bench "$@"; }
ctr_ images pull --plain-http "$image" >/dev/null
times=()
for i in $(seq 1 "$runs"); do
  start=$(date +%s%N)
  ctr_ run -d --null-io "$image" "bench-$i" sleep 3600 >/dev/null
  end=$(date +%s%N)
  times+=($(((end - start) / 1000)))
  ctr_ tasks kill -s KILL "bench-$i" >/dev/null
  for _ in $(seq 1 50); do ctr_ tasks rm "bench-$i" >/dev/null 2>&1 && break; sleep 0.05; done
  ctr_ containers rm "bench-$i" >/dev/null
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "ctr run -d of the same image: median %.1f ms, min %.1f ms, max %.1f ms\n", a[int(NR/2)+1]/1000, a[1]/1000, a[NR]/1000}'
ctr_ images rm "$image" >/dev/null
