#!/usr/bin/env bash
# Install what kvmtrace's live tests need on a Debian host: BCC (python3-bpfcc), kernel
# headers BCC can compile against, the /lib/modules/$(uname -r)/{build,source} links BCC
# looks for, and a mounted tracefs.  Idempotent.  It never fails the CI run: when it cannot
# do something (not root, no apt, no network) it says why and exits 0, and the live tests
# then skip with their own reason.
set -u

say() { echo "install-live: $*"; }

if [ "$(id -u)" != 0 ]; then
    say "not root; skipping (live tests need root and will skip)"
    exit 0
fi

release="$(uname -r)"

# --- packages ---------------------------------------------------------------------------
have_bcc() { [ -d /usr/lib/python3/dist-packages/bcc ]; }
have_headers() { ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1 || [ -e "/lib/modules/$release/build/Makefile" ]; }

if ! have_bcc || ! have_headers; then
    if command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        if apt-get update -qq >/dev/null 2>&1; then
            pkgs="python3-bpfcc"
            # Headers matching the running kernel when Debian ships them, else the
            # distribution's default headers (tracepoint programs compile against them).
            if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
                pkgs="$pkgs linux-headers-$release"
            else
                pkgs="$pkgs linux-headers-amd64"
            fi
            log="$(mktemp)"
            if ! apt-get install -y -qq --no-install-recommends $pkgs >"$log" 2>&1; then
                say "apt-get install $pkgs failed; live tests will skip:"
                tail -n 5 "$log" | sed 's/^/install-live:   /'
            fi
            rm -f "$log"
        else
            say "apt-get update failed (no network?); live tests will skip"
        fi
    else
        say "no apt-get on this host; install BCC and kernel headers by hand"
    fi
fi
have_bcc && say "BCC: /usr/lib/python3/dist-packages/bcc" || say "BCC: not installed"

# --- header links -----------------------------------------------------------------------
# BCC compiles against /lib/modules/$(uname -r)/build (and .../source for the common
# part of Debian's split header packages).  A custom kernel has neither; point them at the
# newest installed Debian headers.
moddir="/lib/modules/$release"
if [ ! -e "$moddir/build" ]; then
    hdr="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$hdr" ]; then
        if mkdir -p "$moddir" && ln -sfn "$hdr" "$moddir/build"; then
            say "linked $moddir/build -> $hdr"
        else
            say "cannot link $moddir/build (read-only /lib/modules?); BCC cannot compile"
        fi
        common="${hdr%-amd64}-common"
        if [ ! -e "$moddir/source" ] && [ -d "$common" ] && ln -sfn "$common" "$moddir/source"; then
            say "linked $moddir/source -> $common"
        fi
    else
        say "no kernel headers under /usr/src; BCC cannot compile"
    fi
else
    say "headers: $moddir/build -> $(readlink -f "$moddir/build")"
fi

# --- tracefs ----------------------------------------------------------------------------
if [ -d /sys/kernel/tracing ] && [ ! -e /sys/kernel/tracing/events ]; then
    if mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; then
        say "mounted tracefs at /sys/kernel/tracing"
    else
        say "cannot mount tracefs at /sys/kernel/tracing; live tests will skip"
    fi
else
    say "tracefs: $( [ -e /sys/kernel/tracing/events ] && echo mounted || echo absent )"
fi
exit 0
