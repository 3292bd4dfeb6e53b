#!/usr/bin/env bash
# npm is needed to install the project (which then brings its own Node 24).
set -euo pipefail
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing: install Node.js (any version >= 18, with npm); the project brings Node 24 itself." >&2
  exit 1
fi
