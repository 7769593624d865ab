#!/usr/bin/env bash
# Builds halloc's Debian packages with dpkg-deb:
#
#   halloc_<version>_amd64.deb     hallocd, hallocctl, libhalloc.so.0 with its
#                                  headers and halloc.pc, the systemd units,
#                                  the sysusers.d entry for group `halloc` and
#                                  user `hallocd`, the udev rule giving the
#                                  device nodes to group `hallocd`, the
#                                  example policy as /etc/halloc/policy.textproto
#                                  (a conffile), the API's .proto files
#   halloc-dkms_<version>_all.deb  kernel/ as /usr/src/halloc-<version>/ for DKMS
#
# Usage: tools/package.sh [OUTDIR]      (default: dist/)
# Prints the two paths. Depends: are the Debian packages that own the shared
# libraries the binaries load (as installed here, at least that version).
set -euo pipefail
# dpkg-deb keeps the staged files' modes: under a builder's umask 0000 the
# generated dkms.conf (which dkms sources as root) and halloc.pc would ship
# world-writable.
umask 022

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/dist}"
cd "$ROOT"

# 0.1.0 + the commit count and hash: increases with every commit on main.
VERSION="0.1.0+git$(git rev-list --count HEAD 2>/dev/null || echo 0).$(git rev-parse --short=8 HEAD 2>/dev/null || echo local)"
ARCH="$(dpkg --print-architecture)"
MULTIARCH="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)"

bazel build -c opt --noshow_progress --ui_event_filters=-info,-stdout,-stderr \
  //service:hallocd //clients/cli:hallocctl //clients/cpp:libhalloc.so \
  //proto:allocator_cc_grpc
BIN="$(bazel info -c opt bazel-bin 2>/dev/null)"

STAGE="$(mktemp -d /tmp/halloc-package-XXXXXX)"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$OUT"

# --- halloc ------------------------------------------------------------------
P="$STAGE/halloc"
install -D -m 0755 "$BIN/service/hallocd" "$P/usr/bin/hallocd"
install -D -m 0755 "$BIN/clients/cli/hallocctl" "$P/usr/bin/hallocctl"
install -D -m 0644 "$BIN/clients/cpp/libhalloc.so" "$P/usr/lib/$MULTIARCH/libhalloc.so.0"
strip --strip-unneeded "$P/usr/bin/hallocd" "$P/usr/bin/hallocctl" "$P/usr/lib/$MULTIARCH/libhalloc.so.0"
ln -s libhalloc.so.0 "$P/usr/lib/$MULTIARCH/libhalloc.so"
for unit in hallocd.service hallocd.socket hallocd-broker.socket; do
  install -D -m 0644 "service/systemd/$unit" "$P/lib/systemd/system/$unit"
done
install -D -m 0644 service/systemd/halloc.sysusers.conf "$P/usr/lib/sysusers.d/halloc.conf"
install -D -m 0644 service/systemd/75-halloc.rules "$P/usr/lib/udev/rules.d/75-halloc.rules"
# Root alone: rules by uid are this machine's own (the example's uid 1001
# is another account on every machine); the example is documentation.
install -D -m 0644 service/policy/default.textproto "$P/etc/halloc/policy.textproto"
install -D -m 0644 service/policy/example.textproto \
  "$P/usr/share/doc/halloc/examples/policy.textproto"
