# Sourced by tools/kernel-test.sh (and its test, tools/lib/qemu_test.sh):
# chooses qemu's accelerator and boots a guest, falling back from KVM to TCG.
#
# On some hosts /dev/kvm exists and opens, yet Debian's stock kernel booted
# under it prints nothing and hangs. So KVM is used only after a short probe
# boot has shown that it runs this kernel (verdict cached per machine, kernel
# and qemu), and a KVM guest that still prints nothing for a while is killed
# and booted again under TCG in the same run. Every choice is logged with its
# reason ("accelerator: ...").
#
# Environment:
#   HALLOC_QEMU_ACCEL         auto (default), kvm or tcg
#   HALLOC_KVM_DEVICE         the KVM device (default /dev/kvm)
#   HALLOC_KVM_PROBE_FAIL=1   treat the probe as failed (tests the fallback)
#   HALLOC_KVM_PROBE_TIMEOUT  seconds the probe boot may take (default 20)
#   HALLOC_QEMU_SILENCE       seconds a KVM guest may print nothing on its
#                             console before it is retried under TCG
#                             (default 20)
#   HALLOC_QEMU               the qemu binary (default qemu-system-x86_64)
#   HALLOC_BUSYBOX            static busybox for the probe's initramfs
#                             (default /bin/busybox)
#
# The caller defines log() (one line to stderr).

QEMU_BIN=${HALLOC_QEMU:-qemu-system-x86_64}
# Exit status of qemu_run when it killed a guest that stayed silent.
QEMU_SILENT=200

# The -accel arguments for kvm or tcg.
qemu_accel_args() {
  case "$1" in
    kvm) echo "-accel kvm" ;;
    *) echo "-accel tcg,thread=multi" ;;
  esac
}

# qemu_run ACCEL CONSOLE TIMEOUT [qemu args...]
# Boots qemu with its serial console written to CONSOLE, kills it after
# TIMEOUT seconds (status 124) and, under KVM, after HALLOC_QEMU_SILENCE
# seconds of an empty console (status $QEMU_SILENT). Otherwise qemu's status.
qemu_run() {
  local accel=$1 console=$2 timeout_s=$3
  shift 3
  local silence=${HALLOC_QEMU_SILENCE:-20}
  : >"$console"
  # shellcheck disable=SC2046  # qemu_accel_args is two words on purpose
  timeout -k 5 "$timeout_s" "$QEMU_BIN" $(qemu_accel_args "$accel") \
    -serial "file:$console" "$@" &
  local pid=$! waited=0
  if [[ $accel == kvm ]]; then
    while kill -0 "$pid" 2>/dev/null && [[ ! -s $console ]]; do
      if ((waited >= silence * 10)); then
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        return "$QEMU_SILENT"
      fi
      sleep 0.1
      waited=$((waited + 1))
    done
  fi
  local rc=0
  wait "$pid" || rc=$?
  return "$rc"
}

# Where the probe's verdict for KERNEL on this machine and qemu is kept.
qemu_kvm_verdict_file() {
  local kernel=$1 cache=$2 key
  key=$( { cat /etc/machine-id 2>/dev/null; uname -r; "$QEMU_BIN" --version | head -n1
           cksum <"$kernel"; } | cksum | cut -d' ' -f1)
  echo "$cache/kvm-probe.$key"
}

