# Shared by the project's shell scripts (sourced, not run).

# apt_install_missing <pkg>...: apt-get install (no recommends) only what is not installed yet;
# nothing runs when everything is there. Uses sudo when not root.
apt_install_missing() {
  local sudo_cmd=() missing=() p
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
      -o DPkg::Lock::Timeout=300 "${missing[@]}" >&2
  fi
}
