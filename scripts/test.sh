#!/usr/bin/env bash
# Runs every test of medsfu. Installs what the tests need first (Debian packages chromium,
# firefox-esr, ffmpeg, iproute2, prometheus for promtool, GStreamer with webrtcbin and
# python3-gi, when missing), so it works on a fresh Debian machine with a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
command -v firefox-esr >/dev/null 2>&1 || need+=(firefox-esr)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
# promtool checks the alert rules (tests/ops_configs.rs).
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# pdftoppm and pdftotext check the ECG snapshot documents.
command -v pdftotext >/dev/null 2>&1 || need+=(poppler-utils)
# GStreamer's webrtcbin is the third-party WHIP/WHEP client of tests/interop.rs, driven by
# tests/clients/gst_webrtc.py under Debian's own Python (python3-gi).
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import gi; gi.require_version("GstWebRTC", "1.0")' >/dev/null 2>&1 \
  || need+=(python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0)
for plugin in webrtcbin nicesrc x264enc vp8enc opusenc avdec_h264 rtph264pay; do
  if ! gst-inspect-1.0 --exists "$plugin" >/dev/null 2>&1; then
    need+=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
      gstreamer1.0-plugins-ugly gstreamer1.0-nice gstreamer1.0-libav)
    break
  fi
done
# schemathesis (PyPI) fuzzes the control API from its OpenAPI document (tests/api_fuzz.rs);
# it is installed into a virtual environment under target/.
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "== installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "medsfu needs a Rust toolchain (https://rustup.rs): cargo was not found" >&2
  exit 1
fi

st=target/schemathesis/bin/st
if [ ! -x "$st" ]; then
  echo "== installing schemathesis into target/schemathesis"
  python3 -m venv target/schemathesis
  target/schemathesis/bin/pip install -q "schemathesis==4.32.5"
fi

echo "== format"
cargo fmt --all -- --check
echo "== lints (also a compile check of benches and the load generator)"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== tests"
cargo test --locked --workspace
