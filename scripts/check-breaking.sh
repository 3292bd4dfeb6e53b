#!/usr/bin/env bash
# Checks proto/ against the last released contract (contract/dsat-vX.Y.binpb, the newest)
# with buf's FILE rules from buf.yaml, and says what version change the difference calls for:
#
#   bash scripts/check-breaking.sh [contract/dsat-vX.Y.binpb]
#
# - no difference, or only additions and comments: passes (an addition is released as X.Y.Z+1);
# - a breaking change while DSAT_VERSION (sdk/src/version.ts) is still the contract's X.Y:
#   fails, listing what breaks: revert it, or bump X or Y (see contract/README.md);
# - a breaking change after DSAT_VERSION moved on to a newer X.Y: passes, listing what
#   breaks, as that X.Y allows; cut its contract when it is released.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
buf="$root/node_modules/.bin/buf"
[ -x "$buf" ] || { echo "check-breaking: $buf is missing; run make deps (npm ci) first" >&2; exit 1; }

against="${1:-$(ls contract/dsat-v*.binpb 2>/dev/null | sort -V | tail -n 1)}"
[ -n "$against" ] && [ -f "$against" ] || { echo "check-breaking: no released contract in contract/ (see contract/README.md)" >&2; exit 1; }
released="$(basename "$against" .binpb)"; released="${released#dsat-v}"        # X.Y
current="$(sed -nE 's/^export const DSAT_VERSION = "([0-9]+\.[0-9]+)(\.[a-z0-9])?";.*/\1/p' sdk/src/version.ts)"
[ -n "$current" ] || { echo "check-breaking: cannot read DSAT_VERSION from sdk/src/version.ts" >&2; exit 1; }

if out="$("$buf" breaking proto --against "$against" 2>&1)"; then
  image="$(mktemp)"; trap 'rm -f "$image"' EXIT
  "$buf" build proto -o "$image"
  if cmp -s "$image" "$against"; then
    echo "check-breaking: proto/ is the released contract $released, unchanged"
  else
    echo "check-breaking: proto/ differs from the released contract $released without breaking it (FILE rules): additions or comments, a Z release"
  fi
  exit 0
fi

newer="$(printf '%s\n%s\n' "$released" "$current" | sort -V | tail -n 1)"
if [ "$current" != "$released" ] && [ "$newer" = "$current" ]; then
  echo "check-breaking: proto/ breaks the released contract $released, as DSAT_VERSION $current may:"
  echo "$out"
  echo "check-breaking: cut contract/dsat-v$current.binpb when $current is released (contract/README.md)"
  exit 0
fi
echo "check-breaking: proto/ breaks the released contract $released (FILE rules), and DSAT_VERSION is still $current:" >&2
echo "$out" >&2
echo "check-breaking: make the change additive (new fields, new messages, new methods), or bump X or Y of DSAT_VERSION and cut a new contract (contract/README.md)" >&2
exit 1