# Headers as libhalloc's users include them (-I/usr/include/halloc):
# "clients/cpp/halloc/client.h", and libhalloc's base it includes.
INC="$P/usr/include/halloc"
for h in clients/cpp/halloc/client.h clients/cpp/halloc/base/*.h; do
  install -D -m 0644 "$h" "$INC/$h"
done
for h in allocator.pb.h allocator.grpc.pb.h types.pb.h; do
  install -D -m 0644 "$BIN/proto/halloc/v1/$h" "$INC/halloc/v1/$h"
done
for p in proto/halloc/v1/*.proto; do
  install -D -m 0644 "$p" "$P/usr/share/halloc/$p"
done
install -d "$P/usr/lib/$MULTIARCH/pkgconfig"
cat >"$P/usr/lib/$MULTIARCH/pkgconfig/halloc.pc" <<PC
prefix=/usr
includedir=\${prefix}/include/halloc
libdir=\${prefix}/lib/$MULTIARCH

Name: halloc
Description: C++ client of hallocd, the halloc buffer allocator
Version: $VERSION
Requires: grpc++ protobuf absl_statusor absl_time
Cflags: -I\${includedir}
Libs: -L\${libdir} -lhalloc
PC
install -D -m 0644 README.md "$P/usr/share/doc/halloc/README.md"

# Depends: the packages owning every shared library the binaries load.
depends() {
  local lib pkgs=()
  while read -r lib; do
    local real; real="$(readlink -f "$lib")"
    local pkg; pkg="$(dpkg -S "$real" 2>/dev/null | head -1 | cut -d: -f1)" || true
    [[ -z "$pkg" ]] && pkg="$(dpkg -S "$lib" 2>/dev/null | head -1 | cut -d: -f1)" || true
    [[ -n "$pkg" ]] && pkgs+=("$pkg")
  done < <(ldd "$@" | awk '/=> \// {print $3}' | sort -u)
  local out=() p
  for p in $(printf '%s\n' "${pkgs[@]}" | sort -u); do
    out+=("$p (>= $(dpkg-query -W -f='${Version}' "$p"))")
  done
  local IFS=','
  echo "${out[*]}" | sed 's/,/, /g'
}
# adduser: postinst's addgroup and adduser where systemd-sysusers is not there;
# init-system-helpers: deb-systemd-helper and deb-systemd-invoke.
# acl: the udev rule's setfacl (/dev/udmabuf for user hallocd).
DEPS="$(depends "$P/usr/bin/hallocd" "$P/usr/bin/hallocctl" "$P/usr/lib/$MULTIARCH/libhalloc.so.0"), adduser, init-system-helpers, acl"

install -d "$P/DEBIAN"
cat >"$P/DEBIAN/control" <<CONTROL
Package: halloc
Version: $VERSION
Architecture: $ARCH
Maintainer: halloc developers <halloc@localhost>
Section: admin
Priority: optional
Depends: $DEPS
Recommends: halloc-dkms
Installed-Size: $(du -sk "$P" | cut -f1)
Description: buffer allocator daemon for graphics and camera (like Android's allocator HAL)
 hallocd hands out dma-buf (or memfd) buffers to clients over Unix sockets,
 enforcing per client who may import a buffer, which devices may attach it
 and whether the CPU may touch it. Started on demand by systemd socket
 activation; members of group halloc may connect. Includes hallocctl and
 the C++ client library libhalloc with its headers.
CONTROL
echo /etc/halloc/policy.textproto >"$P/DEBIAN/conffiles"
# Socket activation as debhelper's dh_installsystemd sets it up, with
# deb-systemd-helper: on at a first install and after a remove and
# reinstall; an upgrade or reinstall keeps what the administrator chose; a
# running hallocd is left alone (restarting it ends every client's session).
cat >"$P/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
UNITS="hallocd.socket hallocd-broker.socket"
if [ "$1" = configure ]; then
  # The group that may connect and the user hallocd runs as
  # (sysusers.d/halloc.conf says the same).
  if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers halloc.conf || true
  fi
  getent group halloc >/dev/null || addgroup --system halloc >/dev/null
  getent passwd hallocd >/dev/null ||
    adduser --system --group --no-create-home --home /nonexistent --shell /usr/sbin/nologin \
      --gecos "halloc buffer allocator daemon" hallocd >/dev/null
  # Nodes made before the udev rule was there (the module loaded first) get
  # its group now.
  if [ -d /run/udev ] && command -v udevadm >/dev/null 2>&1; then
    udevadm control --reload >/dev/null 2>&1 || true
    udevadm trigger --action=change --subsystem-match=dma_heap >/dev/null 2>&1 || true
    udevadm trigger --action=change --subsystem-match=misc --sysname-match='halloc*' \
      --sysname-match=udmabuf >/dev/null 2>&1 || true
  fi
  # An upgrade from a root hallocd: systemd set the sockets' owner when it
  # made them (SocketUser= then root), and a restart does not remake them.
  # hallocd's own probe of them (the watchdog) needs them its user's.
  for s in /run/halloc/control.sock /run/halloc/broker.sock; do
    if [ -S "$s" ] && [ "$(stat -c %U "$s")" = root ]; then chown hallocd "$s"; fi
  done
fi
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] ||
   [ "$1" = abort-remove ]; then
  for unit in $UNITS; do
    # Only the masks deb-systemd-helper made at removal go.
    deb-systemd-helper unmask "$unit" >/dev/null || true
    # was-enabled is true for a unit it never saw: a first install enables.
    if deb-systemd-helper --quiet was-enabled "$unit"; then
      deb-systemd-helper enable "$unit" >/dev/null || true
    else
      deb-systemd-helper update-state "$unit" >/dev/null || true
    fi
  done
  if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    for unit in $UNITS; do
      if systemctl --quiet is-enabled "$unit"; then
        deb-systemd-invoke start "$unit" >/dev/null || true
      fi
    done
  fi
fi
# An upgrade leaves a running hallocd on the old binary and unit (a restart
# ends every client's session, so it is the administrator's call): say so.
if [ "$1" = configure ] && [ -n "$2" ] && command -v systemctl >/dev/null 2>&1 &&
   systemctl --quiet is-active hallocd.service 2>/dev/null; then
  echo "halloc: hallocd was started before this install and runs what it found then;" \
    "restart it (systemctl restart hallocd.service: its clients' sessions end) to apply it" >&2
fi
SH
cat >"$P/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  deb-systemd-invoke stop hallocd.socket hallocd-broker.socket hallocd.service >/dev/null || true
fi
SH
cat >"$P/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
UNITS="hallocd.socket hallocd-broker.socket"
if [ -d /run/systemd/system ]; then systemctl --system daemon-reload >/dev/null || true; fi
if [ -x /usr/bin/deb-systemd-helper ]; then
  # Removed: its enablement is remembered for a reinstall; purged: forgotten.
  if [ "$1" = remove ]; then deb-systemd-helper mask $UNITS >/dev/null || true; fi
  if [ "$1" = purge ]; then
    deb-systemd-helper purge $UNITS >/dev/null || true
    deb-systemd-helper unmask $UNITS >/dev/null || true
  fi
fi
# The group and the user stay on purge (files elsewhere may still belong to
# them), as Debian's policy asks of system users and groups.
SH
chmod 0755 "$P/DEBIAN/postinst" "$P/DEBIAN/prerm" "$P/DEBIAN/postrm"
DEB="$OUT/halloc_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$P" "$DEB" >/dev/null

# --- halloc-dkms ---------------------------------------------------------------
D="$STAGE/halloc-dkms"
SRC="$D/usr/src/halloc-$VERSION"
install -d "$SRC/uapi"
# The module's sources: kernel/ of a checkout that built the module also
# holds kbuild's output (halloc_heap.mod.c among it), which must not ship.
KSRC=()
for f in kernel/*.c; do
  [[ $f == *.mod.c || $f == kernel/uapi_test.c ]] || KSRC+=("$f")
done
install -m 0644 kernel/Kbuild kernel/Makefile "${KSRC[@]}" kernel/halloc.h "$SRC/"
install -m 0644 kernel/uapi/halloc_heap.h "$SRC/uapi/"
sed "s/@VERSION@/$VERSION/" kernel/dkms.conf >"$SRC/dkms.conf"
# Loaded at boot (systemd-modules-load, before any socket): hallocd's unit
# allows the module's nodes only if they exist when it starts, and the
# sockets start it at the first connection. On a kernel DKMS could not
# build for (no headers), systemd-modules-load logs that it is missing.
install -d "$D/usr/lib/modules-load.d"
echo halloc_heap >"$D/usr/lib/modules-load.d/halloc.conf"
chmod 0644 "$D/usr/lib/modules-load.d/halloc.conf"
install -d "$D/DEBIAN"
cat >"$D/DEBIAN/control" <<CONTROL
Package: halloc-dkms
Version: $VERSION
Architecture: all
Maintainer: halloc developers <halloc@localhost>
Section: kernel
Priority: optional
Depends: dkms
Installed-Size: $(du -sk "$D" | cut -f1)
Description: halloc_heap.ko, halloc's dma-buf exporter, built by DKMS
 The kernel side of halloc: heaps whose dma-bufs carry per-client views
 (CPU and attach rights enforced by the kernel). DKMS builds it for every
 installed kernel that has its headers.
CONTROL
cat >"$D/DEBIAN/postinst" <<SH
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
  dkms add -m halloc -v $VERSION >/dev/null 2>&1 || true
  # Built for each kernel whose headers are installed; a kernel without
  # them is skipped (dkms builds it when they arrive).
  for build in /lib/modules/*/build; do
    [ -d "\$build" ] || continue
    kver=\$(basename "\$(dirname "\$build")")
    dkms install -m halloc -v $VERSION -k "\$kver" || \
      echo "halloc-dkms: could not build for \$kver (see dkms status)" >&2
  done
fi
SH
cat >"$D/DEBIAN/prerm" <<SH
#!/bin/sh
set -e
dkms remove -m halloc -v $VERSION --all >/dev/null 2>&1 || true
SH
chmod 0755 "$D/DEBIAN/postinst" "$D/DEBIAN/prerm"
DKMS_DEB="$OUT/halloc-dkms_${VERSION}_all.deb"
dpkg-deb --root-owner-group -Zxz --build "$D" "$DKMS_DEB" >/dev/null

echo "$DEB"
echo "$DKMS_DEB"
