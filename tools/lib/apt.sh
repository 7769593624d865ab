# Sourced by tools/run and tools/kernel-test.sh: idempotent apt-get installs.
#
# Environment:
#   HALLOC_APT_LOCK_TIMEOUT  seconds to wait for another apt/dpkg to let go
#                            of its lock before failing (default 600)

# Installs the Debian packages in "$@" that are not installed yet (quiet
# when all are). Runs apt-get update only if the first attempt fails. When
# another apt-get or dpkg holds the lock (a fresh machine often installs
# something at boot), waits for it up to HALLOC_APT_LOCK_TIMEOUT seconds.
apt_install() {
  local missing=() p
  for p in "$@"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
      missing+=("$p")
    fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  printf '== installing: %s\n' "${missing[*]}" >&2
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  local wait=${HALLOC_APT_LOCK_TIMEOUT:-600}
  # DPkg::Lock::Timeout covers dpkg's frontend lock (install) and apt's
  # lists lock (update).
  local apt=("${sudo[@]}" apt-get -o "DPkg::Lock::Timeout=$wait" -qq)
  local err; err=$(mktemp)
  if "${apt[@]}" install -y "${missing[@]}" >/dev/null 2>"$err"; then
    rm -f "$err"; return 0
  fi
  # An install interrupted earlier (a killed session) leaves dpkg asking
  # for `dpkg --configure -a` before it installs anything else.
  if grep -q 'dpkg --configure -a' "$err"; then
    printf '== finishing an interrupted dpkg run first (dpkg --configure -a)\n' >&2
    "${sudo[@]}" dpkg --configure -a >/dev/null 2>>"$err" &&
      "${apt[@]}" install -f -y >/dev/null 2>>"$err" &&
      "${apt[@]}" install -y "${missing[@]}" >/dev/null 2>"$err" && {
      rm -f "$err"; return 0
    }
  fi
  if ! grep -Eq 'Could not get lock|Unable to acquire the dpkg' "$err"; then
    "${apt[@]}" update 2>"$err" >/dev/null &&
      "${apt[@]}" install -y "${missing[@]}" >/dev/null 2>"$err" && {
      rm -f "$err"; return 0
    }
  fi
  if grep -Eq 'Could not get lock|Unable to acquire the dpkg' "$err"; then
    printf '== cannot install %s: another apt-get or dpkg held its lock for over %ss (HALLOC_APT_LOCK_TIMEOUT):\n' \
      "${missing[*]}" "$wait" >&2
  else
    printf '== cannot install %s:\n' "${missing[*]}" >&2
  fi
  sed 's/^/   /' "$err" >&2
  rm -f "$err"
  return 1
}
