#!/usr/bin/env bash
# etcd for tests and `dsat up`: $ETCD_BIN, else `etcd` on the PATH, else Debian's etcd-server.
set -euo pipefail
if [ -n "${ETCD_BIN:-}" ] && [ -x "$ETCD_BIN" ]; then exit 0; fi
if command -v etcd >/dev/null 2>&1; then exit 0; fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "etcd is missing and installing it needs root: apt-get install etcd-server (or set ETCD_BIN)" >&2; exit 1
    fi
  fi
  echo "etcd is missing: installing Debian's etcd-server (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null
  # Debian's package may start a system etcd on 2379; dsat starts its own on free ports.
  command -v etcd >/dev/null 2>&1 && exit 0
fi
echo "etcd is missing: install etcd 3.4+ (Debian: apt-get install etcd-server) or set ETCD_BIN to its path" >&2
exit 1
