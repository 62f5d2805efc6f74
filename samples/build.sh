#!/usr/bin/env bash
# Builds the sample guests from source: samples/NAME/NAME.wasm for every sample (wasm32-wasip2
# components) and samples/worker/worker-p1.wasm (a wasm32-wasip1 core module).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if command -v rustup >/dev/null 2>&1; then
  installed="$(rustup target list --installed)"
  for target in wasm32-wasip2 wasm32-wasip1; do
    grep -qx "$target" <<<"$installed" || rustup target add "$target"
  done
fi

cargo build --release --target wasm32-wasip2 --quiet
cargo build --release --target wasm32-wasip1 --quiet -p worker

for name in hello echo misbehave; do
  cp "target/wasm32-wasip2/release/$name.wasm" "$name/$name.wasm"
done
cp target/wasm32-wasip2/release/worker.wasm worker/worker.wasm
cp target/wasm32-wasip1/release/worker.wasm worker/worker-p1.wasm

for file in hello/hello.wasm echo/echo.wasm misbehave/misbehave.wasm worker/worker.wasm worker/worker-p1.wasm; do
  printf 'built samples/%s (%s bytes)\n' "$file" "$(wc -c <"$file")"
done