# qemu_kvm_probe KERNEL VERDICT_FILE → status 0 when KVM boots KERNEL.
# Prints the reason when it does not.
qemu_kvm_probe() {
  local kernel=$1 verdict_file=$2
  if [[ ${HALLOC_KVM_PROBE_FAIL:-0} == 1 ]]; then
    echo "probe forced to fail (HALLOC_KVM_PROBE_FAIL=1)"
    return 1
  fi
  if [[ -f $verdict_file ]]; then
    local verdict; verdict=$(cat "$verdict_file")
    if [[ $verdict == ok ]]; then return 0; fi
    echo "$verdict (cached in $verdict_file)"
    return 1
  fi
  local dir; dir=$(mktemp -d)
  mkdir -p "$dir/ir/bin"
  cp "${HALLOC_BUSYBOX:-/bin/busybox}" "$dir/ir/bin/busybox"
  printf '#!/bin/busybox sh\n/bin/busybox echo HALLOC-KVM-PROBE-OK\n/bin/busybox poweroff -f\n' \
    >"$dir/ir/init"
  chmod +x "$dir/ir/init"
  (cd "$dir/ir" && find . | cpio -o -H newc --quiet | gzip -1) >"$dir/ir.cpio.gz"
  local t=${HALLOC_KVM_PROBE_TIMEOUT:-20} rc=0 verdict
  HALLOC_QEMU_SILENCE=$t qemu_run kvm "$dir/console.log" "$t" \
    -nodefaults -no-reboot -display none -monitor none -smp 1 -m 256M \
    -kernel "$kernel" -initrd "$dir/ir.cpio.gz" \
    -append "console=ttyS0 panic=-1 rdinit=/init" >/dev/null 2>&1 || rc=$?
  if grep -q HALLOC-KVM-PROBE-OK "$dir/console.log"; then
    verdict=ok
  elif [[ ! -s $dir/console.log ]]; then
    verdict="the probe guest printed nothing in ${t}s under KVM (qemu status $rc)"
  else
    verdict="the probe guest did not finish under KVM in ${t}s (qemu status $rc)"
  fi
  rm -rf "$dir"
  mkdir -p "$(dirname "$verdict_file")" && echo "$verdict" >"$verdict_file"
  [[ $verdict == ok ]] && return 0
  echo "$verdict"
  return 1
}

# qemu_choose_accel KERNEL CACHE_DIR → sets QEMU_ACCEL (kvm|tcg) and
# QEMU_ACCEL_WHY, and logs them.
qemu_choose_accel() {
  local kernel=$1 cache=$2 dev=${HALLOC_KVM_DEVICE:-/dev/kvm} why
  QEMU_KVM_VERDICT_FILE=$(qemu_kvm_verdict_file "$kernel" "$cache")
  case "${HALLOC_QEMU_ACCEL:-auto}" in
    tcg) QEMU_ACCEL=tcg; QEMU_ACCEL_WHY="HALLOC_QEMU_ACCEL=tcg" ;;
    kvm) QEMU_ACCEL=kvm; QEMU_ACCEL_WHY="HALLOC_QEMU_ACCEL=kvm" ;;
    auto)
      if [[ ! -w $dev ]]; then
        QEMU_ACCEL=tcg; QEMU_ACCEL_WHY="$dev is absent or not writable"
      elif why=$(qemu_kvm_probe "$kernel" "$QEMU_KVM_VERDICT_FILE"); then
        QEMU_ACCEL=kvm; QEMU_ACCEL_WHY="a probe boot under KVM succeeded"
      else
        QEMU_ACCEL=tcg; QEMU_ACCEL_WHY="KVM unusable: $why"
      fi ;;
    *) log "HALLOC_QEMU_ACCEL must be auto, kvm or tcg"; return 2 ;;
  esac
  log "accelerator: $QEMU_ACCEL ($QEMU_ACCEL_WHY)"
}

# qemu_boot CONSOLE TIMEOUT RESET_FN [qemu args...]
# Boots under $QEMU_ACCEL; a KVM guest that stays silent is booted again
# under TCG (after RESET_FN clears what the first attempt left). Sets
# QEMU_ACCEL to the accelerator that ran; returns qemu's status.
qemu_boot() {
  local console=$1 timeout_s=$2 reset=$3
  shift 3
  local rc=0
  qemu_run "$QEMU_ACCEL" "$console" "$timeout_s" "$@" || rc=$?
  if ((rc == QEMU_SILENT)); then
    local why="the guest printed nothing in ${HALLOC_QEMU_SILENCE:-20}s under KVM"
    log "accelerator: tcg ($why; booting it again under TCG)"
    # Later runs skip KVM on this machine (unless it was forced).
    if [[ -n ${QEMU_KVM_VERDICT_FILE:-} && ${HALLOC_QEMU_ACCEL:-auto} == auto ]]; then
      mkdir -p "$(dirname "$QEMU_KVM_VERDICT_FILE")"
      echo "$why" >"$QEMU_KVM_VERDICT_FILE"
    fi
    QEMU_ACCEL=tcg
    "$reset"
    rc=0
    qemu_run tcg "$console" "$timeout_s" "$@" || rc=$?
  fi
  return "$rc"
}
