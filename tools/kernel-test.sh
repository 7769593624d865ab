#!/usr/bin/env bash
# Build halloc_heap.ko and its in-guest tests, boot Debian's own kernel in
# qemu (software emulation), load the module together with vgem and vivid,
# run the tests there, and judge the result on the host. The accelerator
# (KVM or TCG) is chosen and logged by tools/lib/qemu.sh.
#
#   tools/kernel-test.sh [--keep] [-- gtest args...]
#   tools/kernel-test.sh --bench-scale [--keep]
#   tools/kernel-test.sh --bench-kernel [--keep] [-- --quick]
#
# --bench-scale runs the benchmark's live-buffer scale rows in the guest
# instead of the tests (tests/bench, --only=scale): there root may raise
# RLIMIT_NOFILE past this host's hard limit, so 100k live buffers (one
# hallocd fd each) can be measured. Under TCG absolute times are slow; the
# ratios and the memory per buffer are what it is for.
#
# Also builds udmabuf.ko out of tree (Debian disables CONFIG_UDMABUF) from
# linux-source-6.1's drivers/dma-buf/udmabuf.c with the shims in
# tools/lib/udmabuf-6.1.patch, cached per kernel and source version, and
# loads it in the guest for the udmabuf backend's tests.
#
# --bench-kernel runs the module's own figures in the guest instead
# (//tests/kernel:kernel_bench: halloc-system vs vgem, warm vs cold pool,
# deferred first touch), each beside a floor from the same boot; it fails
# only when the benchmark reports a failed operation or the guest splats.
#
# Also builds vkms.ko out of tree (Debian disables CONFIG_DRM_VKMS) from
# linux-source-6.1's drivers/gpu/drm/vkms with the two fixes in
# tools/lib/vkms-6.1.patch (its writeback connector, a vblank deadlock), cached the same way,
# and loads it in the guest after drm_kms_helper and drm_shmem_helper with
# enable_writeback=1 enable_overlay=1 (the compositor tests' display).
#
# Also builds kernel/ through DKMS (kernel/dkms.conf, scratch trees) against
# the same headers: one more case, counted on the host.
#
# Fails when: the module build prints any compiler warning, a test fails or
# crashes, the guest's kernel log shows a splat (WARNING:, BUG:, Oops,
# general protection, lockdep, KASAN, refcount_t), or the run times out.
# The last line printed is always "kernel: N passed, N failed, N skipped".
#
# Environment:
#   HALLOC_KERNEL_CACHE  cache for the kernel image and runs
#                        (default ~/.cache/halloc/kernel)
#   HALLOC_QEMU_TIMEOUT  seconds before the guest is killed (default 240)
#   HALLOC_QEMU_ACCEL    auto (default: KVM only after a probe boot shows it
#                        works, else TCG), kvm or tcg; see tools/lib/qemu.sh
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${HALLOC_KERNEL_CACHE:-${XDG_CACHE_HOME:-${HOME:?}/.cache}/halloc/kernel}
QEMU_TIMEOUT=${HALLOC_QEMU_TIMEOUT:-}
TEST_TARGET=//tests/kernel:halloc_heap_guest_test
KEEP=0
BENCH_SCALE=0
BENCH_KERNEL=0
GTEST_ARGS=()
START=$(date +%s)

while (($#)); do
  case "$1" in
    --keep) KEEP=1 ;;
    --bench-scale) BENCH_SCALE=1 ;;
    --bench-kernel) BENCH_KERNEL=1 ;;
    --) shift; GTEST_ARGS=("$@"); break ;;
    *) echo "usage: $0 [--keep] [--bench-scale|--bench-kernel] [-- args...]" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[kernel-test %3ds] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
summary() { echo "kernel: $1 passed, $2 failed, $3 skipped"; }
die() { log "FAIL: $*"; summary 0 1 0; exit 1; }

