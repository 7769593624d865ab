#!/usr/bin/env bash
# Tests tools/lib/qemu.sh's accelerator choice and its KVM → TCG fallback
# against a fake qemu (no guest is booted): KVM is used only when a probe
# boot succeeds, its verdict is cached, and a KVM guest that prints nothing
# is booted again under TCG in the same run.
# (tools/lib/sh_test.sh writes the report.)
set -uo pipefail

LIB=${1:-$(dirname "${BASH_SOURCE[0]}")/qemu.sh}
# shellcheck source=tools/lib/sh_test.sh
source "${2:-$(dirname "${BASH_SOURCE[0]}")/sh_test.sh}"
WORK=$(mktemp -d "${TEST_TMPDIR:-/tmp}/qemu_test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LOGS=()
log() { LOGS+=("$*"); echo "  log: $*" >&2; }
# shellcheck source=tools/lib/qemu.sh
source "$LIB"

# A fake qemu: records the accelerator it was given in $WORK/calls, then
# behaves as FAKE_KVM says under KVM (silent: prints nothing and hangs;
# ok: prints the probe marker and exits) and always boots under TCG.
cat >"$WORK/qemu" <<'EOF'
#!/usr/bin/env bash
[[ ${1:-} == --version ]] && { echo "QEMU emulator version 0.0 (fake)"; exit 0; }
accel= console=
while (($#)); do
  case "$1" in
    -accel) accel=$2; shift ;;
    -serial) console=${2#file:}; shift ;;
  esac
  shift
done
echo "${accel%%,*}" >>"$FAKE_CALLS"
if [[ ${accel%%,*} == kvm && $FAKE_KVM == silent ]]; then exec sleep 60; fi
echo "Linux version 6.1.0 (fake)" >>"$console"
echo "HALLOC-KVM-PROBE-OK" >>"$console"
exit 0
EOF
chmod +x "$WORK/qemu"
echo "fake busybox" >"$WORK/busybox"
echo "fake kernel" >"$WORK/vmlinuz"
: >"$WORK/kvm"  # a writable stand-in for /dev/kvm

export HALLOC_QEMU=$WORK/qemu HALLOC_BUSYBOX=$WORK/busybox FAKE_CALLS=$WORK/calls
export HALLOC_KVM_DEVICE=$WORK/kvm HALLOC_KVM_PROBE_TIMEOUT=1 HALLOC_QEMU_SILENCE=1
QEMU_BIN=$HALLOC_QEMU

calls() { [[ -f $FAKE_CALLS ]] && tr '\n' ' ' <"$FAKE_CALLS" | sed 's/ $//'; }
run_case() {
  CURRENT=$1
  CASES+=("$1")
  local before=${#FAILURES[@]}
  rm -rf "$WORK/cache" "$FAKE_CALLS"
  LOGS=()
  unset HALLOC_QEMU_ACCEL HALLOC_KVM_PROBE_FAIL FAKE_KVM
  export FAKE_KVM=ok
  "$1"
  ((${#FAILURES[@]} == before)) && echo "[       OK ] $1" >&2
}

no_kvm_device_uses_tcg() {
  HALLOC_KVM_DEVICE=$WORK/absent qemu_choose_accel "$WORK/vmlinuz" "$WORK/cache"
  expect_eq "$QEMU_ACCEL" tcg "accelerator"
  expect_match "${LOGS[*]}" "accelerator: tcg \\(.*absent or not writable" "log line"
  expect_eq "$(calls)" "" "no probe boot"
}

forced_probe_failure_uses_tcg() {
  export HALLOC_KVM_PROBE_FAIL=1
  qemu_choose_accel "$WORK/vmlinuz" "$WORK/cache"
  expect_eq "$QEMU_ACCEL" tcg "accelerator"
  expect_match "${LOGS[*]}" "accelerator: tcg \\(KVM unusable: probe forced to fail" "log line"
}

silent_probe_uses_tcg_and_is_cached() {
  export FAKE_KVM=silent
  qemu_choose_accel "$WORK/vmlinuz" "$WORK/cache"
  expect_eq "$QEMU_ACCEL" tcg "accelerator"
  expect_match "${LOGS[*]}" "printed nothing in 1s under KVM" "log line"
  expect_eq "$(calls)" "kvm" "one probe boot"
  LOGS=()
  qemu_choose_accel "$WORK/vmlinuz" "$WORK/cache"
  expect_eq "$QEMU_ACCEL" tcg "accelerator, second run"
  expect_match "${LOGS[*]}" "cached in" "second run names the cache"
  expect_eq "$(calls)" "kvm" "no second probe boot"
}

working_kvm_is_used() {
  qemu_choose_accel "$WORK/vmlinuz" "$WORK/cache"
  expect_eq "$QEMU_ACCEL" kvm "accelerator"
  expect_match "${LOGS[*]}" "accelerator: kvm \\(a probe boot under KVM succeeded" "log line"
}

forced_tcg_skips_probe() {
  export HALLOC_QEMU_ACCEL=tcg
  qemu_choose_accel "$WORK/vmlinuz" "$WORK/cache"
  expect_eq "$QEMU_ACCEL" tcg "accelerator"
  expect_eq "$(calls)" "" "no probe boot"
}

silent_kvm_guest_is_rebooted_under_tcg() {
  qemu_choose_accel "$WORK/vmlinuz" "$WORK/cache"  # probe passes
  expect_eq "$QEMU_ACCEL" kvm "probe verdict"
  export FAKE_KVM=silent  # ... but the real boot hangs
  RESETS=0
  reset_fn() { RESETS=$((RESETS + 1)); }
  local rc=0
  qemu_boot "$WORK/console.log" 30 reset_fn -kernel "$WORK/vmlinuz" || rc=$?
  expect_eq "$rc" 0 "status of the TCG boot"
  expect_eq "$QEMU_ACCEL" tcg "accelerator that ran"
  expect_eq "$RESETS" 1 "results reset before the second boot"
  expect_eq "$(calls)" "kvm kvm tcg" "probe, silent boot, TCG boot"
  expect_match "$(cat "$WORK/console.log")" "Linux version" "console of the TCG boot"
  expect_match "${LOGS[*]}" "accelerator: tcg \\(the guest printed nothing" "log line"
  LOGS=()
  qemu_choose_accel "$WORK/vmlinuz" "$WORK/cache"
  expect_eq "$QEMU_ACCEL" tcg "the next run skips KVM"
}

timeout_is_reported() {
  export HALLOC_QEMU_ACCEL=tcg
  cat >"$WORK/qemu-hang" <<'EOF'
#!/usr/bin/env bash
exec sleep 60
EOF
  chmod +x "$WORK/qemu-hang"
  local rc=0
  QEMU_BIN=$WORK/qemu-hang QEMU_ACCEL=tcg qemu_boot "$WORK/console.log" 1 true || rc=$?
  expect_eq "$rc" 124 "a TCG guest that hangs is killed at the timeout"
}

for c in no_kvm_device_uses_tcg forced_probe_failure_uses_tcg \
         silent_probe_uses_tcg_and_is_cached working_kvm_is_used \
         forced_tcg_skips_probe silent_kvm_guest_is_rebooted_under_tcg \
         timeout_is_reported; do
  run_case "$c"
done

finish_sh_test QemuAccel
