#!/usr/bin/env bash
# Builds the `shoal:local` image from this checkout: a release build of the binary, the shared
# libraries it links (from ldd) and an empty /tmp, in a FROM-scratch image (no base image to pull).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -p shoal
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/data" "$root/etc"
chmod 1777 "$root/tmp"
cp target/release/shoal "$root/usr/local/bin/shoal"
# Line tables help a developer's backtraces, not an image: strip them when strip is there.
command -v strip >/dev/null && strip --strip-debug "$root/usr/local/bin/shoal"
# The dynamic loader and every library the binary needs, at the same paths.
for library in $(ldd target/release/shoal | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$library")"
  cp -L "$library" "$root$library"
done
echo "shoal:x:0:0:shoal:/data:/usr/local/bin/shoal" > "$root/etc/passwd"
cp deploy/Dockerfile "$context/Dockerfile"
docker build -t shoal:local "$context"
