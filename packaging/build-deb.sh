#!/bin/sh
# Builds the Debian package, target/debian/ctsentry_<version>-1_<arch>.deb (cargo-deb, release
# build). The installed config /etc/ctsentry/ctsentry.toml is config/ctsentry.toml with the
# installed layout's paths (DESIGN.md): folders under /var/lib/ctsentry, the model under
# /usr/share/ctsentry/models. The OpenVINO runtime the CPU engine loads (the C API, the CPU
# plugin, the ONNX reader and oneTBB, with their licences) is taken from the PyPI wheel `openvino`
# into /usr/lib/ctsentry/openvino, where the engine looks first. Extra arguments go to `cargo deb`.
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
ov=target/package/openvino
if [ ! -e "$ov/libopenvino_c.so" ]; then
    rm -rf "$ov" target/package/wheel && mkdir -p "$ov" target/package/wheel
    python3 -m pip download -q --no-deps --only-binary=:all: "openvino>=2025.1" -d target/package/wheel
    (cd target/package/wheel && python3 -m zipfile -e openvino-*.whl .)
    lib=target/package/wheel/openvino/libs
    for f in libopenvino_c.so.* libopenvino.so.* libopenvino_intel_cpu_plugin.so libopenvino_onnx_frontend.so.* libtbb.so.12; do
        cp "$lib"/$f "$ov/"
    done
    cp target/package/wheel/openvino-*.dist-info/licenses/LICENSE "$ov/LICENSE"
    cp target/package/wheel/openvino-*.dist-info/licenses/licensing/*third-party-programs.txt "$ov/"
    # The name the engine looks for, beside the versioned one the loader resolves.
    ln -sf "$(cd "$ov" && ls libopenvino_c.so.* | head -1)" "$ov/libopenvino_c.so"
    rm -rf target/package/wheel
fi
if ! cargo deb --version >/dev/null 2>&1; then
    cargo install --locked cargo-deb --version "^3" >&2
fi
cargo deb "$@"
