#!/usr/bin/env bash
# Install what the deploy/ tests validate with: promtool (`promtool check metrics`, `check
# rules`, `test rules`), which Debian ships only in its prometheus package.
# systemd-analyze (`verify` of deploy/systemd) is part of systemd, on every Debian host.
# Idempotent.  It never fails the CI run: without root, apt or network it says why and
# exits 0, and those tests then skip with their own reason.
set -u

say() { echo "install-deploy-tools: $*"; }

if command -v promtool >/dev/null 2>&1; then
    say "promtool: $(command -v promtool) ($(promtool --version 2>&1 | head -n 1))"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    say "not root; promtool not installed (its tests will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get on this host; install promtool by hand (its tests will skip)"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# The package's maintainer scripts would start the prometheus server; the tests need only
# the promtool binary.  policy-rc.d exit 101 ("action forbidden") stops invoke-rc.d and
# deb-systemd-invoke from starting it, for this install only, unless the host has its own.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

if ! apt-get update -qq >/dev/null 2>&1; then
    say "apt-get update failed (no network?); promtool not installed (its tests will skip)"
    exit 0
fi
log="$(mktemp)"
if apt-get install -y -qq --no-install-recommends prometheus >"$log" 2>&1; then
    # Where systemd runs, the package enabled the server for the next boot: undo that.
    if [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
    say "promtool: $(command -v promtool || echo 'still missing after installing prometheus')"
else
    say "apt-get install prometheus failed; promtool tests will skip:"
    tail -n 5 "$log" | sed 's/^/install-deploy-tools:   /'
fi
rm -f "$log"
exit 0
