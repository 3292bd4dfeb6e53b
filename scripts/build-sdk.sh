#!/usr/bin/env bash
# Builds the SDK package: sdk/src → sdk/dist (JavaScript and .d.ts), tests left out.
#
#   bash scripts/build-sdk.sh
#
# tsc compiles the hand-written .ts (relative ".ts" imports become ".js"); the generated
# code in sdk/src/gen is JavaScript with .d.ts already, so it is copied as it is. sdk/dist
# is what `npm pack` in sdk/ puts in the package (see "files" and "exports" there).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tsc="$root/node_modules/.bin/tsc"
[ -x "$tsc" ] || { echo "build-sdk: $tsc is missing; run make deps (npm ci) first" >&2; exit 1; }

rm -rf sdk/dist
"$tsc" -p sdk/tsconfig.build.json

# The generated messages and services, as protoc-gen-es wrote them.
(cd sdk/src && find gen -type f \( -name '*.js' -o -name '*.d.ts' \) -print0) |
  while IFS= read -r -d '' f; do
    mkdir -p "sdk/dist/$(dirname "$f")"
    cp "sdk/src/$f" "sdk/dist/$f"
  done

# tsc 5.9 rewrites ".ts" to ".js" in the JavaScript it emits but not in the .d.ts: do it
# there too, so that any TypeScript that reads the package resolves them alike.
find sdk/dist -name '*.d.ts' -not -path 'sdk/dist/gen/*' -print0 |
  xargs -0 sed -i -E "s#([\"'](\\.{1,2}/[^\"']*))\\.ts([\"'])#\\1.js\\3#g"

# Nothing of the tests, and every relative import resolvable.
if find sdk/dist -name '*.test.*' | grep -q .; then
  echo "build-sdk: a test file got into sdk/dist" >&2
  exit 1
fi
if grep -rEl "from [\"']\\.{1,2}/[^\"']*\\.ts[\"']" sdk/dist >/dev/null; then
  echo "build-sdk: a .ts import is left in sdk/dist:" >&2
  grep -rEn "from [\"']\\.{1,2}/[^\"']*\\.ts[\"']" sdk/dist >&2
  exit 1
fi
echo "build-sdk: sdk/dist built ($(find sdk/dist -type f | wc -l) files)" >&2
