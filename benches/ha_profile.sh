#!/usr/bin/env bash
# Where a Raft group's writes spend CPU: starts MEMBERS servers on loopback (default 3), runs
# wrk creates (benches/create.lua) with CONNS connections (default 64) to the leader for SECS
# seconds (default 10), and prints writes/s and latency, then for each server and for wrk the
# CPU per write (from /proc/PID/stat) and each server's context switches per write (summed
# over its threads), and the writes per log entry. `BIN` picks the binary (default
# target/release/shoal, built by `cargo build --release -p shoal`), so two builds can be
# compared in alternating rounds. With `PERF=leader` or `PERF=follower` it also records that
# server with `perf record --call-graph dwarf` into /tmp/ha_profile.perf.data.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${BIN:-target/release/shoal}"
members="${MEMBERS:-3}"
conns="${CONNS:-64}"
secs="${SECS:-10}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
[ -x "$bin" ] || { echo "$bin is missing: cargo build --release -p shoal" >&2; exit 1; }
work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
url_of() { awk '/server:/ {print $2}' "$work/s$1/admin.kubeconfig"; }
await_config() { for _ in $(seq 1 600); do [ -f "$work/s$1/admin.kubeconfig" ] && return; sleep 0.1; done; echo "server $1 did not start" >&2; exit 1; }
"$bin" server --data-dir "$work/s0" --api-addr 127.0.0.1:0 --disable-node --disable-controllers 2>"$work/s0.log" &
pids+=($!)
await_config 0
for i in $(seq 1 $((members - 1))); do
  "$bin" server --data-dir "$work/s$i" --api-addr 127.0.0.1:0 --disable-node --disable-controllers \
    --join "$(url_of 0)" --token "$(cat "$work/s0/server-token")" 2>"$work/s$i.log" &
  pids+=($!)
  await_config "$i"
done
sleep 1
status() { curl -s --cacert "$work/s0/pki/ca.crt" -H "Authorization: Bearer $(cat "$work/s0/admin-token")" "$(url_of 0)/internal/cluster/status"; }
leader="$(status | python3 -c 'import json,sys; s=json.load(sys.stdin); print(next(m["addr"] for m in s["members"] if m["id"]==s["leader"]))')"
role_of() { if [ "$(url_of "$1")" = "$leader" ]; then echo leader; else echo follower; fi; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
declare -A cpu0 csw0
for p in "${pids[@]}"; do cpu0[$p]=$(cpu "$p"); csw0[$p]=$(switches "$p"); done
index0="$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_log_index"])')"
perf_pid=""
if [ -n "${PERF:-}" ]; then
  for i in $(seq 0 $((members - 1))); do
    if [ "$(role_of "$i")" = "$PERF" ]; then
      perf record -F 999 --call-graph dwarf,16384 -p "${pids[$i]}" -o /tmp/ha_profile.perf.data -- sleep $((secs - 1)) >/dev/null 2>&1 &
      perf_pid=$!
      break
    fi
  done
fi
threads=1; ((conns > 1)) && threads=2
out="$(TOKEN="$(cat "$work/s0/admin-token")" /usr/bin/time -f "wrk-cpu %U %S" wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s benches/create.lua "$leader/api/v1/namespaces/default/configmaps" 2>&1)"
writes="$(echo "$out" | awk '/requests in/ {print $1}')"
tick="$(getconf CLK_TCK)"
echo "$members member(s), $conns connection(s), ${secs} s: $(echo "$out" | awk '/Requests\/sec/ {print $2 " writes/s"} /^ +50%/ {print "p50 " $2} /^ +99%/ {print "p99 " $2}' | paste -sd, -)"
for i in $(seq 0 $((members - 1))); do
  p="${pids[$i]}"
  python3 -c "print('server $i ($(role_of "$i")): %.1f µs of CPU and %.2f context switches per write' % (($(cpu "$p") - ${cpu0[$p]}) / $tick * 1e6 / $writes, ($(switches "$p") - ${csw0[$p]}) / $writes))"
done
python3 -c "print('wrk: %.1f µs of CPU per write' % (($(echo "$out" | awk '/wrk-cpu/ {print $2 + $3}')) * 1e6 / $writes))"
index1="$(status | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_log_index"])')"
python3 -c "print('%.1f writes per log entry (%d entries)' % ($writes / max(1, $index1 - $index0), $index1 - $index0))"
if [ -n "$perf_pid" ]; then wait "$perf_pid" || true; echo "perf data: /tmp/ha_profile.perf.data"; fi
