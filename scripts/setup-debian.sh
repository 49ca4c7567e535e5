#!/usr/bin/env bash
# Install what campeer needs on Debian 12 / Raspberry Pi OS (Bookworm), idempotently.
#   scripts/setup-debian.sh run    build + runtime packages
#   scripts/setup-debian.sh test   the above + what the tests drive (Chromium, gst tools)
#   scripts/setup-debian.sh bench  the above + GStreamer's webrtcbin from Python (latency baseline)
# apt-get runs only when a package is missing; Rust comes from rustup when cargo is absent.
set -euo pipefail

what="${1:-run}"
build=(build-essential pkg-config libclang-dev
       libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
       libasound2-dev libv4l-dev)
runtime=(gstreamer1.0-plugins-base gstreamer1.0-x gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
         gstreamer1.0-plugins-ugly gstreamer1.0-alsa gstreamer1.0-tools)
# libcamerasrc for CSI cameras exists on Debian 12 and Raspberry Pi OS; skip where absent.
optional=(gstreamer1.0-libcamera)
# nginx with its RTMP module is the server the RTMP push test sends to (tests/rtmp.rs); ffmpeg's
# ffprobe/ffmpeg are the RTSP clients of tests/rtsp.rs.
testing=(chromium firefox-esr iproute2 procps coturn iptables systemd nginx libnginx-mod-rtmp ffmpeg)
benching=(python3-gi gir1.2-gst-plugins-bad-1.0 gir1.2-gst-plugins-base-1.0 gstreamer1.0-nice)

pkgs=("${build[@]}" "${runtime[@]}")
if [ "$what" = test ] || [ "$what" = bench ]; then pkgs+=("${testing[@]}"); fi
if [ "$what" = bench ]; then pkgs+=("${benching[@]}"); fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
for p in "${pkgs[@]}" "${optional[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  have=()
  for p in "${missing[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then have+=("$p"); else
      case " ${optional[*]} " in *" $p "*) echo "setup: $p not available here, skipped" >&2 ;; *) echo "setup: package $p not found" >&2; exit 1 ;; esac
    fi
  done
  if [ "${#have[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${have[@]}" >&2
  fi
  # The tests run their own nginx; one this script just installed is not left serving port 80.
  case " ${have[*]} " in
    *" nginx "*) "${sudo_cmd[@]}" systemctl disable --now nginx >/dev/null 2>&1 || true ;;
  esac
fi

# The WHEP interop test fetches a JavaScript WHEP client with npm (a Node.js that came with the
# machine brings its own npm; Debian's is the package npm).
if { [ "$what" = test ] || [ "$what" = bench ]; } && ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing npm" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends npm >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "setup: cargo is in ~/.cargo/bin; add it to PATH (source ~/.cargo/env)" >&2
  else
    echo "setup: installing Rust with rustup" >&2
    command -v curl >/dev/null 2>&1 || { "${sudo_cmd[@]}" apt-get install -y -qq curl >&2; }
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
  fi
fi
