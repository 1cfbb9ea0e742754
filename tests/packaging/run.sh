#!/usr/bin/env bash
# Packaging checks (CI): the systemd units verify cleanly and are hardened, the .deb builds,
# lintian finds no error or warning, and the packaged binary accepts the packaged config.
#   tests/packaging/run.sh [path/to/release/wsgate]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "${1:-target/release/wsgate}")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "packaging: FAIL: $*" >&2; exit 1; }

# 1. `systemd-analyze verify` exits 0 even on unknown keys, so any output is a failure. It
#    needs the ExecStart= binary: check a copy pointing at the built one (--man=no: the
#    Documentation=man: page is only installed by the package).
for unit in wsgate.service wsgate.socket; do
  sed "s#/usr/bin/wsgate#$BIN#g" "systemd/$unit" > "$tmp/$unit"
done
out=$(cd "$tmp" && systemd-analyze verify --man=no wsgate.service wsgate.socket 2>&1) || fail "verify exited non-zero: $out"
[ -z "$out" ] || fail "systemd-analyze verify printed:
$out"
echo "packaging: systemd-analyze verify: clean"

# 2. Exposure score at most 2.0 (the threshold is on the internal 0-100 scale).
systemd-analyze security --offline=yes --threshold=20 "$tmp/wsgate.service" > "$tmp/security.txt" 2>&1 \
  || { cat "$tmp/security.txt"; fail "systemd-analyze security above 2.0"; }
echo "packaging: $(grep -o 'Overall exposure level.*' "$tmp/security.txt")"

# 3. The .deb (cargo-deb, man page from clap_mangen).
packaging/build-deb.sh --output "$tmp/deb" >/dev/null
deb=$(ls "$tmp"/deb/wsgate_*.deb)
echo "packaging: built $(basename "$deb")"
dpkg-deb --contents "$deb" | awk '{print "  " $NF}'
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/wsgate/wsgate.toml \
  || fail "/etc/wsgate/wsgate.toml is not a conffile"
for path in ./usr/bin/wsgate ./usr/lib/systemd/system/wsgate.service ./usr/lib/systemd/system/wsgate.socket \
            ./usr/share/man/man8/wsgate.8.gz ./usr/share/doc/wsgate/copyright ./usr/share/doc/wsgate/changelog.Debian.gz; do
  dpkg-deb --contents "$deb" | awk '{print $NF}' | grep -qx "$path" || fail "$path missing from the package"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst | grep -q 'adduser --system' || fail "postinst does not create the user"

# 4. lintian: no errors, no warnings (initial-upload-closes-no-bugs is archive noise).
lintian --fail-on error,warning --suppress-tags initial-upload-closes-no-bugs "$deb" || fail "lintian"
echo "packaging: lintian: no errors or warnings"

# 5. The packaged binary validates the packaged configuration.
dpkg-deb -x "$deb" "$tmp/root"
"$tmp/root/usr/bin/wsgate" check --config "$tmp/root/etc/wsgate/wsgate.toml" || fail "packaged wsgate check"
man -l "$tmp/root/usr/share/man/man8/wsgate.8.gz" 2>/dev/null | grep -q 'wsgate' || fail "man page does not render"
echo "packaging: OK"