# The tests take under a minute under TCG; the scale benchmark longer.
((BENCH_SCALE)) && QEMU_TIMEOUT=${QEMU_TIMEOUT:-1800}
((BENCH_KERNEL)) && QEMU_TIMEOUT=${QEMU_TIMEOUT:-600}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-240}
# When the guest shows its blocked tasks (before the host kills it).
WATCH_S=$((QEMU_TIMEOUT > 60 ? QEMU_TIMEOUT - 40 : QEMU_TIMEOUT / 2))

# --- packages --------------------------------------------------------------
# shellcheck source=tools/lib/apt.sh
source "$REPO/tools/lib/apt.sh"
apt_install qemu-system-x86 busybox-static linux-headers-amd64 kmod cpio linux-source-6.1 ||
  die "cannot install the kernel test's packages"
command -v bazel >/dev/null ||
  die "bazel is not installed: run tools/run kernel-test (it installs it)"

# The kernel the *installed* headers metapackage points at, e.g.
# 6.1.0-57-amd64 (not apt's candidate: apt_install never upgrades, so once
# Debian publishes a newer ABI the candidate's headers are not here).
installed_kver() {
  dpkg-query -W -f='${Depends}' linux-headers-amd64 2>/dev/null |
    grep -o 'linux-headers-[^ ,]*-amd64' | head -n1 | sed 's/^linux-headers-//'
}
KVER=$(installed_kver)
[[ -n $KVER ]] || die "cannot tell the kernel version from linux-headers-amd64"
[[ -d /usr/src/linux-headers-$KVER ]] || die "linux-headers-$KVER is not installed"

# --- kernel image ------------------------------------------------------------
# Fetched once per version and cached. Should the archive no longer serve
# the installed version's image (Debian moved to a newer ABI), the headers
# (and the source) are upgraded to apt's candidate, and that one is used.
fetch_image() {
  IMG=$CACHE/$KVER
  [[ -f $IMG/.complete ]] && return 0
  log "fetching linux-image-$KVER"
  rm -rf "$IMG" && mkdir -p "$IMG/root"
  # Each step checked here: called from `if` and `||`, this function runs
  # without set -e, and a half-extracted image marked complete would break
  # every later run until the cache was wiped.
  (cd "$IMG" && apt-get download -qq "linux-image-$KVER") || return 1
  dpkg-deb -x "$IMG"/linux-image-*.deb "$IMG/root" || die "cannot extract linux-image-$KVER"
  depmod -b "$IMG/root" "$KVER" || die "depmod for linux-image-$KVER failed"
  rm -f "$IMG"/linux-image-*.deb
  touch "$IMG/.complete"
}
if ! fetch_image; then
  log "linux-image-$KVER is not served: upgrading linux-headers-amd64 and linux-source-6.1"
  { apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y \
      linux-headers-amd64 linux-source-6.1; } >/dev/null ||
    die "cannot upgrade linux-headers-amd64"
  KVER=$(installed_kver)
  [[ -d /usr/src/linux-headers-$KVER ]] || die "linux-headers-$KVER is not installed"
  fetch_image || die "apt-get download linux-image-$KVER failed"
fi
VMLINUZ=$IMG/root/boot/vmlinuz-$KVER
MODROOT=$IMG/root/lib/modules/$KVER

# --- module ------------------------------------------------------------------
log "building halloc_heap.ko for $KVER"
BUILD_LOG=$(mktemp)
trap 'rm -f "$BUILD_LOG"' EXIT
if ! make -s -C "$REPO/kernel" KVER="$KVER" W=1 >"$BUILD_LOG" 2>&1; then
  cat "$BUILD_LOG" >&2
  die "module build failed"
fi
if grep -E 'warning:|error:' "$BUILD_LOG" | grep -v 'Skipping BTF' >&2; then
  die "module build printed warnings"
fi
KO=$REPO/kernel/halloc_heap.ko

