#!/usr/bin/env bash
# Builds the packages (tools/package.sh), installs them on this machine with
# apt-get, starts the installed hallocd the way its socket units do (on the
# first client connection, sockets passed by name), talks to it with the
# installed hallocctl and with a program built against the installed
# headers and library, builds the module through DKMS for every kernel with
# headers here, then purges both packages and checks nothing is left.
#
# Needs root (it installs packages). Prints "package: N passed, N failed,
# N skipped" last.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
passed=0 failed=0 skipped=0
ok() { echo "PASS: $1"; passed=$((passed + 1)); }
bad() { echo "FAIL: $1"; failed=$((failed + 1)); }
skip() { echo "SKIP: $1"; skipped=$((skipped + 1)); }
check() { local name="$1"; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
finish() { echo "package: $passed passed, $failed failed, $skipped skipped"; exit $((failed > 0)); }

if [[ $(id -u) -ne 0 ]]; then
  skip "package install needs root"; finish
fi
WORK="$(mktemp -d /tmp/halloc-pkgtest-XXXXXX)"
DAEMON_PID=""
MADE_RUN_DIR=""  # /run/halloc, when this test made it
cleanup() {
  [[ -n "$DAEMON_PID" ]] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
  [[ -n "$MADE_RUN_DIR" ]] && rm -rf /run/halloc
  rm -rf "$WORK"
}
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=600)

purge() { "${APT[@]}" remove --purge halloc halloc-dkms >"$WORK/purge.log" 2>&1; }
# This test's own install is marked: one a run that died half-way left is
# purged; anyone else's (an administrator's policy, DKMS modules) is not
# this test's to purge unless HALLOC_PACKAGE_TEST_REPLACE=1 says so.
MARK=/var/lib/halloc-package-test
if ! dpkg -s halloc >/dev/null 2>&1 && ! dpkg -s halloc-dkms >/dev/null 2>&1; then
  rm -f "$MARK"  # nothing of its own left: a later install is someone else's
else
  if [[ ! -e $MARK && ${HALLOC_PACKAGE_TEST_REPLACE:-0} != 1 ]]; then
    skip "halloc is installed here, not by this test: it would be purged (HALLOC_PACKAGE_TEST_REPLACE=1 lets it)"
    finish
  fi
  purge
fi

# --- build --------------------------------------------------------------------
# Under the most permissive umask: the packages' modes must not follow it.
if ! (umask 0000; tools/package.sh "$WORK/dist" >"$WORK/debs" 2>"$WORK/package.log"); then
  tail -40 "$WORK/package.log"; bad "tools/package.sh builds the packages"; finish
fi
mapfile -t DEBS <"$WORK/debs"
DEB="${DEBS[0]}" DKMS_DEB="${DEBS[1]}"
check "two packages built" test -s "$DEB" -a -s "$DKMS_DEB"
dpkg-deb -c "$DEB" >"$WORK/contents"
missing=()
for f in ./usr/bin/hallocd ./usr/bin/hallocctl ./lib/systemd/system/hallocd.socket \
         ./lib/systemd/system/hallocd-broker.socket ./lib/systemd/system/hallocd.service \
         ./usr/lib/sysusers.d/halloc.conf ./usr/lib/udev/rules.d/75-halloc.rules \
         ./etc/halloc/policy.textproto \
         ./usr/include/halloc/clients/cpp/halloc/client.h; do
  grep -q " $f\$" "$WORK/contents" || missing+=("$f")
done
check "package holds the binaries, units, policy and headers (missing: ${missing[*]:-none})" \
  test ${#missing[@]} -eq 0
# Nothing in either package is writable by group or others (symlinks
# aside): dkms sources dkms.conf as root.
writable="$(for d in "$DEB" "$DKMS_DEB"; do dpkg-deb -c "$d"; done |
  awk '$1 !~ /^l/ && (substr($1, 6, 1) == "w" || substr($1, 9, 1) == "w") { print $1, $NF }')"
check "no file group- or world-writable in the packages, built under umask 0000 (${writable:-none})" \
  test -z "$writable"

