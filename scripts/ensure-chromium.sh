#!/bin/sh
# Installs Debian's chromium (for the headless browser tests, driven by playwright-core)
# when it is missing. Idempotent and quiet: prints nothing when chromium is already there.
# Usage: scripts/ensure-chromium.sh   (needs root or sudo for apt-get the first time)
set -eu
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "ensure-chromium: chromium is missing and installing it needs root (apt-get install chromium)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: chromium is missing and apt-get is not available; install chromium by hand" >&2
  exit 1
fi
echo "ensure-chromium: installing chromium with apt-get (once)" >&2
export DEBIAN_FRONTEND=noninteractive
# apt-get's chatter goes to a log that is shown only when something fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "ensure-chromium: apt-get failed" >&2
  exit 1
fi
command -v chromium >/dev/null 2>&1 || { echo "ensure-chromium: chromium still not on PATH after install" >&2; exit 1; }