# --- udmabuf.ko --------------------------------------------------------------
# Only drivers/dma-buf/udmabuf.c is taken from the source tarball, patched
# (not edited) with the shims, and built with kbuild against the same
# headers; no warning allowed. Cached under the kernel's cache dir, keyed by
# the source package's version and the patch.
UDMABUF_PATCH=$REPO/tools/lib/udmabuf-6.1.patch
UDMABUF_TAR=/usr/src/linux-source-6.1.tar.xz
[[ -f $UDMABUF_TAR ]] || die "$UDMABUF_TAR is missing (package linux-source-6.1)"
UDMABUF_SRCVER=$(dpkg-query -W -f='${Version}' linux-source-6.1)
UDMABUF_DIR=$IMG/udmabuf-$UDMABUF_SRCVER-$(sha256sum "$UDMABUF_PATCH" | cut -c1-12)
UDMABUF_KO=$UDMABUF_DIR/udmabuf.ko
if [[ ! -f $UDMABUF_DIR/.complete ]]; then
  log "building udmabuf.ko from linux-source-6.1 $UDMABUF_SRCVER for $KVER"
  rm -rf "$UDMABUF_DIR" && mkdir -p "$UDMABUF_DIR"
  tar -xJf "$UDMABUF_TAR" -C "$UDMABUF_DIR" --strip-components=3 \
    linux-source-6.1/drivers/dma-buf/udmabuf.c ||
    die "cannot extract drivers/dma-buf/udmabuf.c from $UDMABUF_TAR"
  (cd "$UDMABUF_DIR" && patch -s --forward --batch -p3 <"$UDMABUF_PATCH") >"$BUILD_LOG" 2>&1 || {
    cat "$BUILD_LOG" >&2
    die "tools/lib/udmabuf-6.1.patch does not apply to udmabuf.c of $UDMABUF_SRCVER"
  }
  echo 'obj-m := udmabuf.o' >"$UDMABUF_DIR/Kbuild"
  if ! make -s -C "/usr/src/linux-headers-$KVER" M="$UDMABUF_DIR" W=1 modules \
       >"$BUILD_LOG" 2>&1; then
    cat "$BUILD_LOG" >&2
    die "udmabuf.ko build failed"
  fi
  if grep -E 'warning:|error:' "$BUILD_LOG" | grep -v 'Skipping BTF' >&2; then
    die "udmabuf.ko build printed warnings"
  fi
  touch "$UDMABUF_DIR/.complete"
fi
[[ -f $UDMABUF_KO ]] || die "no udmabuf.ko in $UDMABUF_DIR"

# --- vkms.ko -----------------------------------------------------------------
# drivers/gpu/drm/vkms from the source tarball, patched (not edited) with
# tools/lib/vkms-6.1.patch, built with its own Makefile (CONFIG_DRM_VKMS=m)
# against the same headers. Not W=1: that only adds kernel-doc complaints
# about upstream comments; any compiler warning still fails. Cached under
# the kernel's cache dir, keyed by the source version and the patch.
VKMS_PATCH=$REPO/tools/lib/vkms-6.1.patch
VKMS_DIR=$IMG/vkms-$UDMABUF_SRCVER-$(sha256sum "$VKMS_PATCH" | cut -c1-12)
VKMS_KO=$VKMS_DIR/vkms.ko
if [[ ! -f $VKMS_DIR/.complete ]]; then
  log "building vkms.ko from linux-source-6.1 $UDMABUF_SRCVER for $KVER"
  rm -rf "$VKMS_DIR" && mkdir -p "$VKMS_DIR"
  tar -xJf "$UDMABUF_TAR" -C "$VKMS_DIR" --strip-components=5 \
    linux-source-6.1/drivers/gpu/drm/vkms ||
    die "cannot extract drivers/gpu/drm/vkms from $UDMABUF_TAR"
  (cd "$VKMS_DIR" && patch -s --forward --batch -p5 <"$VKMS_PATCH") >"$BUILD_LOG" 2>&1 || {
    cat "$BUILD_LOG" >&2
    die "tools/lib/vkms-6.1.patch does not apply to vkms of $UDMABUF_SRCVER"
  }
  if ! make -s -C "/usr/src/linux-headers-$KVER" M="$VKMS_DIR" CONFIG_DRM_VKMS=m modules \
       >"$BUILD_LOG" 2>&1; then
    cat "$BUILD_LOG" >&2
    die "vkms.ko build failed"
  fi
  if grep -E 'warning:|error:' "$BUILD_LOG" | grep -v 'Skipping BTF' >&2; then
    die "vkms.ko build printed warnings"
  fi
  touch "$VKMS_DIR/.complete"
