#!/usr/bin/env bash
# Runs every test of medsfu. Installs what the tests need first (Debian packages chromium,
# firefox-esr, ffmpeg, iproute2 and prometheus for promtool, when missing), so it works on a fresh Debian machine
# with a Rust toolchain.
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