# --- install ------------------------------------------------------------------
: >"$MARK"
if "${APT[@]}" install "$DEB" >"$WORK/install.log" 2>&1; then
  ok "apt-get install ./halloc_*.deb"
else
  cat "$WORK/install.log"; bad "apt-get install ./halloc_*.deb"
  dpkg -s halloc >/dev/null 2>&1 || rm -f "$MARK"
  finish
fi
check "group halloc exists" getent group halloc
check "user hallocd exists, with no shell, in none of the clients' groups" \
  sh -c 'getent passwd hallocd | grep -q ":/usr/sbin/nologin\$" && ! id -nG hallocd | grep -qw halloc'
check "the udev rule gives the device nodes to group hallocd" \
  cmp -s /usr/lib/udev/rules.d/75-halloc.rules service/systemd/75-halloc.rules
# After 73-seat-late.rules, whose uaccess builtin would reset the ACL the
# rule gives user hallocd on /dev/udmabuf (systemd 257 and later).
rules=(/usr/lib/udev/rules.d/*halloc*.rules)
check "the udev rule sorts after 73-seat-late.rules (${rules[*]##*/})" \
  sh -c '[ "$1" ] && [ "$(printf "%s\n" 73-seat-late.rules "${1##*/}" | LC_ALL=C sort | tail -1)" = "${1##*/}" ]' \
  - "${rules[0]}"
check "policy installed as a conffile" grep -q policy.textproto /var/lib/dpkg/info/halloc.conffiles
# Root alone (service/policy/default.textproto, tested in policy_test): no
# rule for uids that are other accounts on every machine.
check "the installed policy is the root-only default" \
  cmp -s /etc/halloc/policy.textproto service/policy/default.textproto
check "the example policy is installed as documentation" \
  cmp -s /usr/share/doc/halloc/examples/policy.textproto service/policy/example.textproto
check "installed units pass systemd-analyze verify" \
  systemd-analyze verify /lib/systemd/system/hallocd.socket \
    /lib/systemd/system/hallocd-broker.socket /lib/systemd/system/hallocd.service

# Socket activation is on after a first install and after a remove and
# reinstall, and an upgrade or reinstall keeps the administrator's choice
# (deb-systemd-helper's state: the symlinks systemctl would make).
enabled() {
  test -L /etc/systemd/system/sockets.target.wants/hallocd.socket &&
    test -L /etc/systemd/system/sockets.target.wants/hallocd-broker.socket
}
check "a first install enables both sockets" enabled
"${APT[@]}" remove halloc >"$WORK/remove.log" 2>&1 || cat "$WORK/remove.log"
"${APT[@]}" install "$DEB" >"$WORK/install2.log" 2>&1 || cat "$WORK/install2.log"
check "a remove and reinstall enables them again" enabled
systemctl disable hallocd.socket hallocd-broker.socket >/dev/null 2>&1 || true
"${APT[@]}" install --reinstall "$DEB" >"$WORK/install3.log" 2>&1 || cat "$WORK/install3.log"
check "a reinstall keeps them disabled when the administrator disabled them" \
  sh -c '! test -e /etc/systemd/system/sockets.target.wants/hallocd.socket'
# An upgrade (or reinstall) over a running hallocd says that it still runs
# the old binary (postinst restarts nothing); a systemctl stand-in on PATH
# reports the service active.
mkdir -p "$WORK/stub"
printf '#!/bin/sh\n[ "$1 $2 $3" = "--quiet is-active hallocd.service" ] && exit 0\nexec /bin/systemctl "$@"\n' \
  >"$WORK/stub/systemctl"
chmod +x "$WORK/stub/systemctl"
# (apt gives dpkg a PATH of its own: DPkg::Path.)
"${APT[@]}" -o DPkg::Path="$WORK/stub:/usr/sbin:/usr/bin:/sbin:/bin" install --reinstall "$DEB" \
  >"$WORK/install4.log" 2>&1 ||
  cat "$WORK/install4.log"
check "an upgrade over a running hallocd says to restart it" \
  grep -q "hallocd was started before this install" "$WORK/install4.log"
check "a first install says nothing of a restart" \
  sh -c "! grep -q 'hallocd was started before' '$WORK/install.log'"
check "Depends names adduser, init-system-helpers and acl" \
  sh -c "dpkg-deb -f '$DEB' Depends | grep -w adduser | grep -w acl | grep -qw init-system-helpers"
# An upgrade from a hallocd that ran as root: systemd made its sockets
# root's (SocketUser= then), and a restart does not remake them; the new
# hallocd's watchdog probe needs them its user's (unit_user_test).
if [[ ! -e /run/halloc ]]; then
  mkdir -p /run/halloc
  MADE_RUN_DIR=1
  python3 -c 'import socket, sys
for p in sys.argv[1:]: socket.socket(socket.AF_UNIX).bind(p)' /run/halloc/control.sock /run/halloc/broker.sock
  "${APT[@]}" install --reinstall "$DEB" >"$WORK/install5.log" 2>&1 || cat "$WORK/install5.log"
  check "an upgrade gives a root hallocd's sockets to user hallocd" \
    sh -c '[ "$(stat -c %U /run/halloc/control.sock /run/halloc/broker.sock | sort -u)" = hallocd ]'
  rm -rf /run/halloc
  MADE_RUN_DIR=""
else
  skip "an upgrade gives a root hallocd's sockets to user hallocd: /run/halloc is this machine's"
fi

# --- socket activation of the installed hallocd -----------------------------------
CTL="$WORK/run/control.sock" BRK="$WORK/run/broker.sock"
mkdir -p "$WORK/run"
export HALLOC_CONTROL_SOCKET="$CTL" HALLOC_BROKER_SOCKET="$BRK"
# As the unit runs it: user hallocd with CAP_SYS_PTRACE alone
# (service/systemd/unit_user_test.cc runs it so with exe rules).
tools/lib/activate.py "$CTL" "$BRK" -- setpriv --reuid=hallocd --regid=hallocd --clear-groups \
  --inh-caps=-all,+sys_ptrace --ambient-caps=-all,+sys_ptrace --bounding-set=-all,+sys_ptrace \
  --no-new-privs /usr/bin/hallocd --policy=/etc/halloc/policy.textproto --backend=memfd \
  >"$WORK/hallocd.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do [[ -S "$BRK" ]] && break; sleep 0.1; done
sleep 0.3
check "hallocd is not started before a client connects" \
  bash -c "! grep -q 'starting' '$WORK/hallocd.log'"
if /usr/bin/hallocctl allocate --size 65536 >"$WORK/alloc.out" 2>&1; then
  ok "installed hallocctl allocates through the activated sockets"
else
  cat "$WORK/alloc.out" "$WORK/hallocd.log"; bad "installed hallocctl allocates through the activated sockets"
fi
check "hallocd started on the first connection, on the passed sockets" \
  grep -q "a client connected; starting setpriv" "$WORK/hallocd.log"
check "the activated hallocd runs as user hallocd" \
  sh -c "ps -o user= -p $DAEMON_PID | grep -qx hallocd"
if /usr/bin/hallocctl stats --prometheus >"$WORK/metrics.prom" 2>&1 &&
   promtool check metrics <"$WORK/metrics.prom" >"$WORK/promtool.out" 2>&1 &&
   grep -q '^halloc_allocations_total 1$' "$WORK/metrics.prom"; then
  ok "stats --prometheus of the installed daemon passes promtool"
else
  cat "$WORK/metrics.prom" "$WORK/promtool.out"; bad "stats --prometheus of the installed daemon passes promtool"
fi

# --- a program built against the installed headers and library ---------------------
cat >"$WORK/user.cc" <<'CC'
#include <cstring>
#include <iostream>

#include "clients/cpp/halloc/client.h"

int main() {
  absl::StatusOr<halloc::Client> c = halloc::Client::Connect();
  if (!c.ok()) { std::cerr << c.status() << "\n"; return 1; }
  absl::StatusOr<halloc::Buffer> b = c->Allocate(halloc::BlobDescriptor(1 << 20, 0, "pkg"));
  if (!b.ok()) { std::cerr << b.status() << "\n"; return 2; }
  absl::StatusOr<halloc::Mapping> m = b->Map(halloc::Access::kReadWrite);
  if (!m.ok()) { std::cerr << m.status() << "\n"; return 3; }
  std::memset(m->data(), 0x5a, m->size());
  if (m->as<unsigned char>()[12345] != 0x5a) return 4;
  absl::Status s = c->Release(b->id());
  if (!s.ok()) { std::cerr << s << "\n"; return 5; }
  std::cout << "allocated, mapped, wrote and released buffer " << b->id() << "\n";
  return 0;
}
CC
if g++ -std=c++17 -o "$WORK/user" "$WORK/user.cc" $(pkg-config --cflags --libs halloc) \
     >"$WORK/cc.log" 2>&1; then
  ok "a program compiles and links with pkg-config halloc"
  if "$WORK/user" >"$WORK/user.out" 2>&1; then
    ok "it allocates, maps and releases through the installed libhalloc.so.0"
  else
    cat "$WORK/user.out"; bad "it allocates, maps and releases through the installed libhalloc.so.0"
  fi
else
  cat "$WORK/cc.log"; bad "a program compiles and links with pkg-config halloc"
fi
kill "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null; DAEMON_PID=""

# --- DKMS ------------------------------------------------------------------------
KVERS=()
for b in /lib/modules/*/build; do [[ -d "$b" ]] && KVERS+=("$(basename "$(dirname "$b")")"); done
if "${APT[@]}" install "$DKMS_DEB" >"$WORK/dkms.log" 2>&1; then
  ok "apt-get install ./halloc-dkms_*.deb"
else
  tail -30 "$WORK/dkms.log"; bad "apt-get install ./halloc-dkms_*.deb"
fi
check "the module is loaded at boot (modules-load.d names halloc_heap)" \
  grep -qx halloc_heap /usr/lib/modules-load.d/halloc.conf
if [[ ${#KVERS[@]} -eq 0 ]]; then
  skip "DKMS build: no kernel headers here (tools/kernel-test.sh installs the guest kernel's)"
else
  for v in "${KVERS[@]}"; do
    ko="$(find "/lib/modules/$v/updates/dkms" -name 'halloc_heap.ko*' 2>/dev/null | head -1)"
    if [[ -n "$ko" ]] && modinfo -F vermagic "$ko" | grep -q "^$v "; then
      ok "DKMS built and installed halloc_heap.ko for $v"
    else
      tail -30 "$WORK/dkms.log"; dkms status halloc || true
      bad "DKMS built and installed halloc_heap.ko for $v"
    fi
  done
fi

# --- purge -----------------------------------------------------------------------
if purge; then ok "apt-get remove --purge halloc halloc-dkms"; else cat "$WORK/purge.log"; bad "apt-get remove --purge"; fi
left=()
for f in /usr/bin/hallocd /usr/bin/hallocctl /lib/systemd/system/hallocd.service \
         /etc/halloc/policy.textproto /usr/include/halloc /usr/src/halloc-* \
         /usr/lib/modules-load.d/halloc.conf /usr/share/doc/halloc \
         /usr/lib/udev/rules.d/75-halloc.rules; do
  [[ -e "$f" ]] && left+=("$f")
done
for v in "${KVERS[@]}"; do
  compgen -G "/lib/modules/$v/updates/dkms/halloc_heap.ko*" >/dev/null && left+=("$v/halloc_heap.ko")
done
for f in /etc/systemd/system/sockets.target.wants/hallocd{,-broker}.socket \
         /var/lib/systemd/deb-systemd-helper-enabled/hallocd.socket.dsh-also; do
  [[ -L "$f" || -e "$f" ]] && left+=("$f")
done
if [[ ${#left[@]} -eq 0 ]] && ! dpkg -s halloc >/dev/null 2>&1; then
  ok "nothing left after purge"
  rm -f "$MARK"
else
  bad "left after purge: ${left[*]}"
fi
finish