fi
[[ -f $VKMS_KO ]] || die "no vkms.ko in $VKMS_DIR"

# --- DKMS --------------------------------------------------------------------
# kernel/dkms.conf as a user's `dkms build` reads it (the halloc-dkms package
# installs the same tree), against the same headers, in scratch trees:
# nothing is registered with this machine's DKMS. One host-side case.
dkms_passed=0 dkms_failed=0
if ! command -v dkms >/dev/null; then
  die "dkms is not installed (tools/run installs it)"
fi
DKMS_DIR=$(mktemp -d)
DKMS_SRC=$DKMS_DIR/src/halloc-0.0.0
mkdir -p "$DKMS_SRC/uapi" "$DKMS_DIR/tree"
cp "$REPO"/kernel/{Kbuild,Makefile,halloc.h} "$REPO"/kernel/halloc_*.c "$DKMS_SRC/"
rm -f "$DKMS_SRC"/*.mod.c
cp "$REPO/kernel/uapi/halloc_heap.h" "$DKMS_SRC/uapi/"
sed 's/@VERSION@/0.0.0/' "$REPO/kernel/dkms.conf" >"$DKMS_SRC/dkms.conf"
log "dkms build of kernel/ for $KVER (scratch trees)"
if dkms add -m halloc -v 0.0.0 --sourcetree "$DKMS_DIR/src" --dkmstree "$DKMS_DIR/tree" \
     >"$DKMS_DIR/log" 2>&1 &&
   dkms build -m halloc -v 0.0.0 -k "$KVER" --sourcetree "$DKMS_DIR/src" \
     --dkmstree "$DKMS_DIR/tree" >>"$DKMS_DIR/log" 2>&1 &&
   compgen -G "$DKMS_DIR/tree/halloc/0.0.0/$KVER/*/module/halloc_heap.ko*" >/dev/null; then
  dkms_passed=1
else
  tail -n 30 "$DKMS_DIR/log" >&2
  log "FAIL: dkms build of kernel/ for $KVER"
  dkms_failed=1
fi
rm -rf "$DKMS_DIR"

# --- guest test binary -------------------------------------------------------
RUN=$(mktemp -d "$CACHE/run.XXXXXX")
RESULTS=$RUN/results
mkdir -p "$RESULTS" "$RUN/initramfs"
cleanup() {
  if [[ -n ${NMI_PID:-} ]]; then kill "$NMI_PID" 2>/dev/null || true; fi
  rm -f "$BUILD_LOG"
  if [[ -n ${MONITOR_DIR:-} ]]; then rm -rf "$MONITOR_DIR"; fi
  ((KEEP)) || rm -rf "$RUN"
}
trap cleanup EXIT

log "bazel build $TEST_TARGET"
(cd "$REPO" && bazel build -c opt "$TEST_TARGET" >"$RUN/bazel.log" 2>&1) || {
  tail -n 40 "$RUN/bazel.log" >&2
  die "bazel build $TEST_TARGET failed"
}
TEST_BIN=$(cd "$REPO" && readlink -f "bazel-bin/tests/kernel/halloc_heap_guest_test")
[[ -x $TEST_BIN ]] || die "no guest test binary at $TEST_BIN"
if ((BENCH_SCALE)); then
  log "bazel build -c opt //tests/bench:halloc_bench //service:hallocd"
  (cd "$REPO" && bazel build -c opt //tests/bench:halloc_bench //service:hallocd \
     >"$RUN/bazel.log" 2>&1) || { tail -n 40 "$RUN/bazel.log" >&2; die "bench build failed"; }
  OPT_BIN=$(cd "$REPO" && bazel info -c opt bazel-bin 2>/dev/null)
  BENCH_BIN=$OPT_BIN/tests/bench/halloc_bench
  HALLOCD_BIN=$OPT_BIN/service/hallocd
