#!/bin/sh
# Builds the Debian package, target/debian/ctsentry_<version>-1_<arch>.deb (cargo-deb, release
# build). The installed config /etc/ctsentry/ctsentry.toml is config/ctsentry.toml with the
# installed layout's paths (DESIGN.md): folders under /var/lib/ctsentry, the model under
# /usr/share/ctsentry/models. Extra arguments go to `cargo deb`.
set -eu
cd "$(dirname "$0")/.."
mkdir -p target/package
sed -e 's|"\.\./var/|"/var/lib/ctsentry/|' \
    -e 's|"\.\./models/|"/usr/share/ctsentry/models/|' \
    -e 's|^# Check a file with: .*|# Check a file with:   ctsentry check-config --deep /etc/ctsentry/ctsentry.toml|' \
    -e 's|(here: config/)|(here: /etc/ctsentry/)|' \
    config/ctsentry.toml > target/package/ctsentry.toml
if grep -q '"\.\./' target/package/ctsentry.toml; then
    echo "build-deb: a relative path is left in the installed config" >&2
    exit 1
fi
if ! cargo deb --version >/dev/null 2>&1; then
    cargo install --locked cargo-deb --version "^3" >&2
fi
cargo deb "$@"
