# Shared by the Docker-free cross scripts in this folder (sourced, not run).
# Maps a Rust target to its Debian architecture, GNU triple and qemu-user binary, and names the
# per-target sysroot under target/.

cross_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# cross_target_vars <rust-target>: sets deb_arch, gnu_triple, qemu, sysroot.
cross_target_vars() {
  case "$1" in
    aarch64-unknown-linux-gnu)
      deb_arch=arm64 gnu_triple=aarch64-linux-gnu qemu=qemu-aarch64 ;;
    armv7-unknown-linux-gnueabihf)
      deb_arch=armhf gnu_triple=arm-linux-gnueabihf qemu=qemu-arm ;;
    x86_64-unknown-linux-gnu)
      deb_arch=amd64 gnu_triple=x86_64-linux-gnu qemu= ;;
    *)
      echo "cross: unsupported target $1 (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" >&2
      return 2 ;;
  esac
  sysroot="${CAMPEER_SYSROOT_DIR:-$cross_root/target/sysroot}/$deb_arch"
}

source "$cross_root/scripts/lib.sh"
