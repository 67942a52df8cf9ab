#!/usr/bin/env bash
# One-command host setup for sysdream: Debian packages, kernel headers for bcc,
# tracefs, and a .venv with the package installed editable (dev extra).
# Idempotent: a second run checks everything and changes nothing.
#
# Exit codes: 2 not root, 3 no apt, 4 apt install failed, 5 no kernel headers,
#             6 venv or pip failed, 7 import check failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$here/.venv"
python="${PYTHON:-python3}"

say() { printf 'setup: %s\n' "$*"; }
die() { local code=$1; shift; printf 'setup: error: %s\n' "$*" >&2; exit "$code"; }

[ "$(id -u)" -eq 0 ] || die 2 "must run as root (capture needs BPF); run: sudo make setup"
command -v apt-get >/dev/null && command -v dpkg-query >/dev/null \
    || die 3 "apt-get not found: sysdream setup supports Debian and Ubuntu hosts only"

# --- Debian packages -------------------------------------------------------
# prometheus, openssl (an HTTPS receiver's certificate), iproute2 (the fleet's network
# namespaces) and faketime (a wall-clock step seen by the daemon alone) are only for the
# test suite. libatomic1: the ring-buffer reader's memory fence (required on aarch64).
packages=(python3-bpfcc bpfcc-tools libsystemd-dev pkg-config python3-venv
          python3-dev gcc systemd libatomic1 prometheus openssl iproute2 faketime)

kernel=$(uname -r)
modules="/lib/modules/$kernel"
want_headers=""
if [ ! -e "$modules/build/include" ]; then
    want_headers="linux-headers-$kernel"
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done

apt_updated=""
apt_update() {
    [ -n "$apt_updated" ] && return 0
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || die 4 "apt-get update failed; check the package sources"
    apt_updated=1
}

if [ -n "$want_headers" ]; then
    apt_update
    if apt-cache show "$want_headers" >/dev/null 2>&1; then
        missing+=("$want_headers")
        want_headers=""
    else
        # No headers package for this kernel (a custom or cloud-provider kernel):
        # compile against the distribution's newest cloud headers instead.
        installed linux-headers-cloud-amd64 || missing+=(linux-headers-cloud-amd64)
    fi
fi

if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    say "installing ${missing[*]}"
    # policy-rc.d keeps package services (prometheus) from starting on install.
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1
    fi
    rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        >/tmp/sysdream-setup-apt.log 2>&1 || rc=$?
    [ -n "$made_policy" ] && rm -f "$policy"
    [ "$rc" -eq 0 ] || die 4 "apt-get install failed (log: /tmp/sysdream-setup-apt.log)"
fi

if [ ! -e "$modules/build/include" ]; then
    build=$(ls -d /usr/src/linux-headers-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$build" ] && [ -n "$common" ] \
        || die 5 "no kernel headers for $kernel; install linux-headers-$kernel"
    mkdir -p "$modules"
    ln -sfn "$build" "$modules/build"
    ln -sfn "$common" "$modules/source"
    say "kernel $kernel has no headers package: linked $modules/build -> $build"
fi

# bcc reads tracepoint ids from tracefs; systemd mounts it on most hosts.
if [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
        && say "mounted tracefs on /sys/kernel/tracing" \
        || say "warning: could not mount tracefs on /sys/kernel/tracing"
fi

# --- Python environment ----------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv with $python"
    "$python" -m venv "$venv" || die 6 "could not create $venv with $python (install python3-venv)"
fi
pyver=$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

# Debian's bcc is a system package: expose only it, not all of dist-packages.
bcc_dir="$venv/system-bcc"
if [ ! -L "$bcc_dir/bcc" ]; then
    mkdir -p "$bcc_dir"
    ln -sfn /usr/lib/python3/dist-packages/bcc "$bcc_dir/bcc"
fi
[ -f "$site/system-bcc.pth" ] || echo "$bcc_dir" > "$site/system-bcc.pth"

stamp="$venv/.sysdream-setup"
want=$(cat "$here/pyproject.toml" | sha256sum | cut -d' ' -f1)-$pyver
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing sysdream (editable, dev extra) into $venv"
    "$venv/bin/pip" install -q -e "$here[dev]" || die 6 "pip install failed; see the output above"
    echo "$want" > "$stamp"
fi

"$venv/bin/python" - <<'PY' || die 7 "a dependency does not import; rerun after: rm -rf .venv"
import importlib
for name in ("bcc", "torch", "gensim", "numpy", "scipy", "prometheus_client", "zmq",
             "systemd.journal", "systemd.daemon", "sysdream.probes", "sysdream.model",
             "sysdream.daemon.commands.cli"):
    importlib.import_module(name)
PY
say "ok ($venv, python $pyver, kernel $kernel)"
