#!/bin/sh
# Install the system tools that the black-box tests use. Idempotent: a tool already on
# PATH is left alone. Runs as root (CI and the developer machines do); without apt-get it
# only reports what is missing.
set -eu

need() {
    # $1: command the tests run, $2: Debian package that provides it
    if command -v "$1" >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "test-deps: $1 missing and no apt-get; install package $2 by hand" >&2
        return 1
    fi
    if [ -z "${UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"
}

# tests/proxy.rs: a real PROXY protocol v1/v2 sender in front of posta.
need haproxy haproxy
