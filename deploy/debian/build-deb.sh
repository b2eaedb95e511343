#!/usr/bin/env bash
# Builds edge-node's Debian package from a built binary, with dpkg-deb alone (no
# debhelper): the binary, the systemd unit (run as the dedicated user `edge-node`, with
# only the capabilities XDP needs), the example config as /etc/edge-node/edge-node.toml
# (a conffile: upgrades keep an operator's edits) and the README.
#
#   deploy/debian/build-deb.sh BINARY OUTDIR      # prints the path of the .deb
#
# `cargo xtask package` builds the release binary and calls this. EDGE_DEB_COMPRESSION
# (xz by default) is passed to dpkg-deb -Z; the tests use `none` for speed.
set -euo pipefail

bin=${1:?usage: build-deb.sh BINARY OUTDIR}
out=${2:?usage: build-deb.sh BINARY OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n1)
arch=$(dpkg --print-architecture)
[ -n "$version" ] || { echo "build-deb.sh: no version in Cargo.toml" >&2; exit 1; }
[ -x "$bin" ] || { echo "build-deb.sh: $bin is not an executable" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/edge-node_${version}_${arch}"

install -D -m 0755 "$bin" "$pkg/usr/bin/edge-node"
# Debug sections are for the build host (the BPF program rides in .rodata, untouched).
strip --strip-debug "$pkg/usr/bin/edge-node"
install -D -m 0640 "$repo/edge-node.example.toml" "$pkg/etc/edge-node/edge-node.toml"
install -D -m 0644 "$repo/README.md" "$pkg/usr/share/doc/edge-node/README.md"
install -D -m 0644 "$here/copyright" "$pkg/usr/share/doc/edge-node/copyright"

# The unit of deploy/, for the package's paths and its dedicated user. bpffs belongs to
# root and systemd mounts it 0700: before the start (the `+` runs as root) others may
# traverse it (not list it; every pin keeps its own mode) and the pin directory, with
# whatever an earlier root-run node pinned there, becomes the user's.
mkdir -p "$pkg/lib/systemd/system"
sed -e 's#/usr/local/bin/edge-node#/usr/bin/edge-node#g' \
    -e 's#file:///usr/local/share/doc/edge-node/README.md#file:///usr/share/doc/edge-node/README.md#' \
    -e '/^# edge-node as a systemd service. Install:/,/^# Reload the configuration/{/^# Reload the configuration/!d}' \
    -e 's#^\[Service\]$#[Service]\nUser=edge-node\nGroup=edge-node\nExecStartPre=+/bin/sh -c "chmod o+x /sys/fs/bpf \&\& install -d -o edge-node -g edge-node -m 0700 /sys/fs/bpf/edge-node \&\& chown -R edge-node:edge-node /sys/fs/bpf/edge-node"#' \
    "$repo/deploy/edge-node.service" > "$pkg/lib/systemd/system/edge-node.service"
sed -i '1i # edge-node as a systemd service, installed by its Debian package.\n# Start it: systemctl enable --now edge-node' "$pkg/lib/systemd/system/edge-node.service"
chmod 0644 "$pkg/lib/systemd/system/edge-node.service"

mkdir -p "$pkg/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: edge-node
Version: $version
Architecture: $arch
Maintainer: edge-node developers <edge-node@example.invalid>
Installed-Size: $size
Depends: libc6, passwd
Section: net
Priority: optional
Homepage: https://example.invalid/edge-node
Description: eBPF/XDP-accelerated edge server
 An HTTP/1.1, HTTP/2 and HTTP/3 reverse proxy with a cache, JWT auth, functions
 (WebAssembly), KV, rooms and GraphQL at the edge, whose shield drops abusive
 clients at the NIC with an XDP program.
CONTROL
echo /etc/edge-node/edge-node.toml > "$pkg/DEBIAN/conffiles"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$pkg/DEBIAN/"

mkdir -p "$out"
dpkg-deb --root-owner-group -Z"${EDGE_DEB_COMPRESSION:-xz}" --build "$pkg" "$out/" >/dev/null
echo "$out/edge-node_${version}_${arch}.deb"
