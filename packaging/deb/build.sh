#!/usr/bin/env bash
# `make deb`: dist/sysdream_<version>_amd64.deb from this tree.
#
#   /opt/sysdream        an isolated Python environment: sysdream's wheel and its pinned
#                        dependencies (torch's CPU build among them); Debian's bcc is seen
#                        through a link, as in make setup
#   /usr/bin/sysdream    the command
#   /usr/lib/systemd/system/sysdream{,-agent,-server,-worker}.service, /etc/sysdream/sysdream.toml
#   (a conffile),
#   /usr/share/doc/sysdream, the man page, the bash completion, and the Grafana dashboard,
#   the Prometheus rules and the units' optional drop-ins (systemd/remote-outputs.conf,
#   linked in by the administrator: docs/runbook.md) under /usr/share/sysdream
#
# SYSDREAM_DEB_VERSION overrides the version (pyproject's by default). Exit codes: 0 built,
# 2 usage, 6 pip or the venv failed, 8 dpkg-deb failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
die() { echo "make deb: $2" >&2; exit "$1"; }
[ -x "$root/.venv/bin/pip" ] || die 2 "no .venv here: run make setup first"
version=${SYSDREAM_DEB_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -1)}
out=${1:-$root/dist}
mkdir -p "$out"
stage=$(mktemp -d /tmp/sysdream-deb.XXXXXX)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/pkg
opt=$pkg/opt/sysdream
py=$(sed -n 's/^requires-python = ">=\(3\.[0-9]*\)"/\1/p' "$root/pyproject.toml")

"$root/.venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$stage/wheel" "$root" \
    || die 6 "building the wheel failed; see above"
python3 -m venv "$opt" || die 6 "python3 -m venv failed (apt-get install python3-venv)"
"$opt/bin/pip" install -q --no-compile --disable-pip-version-check "$stage"/wheel/sysdream-*.whl \
    || die 6 "installing sysdream and its dependencies into the package failed; see above"
site=$(echo "$opt"/lib/python3*/site-packages)
mkdir -p "$opt/system-bcc"
ln -s /usr/lib/python3/dist-packages/bcc "$opt/system-bcc/bcc"
echo /opt/sysdream/system-bcc > "$site/system-bcc.pth"
# the environment was made here, it runs at /opt/sysdream: its scripts say so
grep -rlI --exclude-dir=__pycache__ "$opt" "$opt/bin" "$opt/pyvenv.cfg" 2>/dev/null \
    | xargs -r sed -i "s#$opt#/opt/sysdream#g"
find "$opt" -name __pycache__ -prune -exec rm -rf {} +

install -d "$pkg/usr/bin" "$pkg/usr/lib/systemd/system" "$pkg/etc/sysdream" \
    "$pkg/usr/share/doc/sysdream" "$pkg/usr/share/man/man8" \
    "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/sysdream" "$pkg/DEBIAN"
ln -s /opt/sysdream/bin/sysdream "$pkg/usr/bin/sysdream"
install -m 0644 "$root"/systemd/sysdream*.service "$pkg/usr/lib/systemd/system/"
install -m 0644 "$root/packaging/sysdream.toml" "$pkg/etc/sysdream/"
install -m 0644 "$root/README.md" "$root"/docs/*.md "$root/docs/alert.schema.json" \
    "$pkg/usr/share/doc/sysdream/"
gzip -9n < "$root/packaging/sysdream.8" > "$pkg/usr/share/man/man8/sysdream.8.gz"
install -m 0644 "$root/packaging/sysdream.bash-completion" \
    "$pkg/usr/share/bash-completion/completions/sysdream"
install -D -m 0644 "$root/packaging/sysdream.zsh-completion" \
    "$pkg/usr/share/zsh/vendor-completions/_sysdream"
cp -r "$root/packaging/grafana" "$root/packaging/prometheus" "$root/packaging/systemd" \
    "$pkg/usr/share/sysdream/"
printf '%s\n' "Files: *" "License: Apache-2.0" > "$pkg/usr/share/doc/sysdream/copyright"

size=$(du -sk "$pkg" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" -e "s/@PY@/$py/" \
    "$root/packaging/deb/control" > "$pkg/DEBIAN/control"
echo /etc/sysdream/sysdream.toml > "$pkg/DEBIAN/conffiles"
for s in postinst prerm postrm; do
    install -m 0755 "$root/packaging/deb/$s" "$pkg/DEBIAN/$s"
done
deb="$out/sysdream_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zgzip -z1 --build "$pkg" "$deb" >/dev/null \
    || die 8 "dpkg-deb failed; see above"
echo "$deb"
