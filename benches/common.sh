# Sourced by the wrk benchmarks (from the repository root): run settings, the load generator,
# the samples, and the peer: wasmtime-cli 48 built from crates.io once into a cache.
seconds="${SECONDS_PER_RUN:-10}"
connections="${CONNECTIONS:-32}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
[ -f samples/hello/hello.wasm ] || bash samples/build.sh
wasmtime_root="${WASMTIME_ROOT:-$HOME/.cache/shoal-bench/wasmtime-48}"
ensure_wasmtime() {
  if [ ! -x "$wasmtime_root/bin/wasmtime" ]; then
    echo "building wasmtime-cli 48 from crates.io into $wasmtime_root (once; several minutes)" >&2
    cargo install --quiet --locked wasmtime-cli --version 48.0.8 --root "$wasmtime_root"
  fi
}
