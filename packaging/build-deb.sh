#!/usr/bin/env bash
# Builds the Debian package: release binary, man page (rendered by the binary itself with
# clap_mangen: `wsgate man`), then cargo-deb. Output: target/debian/wsgate_<version>_<arch>.deb
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || { echo "build-deb: cargo-deb missing (scripts/install-test-deps installs it)" >&2; exit 1; }
cargo build --release --locked
mkdir -p target/man
target/release/wsgate man | gzip -9n > target/man/wsgate.8.gz
# Stripped binary in the .deb, its debug symbols in wsgate-dbgsym (.ddeb), as Debian does.
cargo deb --no-build --locked --dbgsym "$@"