fi
if ((BENCH_KERNEL)); then
  log "bazel build -c opt //tests/kernel:kernel_bench"
  (cd "$REPO" && bazel build -c opt //tests/kernel:kernel_bench >"$RUN/bazel.log" 2>&1) ||
    { tail -n 40 "$RUN/bazel.log" >&2; die "kernel_bench build failed"; }
  KBENCH_BIN=$(cd "$REPO" && bazel info -c opt bazel-bin 2>/dev/null)/tests/kernel/kernel_bench
fi

# --- initramfs ---------------------------------------------------------------
# Modules the guest needs, in load order (dependencies first).
# vkms.ko is not in the image's module tree: its dependencies are named here.
MODULES=(9pnet_virtio 9p virtio_pci vgem vivid drm drm_kms_helper drm_shmem_helper)
declare -A seen=()
INSMODS=()
for m in "${MODULES[@]}"; do
  deps=$(modprobe -d "$IMG/root" -S "$KVER" --show-depends "$m") ||
    die "linux-image-$KVER has no module $m"
  while read -r _ path _; do
    [[ -n ${seen[$path]:-} ]] && continue
    seen[$path]=1
    cp "$path" "$RUN/initramfs/"
    INSMODS+=("$(basename "$path")")
  done < <(grep '^insmod ' <<<"$deps")
done

VIVID_PARAMS="n_devs=1 node_types=0x1"
VKMS_PARAMS="enable_writeback=1 enable_overlay=1"
VIVID_KO=$(modprobe -d "$IMG/root" -S "$KVER" --show-depends vivid | awk '/vivid\.ko/ {print $2}')
# The tests reload these three. The guest mounts a fresh tmpfs on the host's
# /tmp (tests need a writable one), which hides a checkout or cache under
# /tmp; the results share is mounted after it, so they go there.
mkdir -p "$RESULTS/mods"
cp "$KO" "$VIVID_KO" "$UDMABUF_KO" "$RESULTS/mods/"
GUEST_KO=$RESULTS/mods/halloc_heap.ko
GUEST_VIVID_KO=$RESULTS/mods/$(basename "$VIVID_KO")
IR=$RUN/initramfs
mkdir -p "$IR"/{bin,dev,proc,sys,host,mods}
mv "$IR"/*.ko "$IR/mods/"
cp /bin/busybox "$IR/bin/busybox"
{
  echo '#!/bin/busybox sh'
  echo '/bin/busybox --install -s /bin'
  echo 'export PATH=/bin'
  echo 'mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev'
  echo 'mount -t debugfs debugfs /sys/kernel/debug'
  echo 'echo 5 > /proc/sys/kernel/printk'
  for m in "${INSMODS[@]}"; do
    params=
    [[ $m == vivid.ko ]] && params=$VIVID_PARAMS
    echo "insmod /mods/$m $params || echo 'HARNESS: insmod $m failed'"
  done
  echo "insmod /mods/halloc_heap.ko || echo 'HARNESS: insmod halloc_heap.ko failed'"
  echo "insmod /mods/udmabuf.ko || echo 'HARNESS: insmod udmabuf.ko failed'"
  echo "insmod /mods/vkms.ko $VKMS_PARAMS || echo 'HARNESS: insmod vkms.ko failed'"
  q() { printf '%q' "$1"; }
  GTEST_Q=
  ((${#GTEST_ARGS[@]})) && GTEST_Q=$(printf ' %q' "${GTEST_ARGS[@]}")
  # What the guest runs, with its output in $R/test.log ($H: the host's
  # root, $R: the results share; expanded in the guest).
  ENV='/usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp'
  if ((BENCH_SCALE)); then
    GUEST_RUN="ulimit -n 1048576 || echo 'HARNESS: ulimit -n failed'
chroot \$H $ENV $(q "$BENCH_BIN") run --hallocd=$(q "$HALLOCD_BIN") --only=scale >\"\$R/test.log\" 2>&1"
  elif ((BENCH_KERNEL)); then
    GUEST_RUN="chroot \$H $ENV $(q "$KBENCH_BIN")$GTEST_Q >\"\$R/test.log\" 2>&1"
  else
    GUEST_RUN="chroot \$H $ENV HALLOC_KO=$(q "$GUEST_KO") VIVID_KO=$(q "$GUEST_VIVID_KO") VIVID_PARAMS=$(q "$VIVID_PARAMS") UDMABUF_KO=$(q "$RESULTS/mods/udmabuf.ko") HALLOC_RESULTS=$(q "$RESULTS") $(q "$TEST_BIN") --gtest_output=xml:$(q "$RESULTS/gtest.xml")$GTEST_Q >\"\$R/test.log\" 2>&1"
  fi
  cat <<EOF
H=/host
R=\$H$(q "$RESULTS")
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot \$H || echo 'HARNESS: 9p mount failed'
mount -t proc proc \$H/proc
mount -t sysfs sysfs \$H/sys
mount -t debugfs debugfs \$H/sys/kernel/debug
mount -t devtmpfs devtmpfs \$H/dev
mount -t tmpfs tmpfs \$H/tmp
mkdir -p "\$R" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=262144 results "\$R" || echo 'HARNESS: results mount failed'
# Shortly before the host gives up on the guest, where each process waits
# in the kernel goes to the console (a hang then says where it hangs): the
# kernel stack of every user process, then sysrq-w (tasks in D state).
( sleep $WATCH_S; echo 'HARNESS: tests still running after ${WATCH_S}s; where each process waits:'
  for p in /proc/[0-9]*/task/[0-9]*; do
    [ -e \$p/exe ] || continue
    echo "-- task \${p#/proc/} \$(cat \$p/comm) \$(grep State: \$p/status)"
    cat \$p/stack
  done 2>/dev/null
  echo 8 > /proc/sys/kernel/printk; echo w > /proc/sysrq-trigger; sleep 1
  echo 5 > /proc/sys/kernel/printk ) &
