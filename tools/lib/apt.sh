# Sourced by tools/run and tools/kernel-test.sh: idempotent apt-get installs.

# Installs the Debian packages in "$@" that are not installed yet (quiet
# when all are). Runs apt-get update only if the first attempt fails.
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
  if ! "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    "${sudo[@]}" apt-get update -qq &&
      "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
