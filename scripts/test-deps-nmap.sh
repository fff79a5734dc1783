#!/bin/sh
# Install nmap for tests/open_relay.rs (its smtp-open-relay script). Idempotent: does nothing
# when nmap is already on PATH. Needs root and apt-get (Debian/Ubuntu); exits non-zero when it
# cannot install, and the test then reports itself skipped.
set -eu
if command -v nmap >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "test-deps-nmap: apt-get not found; install nmap by hand" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "test-deps-nmap: not root; install nmap by hand (apt-get install nmap)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# A stale package list is the usual reason for a failed install: refresh once and retry.
apt-get install -y -q nmap >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nmap >/dev/null; }
command -v nmap >/dev/null 2>&1