echo 'HARNESS: running tests'
$GUEST_RUN
echo \$? > "\$R/rc"
cat /sys/kernel/debug/halloc/buffers > "\$R/buffers.txt" 2>&1
dmesg > "\$R/dmesg.txt"
sync
umount "\$R"
echo 'HARNESS: done'
poweroff -f
EOF
} >"$IR/init"
chmod +x "$IR/init"
cp "$KO" "$IR/mods/halloc_heap.ko"
cp "$UDMABUF_KO" "$IR/mods/udmabuf.ko"
cp "$VKMS_KO" "$IR/mods/vkms.ko"
(cd "$IR" && find . | cpio -o -H newc --quiet | gzip -1) >"$RUN/initramfs.cpio.gz"

# --- boot --------------------------------------------------------------------
# shellcheck source=tools/lib/qemu.sh
source "$REPO/tools/lib/qemu.sh"
qemu_choose_accel "$VMLINUZ" "$CACHE" || die "bad HALLOC_QEMU_ACCEL"
# What a silent first boot left behind, before booting again.
reset_results() {
  rm -f "$RESULTS/rc" "$RESULTS/gtest.xml" "$RESULTS"/*.txt "$RESULTS/test.log" "$RUN/nmi-sent"
}
# A guest still running 15 s before the timeout gets an NMI through qemu's
# monitor; booted with unknown_nmi_panic=1, it panics and prints where the
# CPU that took it was. That is all a guest frozen with interrupts off can
# say (both CPUs spinning on each other's lock: no watchdog line, no
# sysrq, no hung-task or RCU report), as vkms's vblank deadlock once did.
# Under /tmp: a socket path must fit in 108 bytes, which $RUN may not.
MONITOR_DIR=$(mktemp -d /tmp/halloc-qemu.XXXXXX)
MONITOR=$MONITOR_DIR/monitor
NMI_AFTER=$((QEMU_TIMEOUT > 30 ? QEMU_TIMEOUT - 15 : QEMU_TIMEOUT / 2))
nmi_before_timeout() {
  # In steps of a second (killed once qemu exits, it leaves no sleep behind
  # holding the caller's output open), counted from the monitor socket's
  # making: a guest booted again (KVM to TCG) makes a new one.
  local made sent=
  while sleep 1; do
    made=$(stat -c %Y "$MONITOR" 2>/dev/null) || continue
    [[ $made == "$sent" ]] && continue  # sent to this boot already
    (($(date +%s) - made >= NMI_AFTER)) || continue
    sent=$made
    nmi_send
  done
}
nmi_send() {
  grep -q 'HARNESS: done' "$RUN/console.log" 2>/dev/null && return
  log "the guest still runs ${NMI_AFTER}s after it booted; sending it an NMI (its panic says where a CPU was)"
  : >"$RUN/nmi-sent"
  python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"nmi\n")
time.sleep(1)' "$MONITOR" 2>/dev/null || log "could not reach qemu's monitor"
}
nmi_before_timeout &
NMI_PID=$!
log "booting $KVER in qemu ($QEMU_ACCEL, timeout ${QEMU_TIMEOUT}s)"
qemu_rc=0
qemu_boot "$RUN/console.log" "$QEMU_TIMEOUT" reset_results \
  -nodefaults -no-reboot -display none -monitor "unix:$MONITOR,server=on,wait=off" \
  -smp 2 -m 2G -machine pc,max-ram-below-4g=1G \
  -kernel "$VMLINUZ" -initrd "$RUN/initramfs.cpio.gz" \
  -append "console=ttyS0 panic=-1 loglevel=5 unknown_nmi_panic=1 rdinit=/init" \
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap,id=hostroot" \
  -virtfs "local,path=$RESULTS,mount_tag=results,security_model=none,id=results" \
  || qemu_rc=$?
log "guest exited under $QEMU_ACCEL (qemu status $qemu_rc)"
kill "$NMI_PID" 2>/dev/null; wait "$NMI_PID" 2>/dev/null || true

# What counts as a guest kernel splat (fails the tests and --bench-kernel).
SPLAT='WARNING:|BUG:|Oops|general protection|lockdep|possible circular locking|KASAN|refcount_t|Kernel panic'
if ((BENCH_SCALE || BENCH_KERNEL)); then
  cat "$RESULTS/test.log" 2>/dev/null || tail -n 40 "$RUN/console.log" >&2
  bench_rc=$(cat "$RESULTS/rc" 2>/dev/null || echo "none (the guest did not finish)")
  log "the benchmark in the guest exited with $bench_rc"
  if ((BENCH_KERNEL)) && grep -Eh -B2 -A25 "$SPLAT" "$RESULTS/dmesg.txt" "$RUN/console.log" >&2 2>/dev/null; then
    log "FAIL: guest kernel log has a splat"; exit 1
  fi
  [[ $bench_rc == 0 ]]
  exit
fi

# --- verdict -----------------------------------------------------------------
failed_why=()
((qemu_rc == 124 || qemu_rc == 137)) && failed_why+=("guest timed out after ${QEMU_TIMEOUT}s")
[[ -f $RUN/nmi-sent ]] && failed_why+=("guest timed out: still running ${NMI_AFTER}s after it booted (sent an NMI)")
[[ -f $RESULTS/rc ]] || failed_why+=("guest never finished the tests")
if [[ -f $RESULTS/rc && $(cat "$RESULTS/rc") != 0 ]]; then
  failed_why+=("test binary exited $(cat "$RESULTS/rc")")
fi
# The guest's dmesg when it got that far, and the serial console always
# (it is all there is when the guest hung or panicked).
DMESG=$RESULTS/dmesg.txt
[[ -f $DMESG ]] || DMESG=$RUN/console.log
if grep -Eq "$SPLAT" "$DMESG" "$RUN/console.log"; then
  failed_why+=("guest kernel log has a splat")
fi
# A module the guest could not load, or a share it could not mount: the
# tests that need it would only skip.
if grep -Eq 'HARNESS: .*failed' "$RUN/console.log"; then
  failed_why+=("$(grep -Eo 'HARNESS: .*failed' "$RUN/console.log" | sort -u | paste -sd ';' -)")
fi

# Count gtest test cases from the XML report: one <testcase> per test, with
# <failure> children when it failed and result="skipped" when skipped.
read -r passed failed skipped < <(
  awk '
    /<testcase / { open_tc = 1; bad = 0; skip = ($0 ~ /result="skipped"/)
                   if ($0 ~ /\/>[[:space:]]*$/) { open_tc = 0; skip ? s++ : p++ } next }
    open_tc && /<failure/ { bad = 1 }
    open_tc && /<\/testcase>/ { open_tc = 0; if (bad) f++; else if (skip) s++; else p++ }
    END { printf "%d %d %d\n", p, f, s }
  ' "$RESULTS/gtest.xml" 2>/dev/null || echo "0 0 0"
)

# Name every failed or skipped test (skips carry their reason in the log).
if [[ -f $RESULTS/test.log ]]; then
  grep -E '^\[ +(FAILED|SKIPPED) +\] [A-Za-z]' "$RESULTS/test.log" | sort -u |
    sed 's/^/  guest: /' >&2 || true
fi
if ((failed > 0)); then failed_why+=("$failed test(s) failed"); fi
passed=$((passed + dkms_passed))
failed=$((failed + dkms_failed))
((dkms_failed)) && failed_why+=("dkms build failed")

if ((${#failed_why[@]})); then
  for w in "${failed_why[@]}"; do log "FAIL: $w"; done
  if [[ -f $RESULTS/test.log ]]; then
    log "---- test failures ----"
    grep -E -A8 ': Failure$|^\[  FAILED  \] [A-Za-z]' "$RESULTS/test.log" | head -n 100 >&2 || true
    log "---- test log (tail) ----"; tail -n 15 "$RESULTS/test.log" >&2
  fi
  log "---- guest kernel log (tail) ----"; tail -n 60 "$DMESG" >&2 || true
  if grep -q 'HARNESS: tests still running' "$RUN/console.log"; then
    log "---- where the guest's tasks waited (kernel stacks, sysrq-w, before the timeout) ----"
    sed -n '/HARNESS: tests still running/,$p' "$RUN/console.log" | head -n 400 >&2 || true
  fi
  if grep -q 'NMI received for unknown reason' "$RUN/console.log"; then
    log "---- where a guest CPU was at the NMI before the timeout ----"
    sed -n '/NMI received for unknown reason/,$p' "$RUN/console.log" | head -n 80 >&2 || true
  fi
  if grep -Eq "$SPLAT" "$DMESG" "$RUN/console.log"; then
    log "---- guest kernel splats ----"
    grep -Eh -B2 -A25 "$SPLAT" "$DMESG" "$RUN/console.log" | head -n 120 >&2 || true
  fi
  ((KEEP)) && log "run kept in $RUN"
  ((failed == 0)) && failed=1
  summary "$passed" "$failed" "$skipped"
  exit 1
fi
((KEEP)) && log "run kept in $RUN"
log "done in $(($(date +%s) - START))s"
summary "$passed" "$failed" "$skipped"
